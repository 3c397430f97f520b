"""`report.html`: a batch's contact sheet, one self-contained page beside `report.csv`.

Each job shows its input images beside its outputs, with its prompt, seeds,
matrix values, status, error and timings; filters by status, endpoint and
error type, and sorting, run in the page itself. It needs no network and
survives the folder being copied: images are thumbnails in `thumbs/`, made
with Pillow once, linked relatively to the full images. Jinja2 renders it,
escaping everything that came from a manifest or from fal.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image, UnidentifiedImageError

from jobs.pricing import shown_usd, usd
from jobs.record import JobRecord
from runner.fal.local_images import job_image_refs, local_refs

#: The longest side of a thumbnail, in pixels.
THUMB_PX = 256
#: Thumbnails made at once (decoding and scaling run outside the GIL).
THUMB_THREADS = max(2, os.cpu_count() or 2)
_ENV = Environment(loader=PackageLoader("runner.steps", "templates"), autoescape=select_autoescape(["j2"]))
_ENV.filters["usd"] = lambda amount: shown_usd(Decimal(str(amount)))


def gallery_html(records: Sequence[JobRecord], summary: dict[str, Any], extra: dict[str, Any], folder: Path,
                 input_files: Mapping[str, Path]) -> str:  # fmt: skip
    """The page of a batch whose files are in `folder`; makes the thumbnails it shows that are missing.

    `input_files`: each local input image path as the manifest names it -> the file (its thumbnail is made from
    it; an input that is not local is shown as text, never fetched).
    """
    priced = {price["endpoint"] for price in summary.get("cost", {}).get("prices", [])}
    with ThreadPoolExecutor(THUMB_THREADS, thread_name_prefix="thumbs") as pool:  # Pillow lets go of the GIL
        jobs = list(pool.map(lambda record: _job(record, folder, input_files, priced), records))
    return _ENV.get_template("report.html.j2").render(
        batch_id=extra.get("batch_id"), manifest=extra.get("manifest"), provider_url=extra.get("provider_url"),
        summary=summary, jobs=jobs, statuses=sorted({job["status"] for job in jobs}),
        endpoints=sorted({job["endpoint"] for job in jobs}),
        error_types=sorted({job["error_type"] for job in jobs if job["error_type"]}),
    )  # fmt: skip


def _job(record: JobRecord, folder: Path, input_files: Mapping[str, Path], priced: Set[str]) -> dict[str, Any]:
    job = record.job
    local = local_refs([job])
    inputs = []
    for _name, _index, ref in job_image_refs(job):
        source = input_files.get(ref) if ref in local else None
        thumb = None
        if source is not None:
            thumb = thumbnail(source, folder, f"in-{hashlib.sha256(str(source).encode()).hexdigest()[:16]}")
        text = ref if not ref.startswith("data:") else ref.partition(",")[0] + ",..."
        inputs.append({"thumb": thumb, "href": thumb, "text": text})
    outputs = []
    for output in record.outputs:
        path = folder / output.path
        outputs.append({"thumb": thumbnail(path, folder, f"out-{path.stem}") or output.path, "href": output.path})
    return {
        "name": job.file_stem, "row": job.row, "endpoint": job.endpoint, "prompt": job.input.get("prompt"),
        "status": record.status.value, "error_type": record.error_type, "error_message": record.error_message,
        "attempts": record.attempts, "seeds": [o.seed for o in record.outputs if o.seed is not None],
        "matrix": job.matrix, "queue_wait_s": _round(record.queue_wait_s), "run_s": _round(record.run_s),
        "inputs": inputs, "outputs": outputs,
        "cost_usd": usd(record.charged_nusd) if job.endpoint in priced else None,
    }  # fmt: skip


def thumbnail(source: Path, folder: Path, stem: str) -> str | None:
    """The thumbnail of `source` (made if missing or older), relative to `folder`; None if it cannot be read."""
    relative = f"thumbs/{stem}.jpg"
    target = folder / relative
    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            return relative
        with Image.open(source) as image:
            image.thumbnail((THUMB_PX, THUMB_PX))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.part")  # its own
            image.convert("RGB").save(partial, "JPEG", quality=80)
            partial.replace(target)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return relative


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
