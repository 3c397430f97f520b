"""The `wan-batch` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from jobs.endpoints import KNOWN_ENDPOINTS
from jobs.manifest import Batch, ManifestOptions
from runner.manifests import load_manifest
from runner.settings import MIB, InputSettings
from runner.simulator import FaultRates, SimConfig, parse_run_time, serve_until_interrupted

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


#: The `--fault-*` flag of each FaultRates field.
_FAULT_FLAGS = {
    "proxy_5xx": "--fault-proxy-5xx",
    "rate_limit_429": "--fault-429",
    "drop_connection": "--fault-drop-connection",
    "lost_submit_response": "--fault-lost-submit-response",
    "model_error": "--fault-model-error",
    "expired_result": "--fault-expired-result",
    "truncated_download": "--fault-truncated-download",
    "slow_download": "--fault-slow-download",
}
_SIM_DEFAULTS = SimConfig()


def _fault_options(command: Callable[..., None]) -> Callable[..., None]:
    for name, flag in reversed(_FAULT_FLAGS.items()):
        help_text = f"Rate 0..1 of the {name} fault."
        command = click.option(flag, name, type=click.FloatRange(0, 1), default=0.0, help=help_text)(command)
    return command


def _check_run_time(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_run_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@main.command()
@click.option("--host", default=_SIM_DEFAULTS.host, show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 picks a free port.")
@click.option("--concurrency", type=click.IntRange(min=1), default=_SIM_DEFAULTS.concurrency, show_default=True,
              help="Requests IN_PROGRESS at once; the rest wait IN_QUEUE.")
@click.option("--run-time", default=_SIM_DEFAULTS.run_time, show_default=True, callback=_check_run_time,
              help="Seconds per request: fixed:S, uniform:A,B or lognormal:MEAN,SIGMA.")
@click.option("--seed", type=int, default=_SIM_DEFAULTS.seed, show_default=True)
@click.option("--retention-s", type=click.FloatRange(min=0, min_open=True), default=_SIM_DEFAULTS.retention_s,
              show_default=True, help="A result answers 404 this long after completion.")
@click.option("--key", envvar="FAL_KEY", help="Accept only 'Key <KEY>' (also read from FAL_KEY). Default: any key.")
@click.option("--token", envvar="WAN_BATCH_SIM_TOKEN",
              help="Accept only 'Bearer <TOKEN>' (also read from WAN_BATCH_SIM_TOKEN).")
@_fault_options
@click.option("--fault-limit", type=click.IntRange(min=0), help="Stop injecting each fault kind after N injections.")
@click.option("--retry-after-s", type=click.FloatRange(min=0), default=_SIM_DEFAULTS.retry_after_s, show_default=True,
              help="Retry-After of an injected 429.")  # fmt: skip
def sim(**options: Any) -> None:
    """Serve a simulated fal queue until Ctrl-C; prints its base URL on stdout.

    Point the runner at the printed URL. GET <url>/_stats shows what it saw.
    """
    faults = {name: options.pop(name) for name in _FAULT_FLAGS}
    config = SimConfig(**options, faults=FaultRates(**faults))
    auth = "Key or Bearer as configured" if config.key or config.token else "any Key or Bearer credential"

    def announce(base_url: str) -> None:
        click.echo(base_url)
        click.echo(f"fal queue simulator: concurrency {config.concurrency}, run time {config.run_time}, "
                   f"auth: {auth}; Ctrl-C stops it", err=True)  # fmt: skip

    serve_until_interrupted(config, announce)
