"""What the dashboard shows of batches, as JSON-ready dicts: read from the ledger's counters and indexes.

A batch's list row and page read its counts, its estimated cost so far, the
jobs holding a slot, its latest failures and its latest finished jobs: never
every job, so a page of a 20,000-job batch costs what one of 20 jobs does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from jobs.progress import eta_s, pace_window_s, progress
from jobs.record import JobRecord
from jobs.status import JobStatus
from runner.batches.operations import cost_summary, cost_text, view_batch
from runner.ledger.overview import BatchOverview, ended_since, overviews
from runner.ledger.store import Ledger

#: A batch page shows this many of the latest jobs that succeeded.
GALLERY_LATEST = 48
#: Its failures by type show examples from this many of the latest (a page is read every 1.5 s while open).
FAILURES_LATEST = 40


def batch_row(ledger: Ledger, seen: BatchOverview, now: float) -> dict[str, Any]:
    """A batch as the list shows it: state, progress, counts, cost so far, when it started and when it should end."""
    info = seen.info
    ended, total = progress(seen.counts)
    eta = None
    if info.state == "open":
        recent, first_s = ended_since(ledger, info.id, now - pace_window_s(now - info.created_at))
        eta = eta_s(total - ended, recent, now - (first_s or now))
    return {
        "batch_id": info.id, "url": batch_url(info.id), "state": info.state, "manifest": info.manifest,
        "schedule": info.schedule, "created_at": info.created_at, "ended_at": info.ended_at, "jobs": total,
        "ended": ended, "counts": {status.value: n for status, n in seen.counts.items()},
        "in_flight": seen.in_flight, "window": info.max_in_flight, "eta_s": None if eta is None else round(eta, 1),
        **_cost(seen),
    }  # fmt: skip


def _cost(seen: BatchOverview) -> dict[str, Any]:
    """The estimated cost so far and the cap (USD), and both as the pages show them; all None for a batch with no
    price, cap nor charge."""
    cost = cost_summary(seen.info, seen.spent_nusd, seen.failures)
    if cost is None:
        return {"estimated_cost_usd": None, "cost_cap_usd": None, "cost_shown": None}
    return {"estimated_cost_usd": cost["estimated_cost_usd"], "cost_cap_usd": cost["cap_usd"],
            "cost_shown": cost_text(seen.info, seen.spent_nusd)}  # fmt: skip


def batch_rows(ledger: Ledger, now: float) -> list[dict[str, Any]]:
    """Every batch, newest first (one read for all, and one more for each open batch's pace)."""
    return [batch_row(ledger, seen, now) for seen in reversed(overviews(ledger))]


def batch_page(ledger: Ledger, batch_id: str, now: float) -> dict[str, Any] | None:
    """A batch's row with its jobs in flight (and fal's queue position), failures by type and latest outputs."""
    view = view_batch(ledger, batch_id, FAILURES_LATEST)
    if view is None:
        return None
    shown = view.to_dict()
    seen = BatchOverview(view.info, view.counts, view.failures, ledger.in_flight(batch_id), view.spent_nusd)
    data = {**shown, **batch_row(ledger, seen, now)}  # in_flight: how many
    data["in_flight_jobs"] = [{**row, "row": record.job.row, "endpoint": record.job.endpoint}
                              for row, record in zip(shown["in_flight"], view.in_flight, strict=True)]  # fmt: skip
    latest = ledger.records_with(batch_id, [JobStatus.SUCCEEDED], latest=GALLERY_LATEST)
    data["gallery"] = [_finished(batch_id, record) for record in reversed(latest)]
    return data


def _finished(batch_id: str, record: JobRecord) -> dict[str, Any]:
    job = record.job
    return {
        "job_id": job.id, "name": job.file_stem, "row": job.row, "endpoint": job.endpoint,
        "prompt": job.input.get("prompt"), "matrix": job.matrix, "run_s": record.run_s,
        "outputs": [{"href": file_url(batch_id, o.path), "thumb": thumb_url(batch_id, o.path), "seed": o.seed,
                     "width": o.width, "height": o.height} for o in record.outputs],
    }  # fmt: skip


def batch_url(batch_id: str) -> str:
    return f"/batches/{quote(batch_id, safe='')}"


def file_url(batch_id: str, path: str) -> str:
    return f"{batch_url(batch_id)}/files/{quote(path)}"


def thumb_url(batch_id: str, path: str) -> str:
    return f"{batch_url(batch_id)}/thumbs/{quote(path)}"
