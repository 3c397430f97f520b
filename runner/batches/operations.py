"""What users do to a batch that already exists: list, inspect, cancel, retry and resume it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from jobs.record import Attempt, JobRecord
from jobs.status import JobStatus
from runner.ledger.store import BatchInfo, Ledger
from runner.steps import pipeline
from runner.steps.context import Context
from runner.steps.pipeline import FollowUp

S = JobStatus
#: A submit that has not come back in this long lost its worker (the client's submit timeout is 120 s).
SUBMIT_LOST_AFTER_S = 180.0


@dataclass
class BatchView:
    """A batch as `status` shows it: counts, the jobs at fal, and the latest errors by type."""

    info: BatchInfo
    counts: dict[JobStatus, int]
    in_flight: list[JobRecord] = field(default_factory=list)
    errors: dict[str, list[JobRecord]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return all(n == 0 for status, n in self.counts.items() if not status.is_final)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.info.id,
            "state": self.info.state,
            "folder": self.info.folder,
            "created_at": self.info.created_at,
            "finished": self.finished,
            "counts": {status.value: n for status, n in self.counts.items()},
            "in_flight": [_in_flight_row(r) for r in self.in_flight],
            "errors": {
                error_type: {"count": len(records), "latest": [_error_row(r) for r in records[:5]]}
                for error_type, records in self.errors.items()
            },
        }


def _in_flight_row(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job.id,
        "status": record.status.value,
        "request_id": record.request_id,
        "queue_position": record.queue_position,
        "last_log": record.last_log,
    }


def _error_row(record: JobRecord) -> dict[str, Any]:
    return {"job_id": record.job.id, "row": record.job.row, "message": record.error_message}


def view_batch(ledger: Ledger, batch_id: str) -> BatchView | None:
    """Counts (one read), plus a scan for in-flight jobs and failures; None for an unknown batch."""
    info = ledger.batch(batch_id)
    if info is None:
        return None
    view = BatchView(info, ledger.counts(batch_id))
    failed: list[JobRecord] = []
    for record in ledger.records(batch_id):
        if record.status.holds_slot:
            view.in_flight.append(record)
        elif record.status is S.FAILED:
            failed.append(record)
    failed.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
    for record in failed:
        view.errors.setdefault(record.error_type or "unknown", []).append(record)
    view.errors = dict(sorted(view.errors.items(), key=lambda item: -len(item[1])))
    return view


def list_batches(ledger: Ledger) -> list[tuple[BatchInfo, dict[JobStatus, int]]]:
    """Every batch with its counts, oldest first."""
    found = []
    for batch_id in ledger.batch_ids():
        info = ledger.batch(batch_id)
        if info is not None:
            found.append((info, ledger.counts(batch_id)))
    return found


def cancel_batch(ctx: Context, batch_id: str) -> tuple[Counter[str], list[FollowUp]]:
    """Stop a batch: no new submits, every request at fal cancelled.

    Returns how many jobs ended how, and what to send (the end of an unattended batch).
    """
    ctx.ledger.set_batch_state(batch_id, "cancelled")
    outcome: Counter[str] = Counter()
    follow: list[FollowUp] = []
    for record in ctx.ledger.records(batch_id):
        if record.status.is_final:
            continue
        if record.status is S.COLLECTING:
            outcome["finishing"] += 1
            continue
        follow += pipeline.cancel_job(ctx, batch_id, record.job.id)
        outcome["cancelled"] += 1
    return outcome, follow


def retry_jobs(
    ctx: Context,
    batch_id: str,
    statuses: Iterable[JobStatus] = (S.FAILED,),
    error_types: Iterable[str] | None = None,
    job_ids: Iterable[str] | None = None,
) -> tuple[list[str], list[FollowUp]]:
    """Give exactly the chosen failed or cancelled jobs a new attempt; jobs that succeeded never.

    Returns the ids put back in line and the submits the free slots admit now.
    """
    wanted_statuses = set(statuses) - {S.SUCCEEDED}
    wanted_types = set(error_types) if error_types is not None else None
    wanted_ids = set(job_ids) if job_ids is not None else None
    requeued = []
    for record in ctx.ledger.records(batch_id):
        if record.status not in wanted_statuses:
            continue
        if wanted_types is not None and record.error_type not in wanted_types:
            continue
        if wanted_ids is not None and record.job.id not in wanted_ids:
            continue
        ended = Attempt(record.attempts, record.request_id, record.error_type, record.error_message,
                        record.submitted_at, record.finished_at)  # fmt: skip
        history = replace(record, history=(*record.history, ended)).to_dict()["history"]
        if ctx.ledger.requeue(batch_id, record.job.id, history):
            requeued.append(record.job.id)
    if requeued:
        ctx.ledger.set_batch_state(batch_id, "open")
        ctx.ledger.reopen(batch_id)
    return requeued, pipeline.admit_next(ctx, batch_id)


def resume_lost(
    ctx: Context, batch_id: str, stale_after_s: float = 0.0, lost_after_s: float = SUBMIT_LOST_AFTER_S
) -> list[FollowUp]:
    """Re-enqueue jobs that lost their Celery message (a killed worker, a broker restart).

    With live workers elsewhere, a job mid-submit is written off only once it
    has been so for `lost_after_s`; polls are renewed, never resubmits.
    """
    return pipeline.resume_batch(ctx, batch_id, stale_after_s=stale_after_s,
                                 lost_after_s=max(stale_after_s, lost_after_s))  # fmt: skip


def sweep(ctx: Context, stale_after_s: float) -> dict[str, list[FollowUp]]:
    """For every open, unfinished batch: resume the jobs with no progress for `stale_after_s`.

    An unattended batch that ended without its report (its end task was lost,
    or failed) has it written, once per `stale_after_s`.
    """
    follow: dict[str, list[FollowUp]] = {}
    for info, counts in list_batches(ctx.ledger):
        if all(n == 0 for s, n in counts.items() if not s.is_final):
            ledger = ctx.ledger
            if info.report_when_done and (ledger.claim_end(info.id) or ledger.reclaim_end(info.id, stale_after_s)):
                follow[info.id] = [FollowUp("end", "")]
            continue
        if info.state == "open":
            follow[info.id] = resume_lost(ctx, info.id, stale_after_s)
    return follow
