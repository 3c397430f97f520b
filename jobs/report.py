"""Report rows and the summary of a batch: pure functions of its job records."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.pricing import Price, usd
from jobs.record import JobRecord
from jobs.status import JobStatus

COLUMNS = (
    "job_id", "name", "row", "endpoint", "prompt", "input_images", "input_sizes", "status", "request_id", "seed",
    "output_path", "width", "height", "attempts", "error_type", "error_message", "queue_wait_s", "run_s", "reconciled",
    "estimated_cost_usd",
)  # fmt: skip
IMAGE_FIELDS = ("image_url", "image_urls")
#: Report columns of the values a matrix gave each job: `matrix.seed`.
MATRIX_PREFIX = "matrix."


def brief(message: str, width: int) -> str:
    """`message` in at most `width` characters, cut between words, its advice (the part after the last "; ")
    kept whole when it fits."""
    if len(message) <= width:
        return message
    head, _, advice = message.rpartition("; ")
    if head and len(advice) <= width * 2 // 3:
        return f"{_cut(head, width - len(advice) - 2)}; {advice}"
    return _cut(message, width)


def _cut(text: str, width: int) -> str:
    """`text` cut at the last space that leaves room for " …" within `width`."""
    room = max(1, width - 2)
    cut = text[:room].rsplit(" ", 1)[0] if " " in text[:room] else text[:room]
    return cut.rstrip(" ,;:") + " …"


def report_rows(records: Iterable[JobRecord], image_sizes: Mapping[str, str] | None = None,
                priced: Collection[str] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """One row per output image, and one per job that has none (failed, cancelled, unfinished).

    `image_sizes`: the pixel size (`1024x768`) of each local input image, by the path the manifest names.
    `priced`: the endpoints whose jobs have an estimated cost (of every attempt that fal may bill, on each of
    its rows); the others' is blank.
    """
    rows: list[dict[str, Any]] = []
    for record in records:
        base = _job_columns(record, image_sizes or {})
        base["estimated_cost_usd"] = float(usd(record.charged_nusd)) if record.job.endpoint in priced else None
        if not record.outputs:
            rows.append({**base, "seed": None, "output_path": None, "width": None, "height": None})
        for output in record.outputs:
            rows.append({**base, "seed": output.seed, "output_path": output.path,
                         "width": output.width, "height": output.height})  # fmt: skip
    return [{column: row.get(column) for column in COLUMNS} | _matrix(row) | _meta(row) for row in rows]


def invalid_rows(skipped: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One report row per manifest row skipped as invalid (`--skip-invalid`), from its errors (`Diagnostic.to_dict`)."""
    rows = []
    for errors in skipped:
        first = errors[0]
        message = "; ".join(f"{e['field']}: {e['message']}" if e.get("field") else e["message"] for e in errors)
        where = first["file"] if first.get("line") is None else f"{first['file']}:{first['line']}"
        row = dict.fromkeys(COLUMNS)
        row.update(status="invalid", error_type="invalid_row", error_message=f"{where}: {message}", attempts=0)
        rows.append(row)
    return rows


def summarize(records: Sequence[JobRecord], wall_s: float | None, invalid: int = 0,
              costs: Costs | None = None) -> dict[str, Any]:  # fmt: skip
    """Counts per status, rows skipped as invalid, images written, attempts, latency percentiles and wall time; with
    `costs`, the estimated cost of the jobs' attempts and the cap."""
    counts = Counter(record.status.value for record in records)
    latencies = sorted(r.latency_s for r in records if r.latency_s is not None and r.status is JobStatus.SUCCEEDED)
    failures = Counter(r.error_type or "unknown" for r in records if r.status is JobStatus.FAILED)
    return {
        "jobs": len(records),
        "counts": {status.value: counts.get(status.value, 0) for status in JobStatus},
        "invalid_rows": invalid,
        "images_written": sum(len(r.outputs) for r in records),
        "attempts": sum(r.attempts for r in records),
        "failures_by_error_type": dict(failures.most_common()),
        # Lost submits, by how fal's request history settled them: adopted (fal had it) or absent (sent again).
        "reconciled": dict(Counter(entry.outcome for r in records for entry in r.reconciled).most_common()),
        "latency_s": {
            "p50": _percentile(latencies, 50),
            "p95": _percentile(latencies, 95),
            "max": round(latencies[-1], 3) if latencies else None,
        },
        "wall_s": round(wall_s, 3) if wall_s is not None else None,
        **(_cost_summary(records, costs) if costs is not None else {}),
    }


