"""Load a manifest from disk: parse it (pure), checking the files it names (I/O)."""

from __future__ import annotations

from pathlib import Path

from jobs.batch import Batch
from jobs.diagnostics import Diagnostic
from jobs.manifest import ManifestOptions, parse_manifest
from runner.fal.local_images import image_checker
from runner.settings import InputSettings


def load_manifest(path: Path, options: ManifestOptions, settings: InputSettings, data: bytes | None = None,
                  keep_jobs: bool = True) -> Batch:  # fmt: skip
    """The validated batch of the manifest at `path` (or of its content `data`, kept from earlier).

    Problems are in `batch.diagnostics`. Local image paths are relative to the manifest's folder.
    The file is read line by line; without `keep_jobs` its jobs are only counted (see `parse_manifest`).
    """
    name = str(path)
    check = image_checker(path.parent, settings.max_image_bytes)
    if data is not None:
        return parse_manifest(name, data, options, check, keep_jobs)
    try:
        with path.open("rb") as lines:
            return parse_manifest(name, lines, options, check, keep_jobs)
    except OSError as exc:
        return Batch(name, [], 0, [Diagnostic(name, None, None, f"cannot read: {exc.strerror}")], complete=False)
