"""Files of a batch: images, per-job sidecars and reports, each written atomically."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.record import JobRecord
from jobs.report import COLUMNS, MATRIX_PREFIX, Costs, invalid_rows, report_rows, summarize
from runner.steps.gallery import gallery_html


class BatchFolder:
    """`OUT/<batch>/`: `images/<stem>_<n>.<ext>`, `jobs/<stem>.json`, `report.csv`, `report.json`.

    A job's stem is its id, or the name of a matrix variant (`Job.file_stem`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def sidecars(self) -> Path:
        return self.path / "jobs"

    def image_path(self, stem: str, index: int, extension: str) -> Path:
        return self.images / f"{stem}_{index}{extension}"

    def sidecar_path(self, stem: str) -> Path:
        return self.sidecars / f"{stem}.json"

    def remove_leftovers(self, stem: str) -> None:
        """Delete temp files of the job that a killed run left half-written (downloads, sidecars)."""
        name = re.escape(stem)
        patterns = (
            (self.images, rf"\.{name}_\d+\.\w+\.[0-9a-f]+\.part"),
            (self.sidecars, rf"\.{name}\.json\.[0-9a-f]+\.tmp"),
        )
        for folder, pattern in patterns:
            for leftover in folder.glob(f".{glob.escape(stem)}*"):
                if re.fullmatch(pattern, leftover.name):
                    leftover.unlink(missing_ok=True)

    def prepare(self) -> None:
        self.images.mkdir(parents=True, exist_ok=True)
        self.sidecars.mkdir(parents=True, exist_ok=True)

    def write_sidecar(self, record: JobRecord) -> Path:
        """The job's input (once), endpoint, request, seeds, timings (Unix seconds, and ISO 8601 UTC beside
        each), attempts, outputs and error."""
        stored = record.to_dict()
        job = stored.pop("job")
        data = {"job_id": job.pop("id"), **job, **stored}
        data["seeds"] = [o.seed for o in record.outputs]
        data.update(queue_wait_s=record.queue_wait_s, run_s=record.run_s, latency_s=record.latency_s)
        data.update({f"{name}_iso": _iso(value) for name, value in list(data.items())
                     if name.endswith("_at") and isinstance(value, int | float)})  # fmt: skip
        path = self.sidecar_path(record.job.file_stem)
        write_atomically(path, json.dumps(data, indent=2, default=str).encode())
        return path

    def write_reports(
        self, records: Sequence[JobRecord], extra: dict[str, Any], skipped: Sequence[Sequence[dict[str, Any]]] = (),
        image_sizes: Mapping[str, str] | None = None, input_files: Mapping[str, Path] | None = None,
        costs: Costs | None = None,
    ) -> tuple[Path, Path, dict[str, Any]]:
        """`report.csv` (a row per image, per job without one, and per row skipped as invalid), `report.json`
        (the rows and a summary) and `report.html` (see `gallery`); `skipped`: the errors of each row skipped;
        `image_sizes`: see `report_rows`; `input_files`: where the local input images are, for thumbnails;
        `costs`: its prices and cap, for the estimated cost of each job and in all."""
        priced = {price.endpoint for price in costs.prices} if costs is not None else set()
        rows = report_rows(records, image_sizes, priced) + invalid_rows(skipped)
        more = {key for row in rows for key in row} - set(COLUMNS)  # a matrix's values, then the user's own
        columns = list(COLUMNS) + sorted(more, key=lambda name: (not name.startswith(MATRIX_PREFIX), name))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        csv_path, json_path = self.path / "report.csv", self.path / "report.json"
        write_atomically(csv_path, text.getvalue().encode())
        summary = summarize(records, extra.get("wall_s"), len(skipped), costs)
        report = {**extra, "summary": summary, "rows": rows}
        write_atomically(json_path, json.dumps(report, indent=2, default=str).encode())
        page = gallery_html(records, summary, extra, self.path, input_files or {})
        write_atomically(self.path / "report.html", page.encode())
        return csv_path, json_path, summary


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and a rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temp.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