@dataclass(frozen=True)
class Costs:
    """What a batch's attempts were charged at, and its cap, for the report."""

    prices: Sequence[Price]
    cap_nusd: int | None = None


def _cost_summary(records: Sequence[JobRecord], costs: Costs) -> dict[str, Any]:
    priced = {price.endpoint for price in costs.prices}
    return {
        "estimated_cost_usd": float(usd(sum(r.charged_nusd for r in records if r.job.endpoint in priced))),
        "cost": {
            "note": "estimates from the listed prices, for every attempt fal may bill; fal's bill may differ",
            "prices": [price.to_dict() for price in costs.prices],
            "cap_usd": None if costs.cap_nusd is None else float(usd(costs.cap_nusd)),
            "budget_exceeded": sum(r.error_type == "budget_exceeded" for r in records if r.status is JobStatus.FAILED),
            "unpriced_jobs": sum(r.job.endpoint not in priced for r in records),
        },
    }


def _job_columns(record: JobRecord, image_sizes: Mapping[str, str]) -> dict[str, Any]:
    job = record.job
    images: list[str] = []
    for name in IMAGE_FIELDS:
        value = job.input.get(name)
        images.extend(value if isinstance(value, list) else [value] if isinstance(value, str) else [])
    return {
        "job_id": job.id,
        "name": job.file_stem,  # its files: images/<name>_<n>.<ext>, jobs/<name>.json
        "row": job.row,
        "endpoint": job.endpoint,
        "prompt": job.input.get("prompt"),
        "input_images": "|".join(_short_image(i) for i in images),
        "input_sizes": "|".join(image_sizes.get(i, "?") for i in images) if any(i in image_sizes for i in images)
        else None,
        "status": record.status.value,
        "request_id": record.request_id,
        "attempts": record.attempts,
        "error_type": record.error_type,
        "error_message": record.error_message,
        "queue_wait_s": _round(record.queue_wait_s),
        "run_s": _round(record.run_s),
        "reconciled": _reconciled(record),
        "_meta": job.meta,
        "_matrix": job.matrix,
    }


def _reconciled(record: JobRecord) -> str | None:
    """How each lost submit of the job was settled, in order: "adopted <request_id>" or "absent"."""
    if not record.reconciled:
        return None
    return "; ".join(
        f"attempt {r.attempt}: {r.outcome}" + (f" {r.request_id}" if r.request_id else "") for r in record.reconciled
    )


def _matrix(row: dict[str, Any]) -> dict[str, Any]:
    """The values a matrix gave the job, as columns `matrix.<field>` (a list or object as JSON text)."""
    values: dict[str, Any] = row.get("_matrix") or {}
    return {f"{MATRIX_PREFIX}{key}": _cell(value) for key, value in values.items()}


def _cell(value: Any) -> Any:
    """A matrix value as a report cell: a data URI shortened as in `input_images`, a list or object as JSON."""
    if isinstance(value, str):
        return _short_image(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, list):
        value = [_short_image(item) if isinstance(item, str) else item for item in value]
    return json.dumps(value)


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    """The user's own `_` columns, after the standard ones."""
    meta: dict[str, str] = row.get("_meta") or {}
    return dict(meta)


def _short_image(value: str) -> str:
    # A data URI would make a report row megabytes long.
    return value.partition(",")[0] + ",..." if value.startswith("data:") else value


def _percentile(sorted_values: list[float], percent: int) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return round(sorted_values[0], 3)
    return round(statistics.quantiles(sorted_values, n=100, method="inclusive")[percent - 1], 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
