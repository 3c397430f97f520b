"""What users do to a batch that already exists: list, inspect, cancel, retry, resume, sweep and purge it.

Each reads the ledger's counters and per-status indexes, never every job, and
changes jobs only through `runner.steps.moves.move`. None sends a message:
what workers must do next is a timer in Redis, which their dispatchers send.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import QueueAPIError
from jobs.lifecycle import JobUpdate, Move, allowed
from jobs.record import Attempt, JobRecord
from jobs.status import IN_FLIGHT, JobStatus
from runner.ledger.store import LEDGER_FORMAT, BatchInfo, Ledger
from runner.ledger.timers import Timer
from runner.steps.context import Context
from runner.steps.moves import move

S = JobStatus
#: `status` shows this many of the latest failures (grouped by type); the counts are of all of them.
LATEST_FAILURES = 200
#: A move refused because the job changed meanwhile is tried again on the job as it is now, this often.
_MOVE_TRIES = 5


@dataclass
class BatchView:
    """A batch as `status` shows it: counts, the jobs at fal, and failures by type with the latest ones."""

    info: BatchInfo
    counts: dict[JobStatus, int]
    in_flight: list[JobRecord] = field(default_factory=list)
    #: Failed jobs per error type (all of them), most first.
    failures: dict[str, int] = field(default_factory=dict)
    #: The latest failures by error type, newest first.
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
            "ended_at": self.info.ended_at,
            "finished": self.finished,
            "counts": {status.value: n for status, n in self.counts.items()},
            "in_flight": [_in_flight_row(r) for r in self.in_flight],
            "errors": {
                error_type: {"count": count, "latest": [_error_row(r) for r in self.errors.get(error_type, [])[:5]]}
                for error_type, count in self.failures.items()
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
    """Counters, the jobs holding a slot (at most the window) and the latest failures; None for an unknown batch."""
    info = ledger.batch(batch_id)
    if info is None:
        return None
    info.check_format()
    view = BatchView(info, ledger.counts(batch_id), failures=ledger.failures_by_type(batch_id))
    order = {status: n for n, status in enumerate(JobStatus)}
    view.in_flight = sorted(ledger.records_with(batch_id, IN_FLIGHT), key=lambda r: (order[r.status], r.job.row))
    for record in reversed(ledger.records_with(batch_id, [S.FAILED], latest=LATEST_FAILURES)):
        view.errors.setdefault(record.error_type or "unknown", []).append(record)
    return view


def list_batches(ledger: Ledger) -> list[tuple[BatchInfo, dict[JobStatus, int]]]:
    """Every batch with its counts, oldest first."""
    found = []
    for batch_id in ledger.batch_ids():
        info = ledger.batch(batch_id)
        if info is not None:
            found.append((info, ledger.counts(batch_id)))
    return found


def cancel_batch(ctx: Context, batch_id: str) -> Counter[str]:
    """Stop a batch: no new submits, every request at fal cancelled; how many jobs ended how."""
    ctx.ledger.set_batch_state(batch_id, "cancelled")
    outcome: Counter[str] = Counter()
    unfinished = [s for s in JobStatus if not s.is_final]
    for job_id in ctx.ledger.job_ids(batch_id, unfinished):
        outcome[cancel_job(ctx, batch_id, job_id)] += 1
    ctx.ledger.admit(batch_id)  # admits nothing now; ends the batch if it had no job left to end
    return outcome


def cancel_job(ctx: Context, batch_id: str, job_id: str) -> str:
    """Cancel a job: at fal if it has a request there; it ends CANCELLED with whatever it had saved.

    A job being collected is left to finish (it already ran; its files are
    paid for). Returns "cancelled", "finishing" or "ended" (it was final).
    """
    batch = ctx.ledger.batch(batch_id)
    answer, asked_for = "", "(not asked yet)"
    for _ in range(_MOVE_TRIES):
        record = ctx.ledger.record(batch_id, job_id)
        if batch is None or record is None or record.status.is_final:
            return "ended"
        if not allowed(Move.CANCEL, record.status):
            return "finishing"
        if (record.request_id or "") != asked_for:  # the first look, or a submit landed meanwhile: cancel that
            answer, asked_for = _cancel_at_fal(ctx, batch, record), record.request_id or ""
        update = JobUpdate(error_type="cancelled", error_message=f"cancelled by the user (fal: {answer})",
                           finished_at=ctx.clock())  # fmt: skip
        if move(ctx, batch, record, Move.CANCEL, update).applied is not None:
            return "cancelled"
    return "finishing"


def _cancel_at_fal(ctx: Context, batch: BatchInfo, record: JobRecord) -> str:
    if not (record.status.has_request and record.cancel_url):
        return "never sent"
    try:
        return ctx.queue_client(batch).cancel(record.cancel_url)
    except QueueAPIError as exc:
        return f"cancel failed: {exc}"


def retry_jobs(
    ctx: Context,
    batch_id: str,
    statuses: Iterable[JobStatus] = (S.FAILED,),
    error_types: Iterable[str] | None = None,
    job_ids: Iterable[str] | None = None,
) -> list[str]:
    """Give exactly the chosen failed or cancelled jobs a new attempt; jobs that succeeded never.

    Returns the ids put back in line; the free slots admit them at once.
    """
    batch = ctx.ledger.batch(batch_id)
    if batch is None:
        return []
    wanted_types = set(error_types) if error_types is not None else None
    wanted_ids = set(job_ids) if job_ids is not None else None
    requeued = []
    for record in ctx.ledger.records_with(batch_id, set(statuses) & {S.FAILED, S.CANCELLED}):
        if wanted_types is not None and record.error_type not in wanted_types:
            continue
        if wanted_ids is not None and record.job.id not in wanted_ids:
            continue
        ended = Attempt(record.attempts, record.request_id, record.error_type, record.error_message,
                        record.submitted_at, record.finished_at)  # fmt: skip
        update = JobUpdate(history=(*record.history, ended), error_type=None, error_message=None, outputs=(),
                           finished_at=None, queue_position=None, request_id=None, status_url=None,
                           response_url=None, cancel_url=None)  # fmt: skip
        if move(ctx, batch, record, Move.REQUEUE, update).applied is not None:
            requeued.append(record.job.id)
    if requeued:
        if batch.state == "cancelled":
            ctx.ledger.set_batch_state(batch_id, "open")
        ctx.ledger.admit(batch_id)
    return requeued


def resume_batch(ctx: Context, batch_id: str, owners_gone: bool = False) -> int:
    """Make the next step of every job that holds a slot due now, and fill free slots; how many it set.

    A step a live worker runs now is left to it, unless `owners_gone` (the
    run that held them is known to be dead, e.g. a rerun of `wan-batch run`
    into its folder): then every step is given out again. Jobs at fal are
    polled again, never submitted again; a job caught mid-submit is written
    off as `submit_unconfirmed` by its step.
    """
    job_ids = ctx.ledger.job_ids(batch_id, IN_FLIGHT)
    timers = [Timer.step(batch_id, job_id) for job_id in job_ids]
    if owners_gone:
        ctx.timers.forget(timers)
    count = ctx.timers.schedule(timers, ctx.clock())
    ctx.ledger.admit(batch_id)
    return count


def sweep(ctx: Context, stale_after_s: float) -> dict[str, int]:
    """A safety net for open batches: a job holding a slot, unchanged for `stale_after_s`, without a timer gets one.

    Every such job has a timer (they are set in the same step as its
    status), so this finds none unless something went wrong; it reads only
    the index by last update. Returns how many it gave back per batch.
    """
    found: dict[str, int] = {}
    before = ctx.clock() - stale_after_s
    for info, counts in list_batches(ctx.ledger):
        if info.state != "open" or not any(counts[s] for s in IN_FLIGHT):
            continue
        stale = ctx.ledger.job_ids(info.id, IN_FLIGHT, changed_before=before)
        lost = [Timer.step(info.id, j) for j in stale if ctx.timers.due_at(Timer.step(info.id, j)) is None]
        if lost:
            found[info.id] = ctx.timers.schedule(lost, ctx.clock())
    return found


@dataclass(frozen=True)
class Purged:
    batch_id: str
    jobs: int
    ended_at: float | None


def purge_batches(ledger: Ledger, older_than_s: float | None, batch_id: str | None = None,
                  scheduled_only: bool = False) -> tuple[list[Purged], list[str]]:  # fmt: skip
    """Remove finished batches' ledger entries (never their folders, reports or images).

    A batch is finished when every job of it is final (and its report, if a
    worker is to write it, is written); with `older_than_s`, only those that
    ended that long ago. Returns what was removed, and the batches that were
    asked for by id but are not finished.
    """
    now = time.time()
    removed: list[Purged] = []
    kept: list[str] = []
    for info, counts in list_batches(ledger):
        if batch_id is not None and info.id != batch_id:
            continue
        if scheduled_only and info.schedule is None:
            continue
        report_due = ledger.redis.zscore(ledger.keys.timers, Timer.end(info.id).member) is not None
        unfinished = report_due or any(n for status, n in counts.items() if not status.is_final)
        if unfinished and info.ledger_format == LEDGER_FORMAT:  # an earlier version's batch cannot run here
            if batch_id is not None:
                kept.append(info.id)
            continue
        ended_at = info.ended_at or info.created_at
        if older_than_s is not None and now - ended_at < older_than_s:
            continue
        removed.append(Purged(info.id, ledger.purge(info.id), ended_at))
    return removed, kept

