"""Load a manifest from disk: parse it (pure) and check the files it names (I/O)."""

from __future__ import annotations

from pathlib import Path

from jobs.diagnostics import Diagnostic, dedupe
from jobs.manifest import Batch, ManifestOptions, parse_manifest
from runner.fal.local_images import check_batch_images
from runner.settings import InputSettings


def load_manifest(path: Path, options: ManifestOptions, settings: InputSettings, data: bytes | None = None) -> Batch:
    """The validated batch of the manifest at `path` (or of its content `data`, kept from earlier).

    Problems are in `batch.diagnostics`. Local image paths are relative to the manifest's folder.
    """
    name = str(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Batch(name, [], 0, [Diagnostic(name, None, None, f"cannot read: {exc.strerror}")])
    batch = parse_manifest(name, data, options)
    image_problems = check_batch_images(batch, path.parent, settings.max_image_bytes)
    if image_problems:
        bad = {(d.file, d.line) for d in image_problems}
        batch.jobs = [job for job in batch.jobs if (job.file, job.line) not in bad]
        batch.diagnostics = dedupe(batch.diagnostics + image_problems)
        batch.diagnostics.sort(key=lambda d: d.line or 0)
    return batch
