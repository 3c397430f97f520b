"""The `wan-batch` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from jobs.endpoints import KNOWN_ENDPOINTS
from jobs.manifest import Batch, ManifestOptions
from runner.manifests import load_manifest
from runner.settings import MIB, InputSettings

MANIFEST = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wan-batch")
def main() -> None:
    """Run batches of image-to-image jobs on fal's queue API."""


@main.command()
@click.argument("manifest", type=MANIFEST)
@click.option("--endpoint", help="Endpoint of rows that name none, e.g. fal-ai/wan-25-preview/image-to-image.")
@click.option("--max-image-mb", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Largest local image or data URI accepted.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(manifest: Path, endpoint: str | None, max_image_mb: float, as_json: bool) -> None:
    """Check MANIFEST (CSV, TSV, JSONL or YAML) and report every problem at once.

    Exits 0 when it would run (warnings allowed), 1 when it has errors.
    """
    settings = InputSettings(max_image_bytes=int(max_image_mb * MIB))
    batch = load_manifest(manifest, ManifestOptions(default_endpoint=endpoint), settings)
    if as_json:
        click.echo(json.dumps(_batch_summary(batch), indent=2))
    else:
        _print_validation(batch)
    sys.exit(1 if batch.errors else 0)


def _batch_summary(batch: Batch) -> dict[str, object]:
    return {
        "file": batch.file,
        "ok": not batch.errors,
        "records": batch.records,
        "jobs": len(batch.jobs),
        "jobs_per_endpoint": batch.jobs_per_endpoint(),
        "matrix_expanded": dict(zip(("rows", "jobs"), batch.matrix_expansion(), strict=True)),
        "errors": [d.to_dict() for d in batch.errors],
        "warnings": [d.to_dict() for d in batch.warnings],
    }


def _print_validation(batch: Batch) -> None:
    for diagnostic in batch.diagnostics:
        click.echo(str(diagnostic), err=True)
    errors, warnings = len(batch.errors), len(batch.warnings)
    if errors:
        click.echo(f"{batch.file}: {errors} error(s), {warnings} warning(s); nothing would be submitted")
        return
    click.echo(f"{batch.file}: ok, {len(batch.jobs)} job(s) from {batch.records} row(s), {warnings} warning(s)")
    rows, made = batch.matrix_expansion()
    if rows:
        click.echo(f"  matrix: expanded {rows} row(s) into {made} job(s)")
    for endpoint, count in batch.jobs_per_endpoint().items():
        tag = "" if endpoint in KNOWN_ENDPOINTS else "  (pass-through: inputs sent as given)"
        click.echo(f"  {endpoint}: {count}{tag}")
