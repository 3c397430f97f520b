"""What users do to a batch that already exists: list, inspect, cancel, retry, resume, sweep and purge it.

Each reads the ledger's counters and per-status indexes, never every job, and
changes jobs only through `runner.steps.moves.move`. None sends a message:
what workers must do next is a timer in Redis, which their dispatchers send.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.endpoints import KNOWN_ENDPOINTS
from jobs.errors import QueueAPIError, UsageError
from jobs.lifecycle import AT_FAL, JobUpdate, Move
from jobs.pricing import shown_usd, usd
from jobs.record import Attempt, JobRecord
from jobs.status import ACTIVE, JobStatus
from runner.ledger.batch_info import LEDGER_FORMAT, BatchInfo
from runner.ledger.overview import overviews
from runner.ledger.store import Ledger
from runner.ledger.timers import Timer
from runner.steps.context import Context
from runner.steps.moves import move
from runner.steps.pipeline import cancel_at_fal

log = logging.getLogger(__name__)
S = JobStatus
#: `status` shows this many of the latest failures (grouped by type); the counts are of all of them.
LATEST_FAILURES = 200


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
    #: How its latest cancel ended so far (see `cancel_batch`).
    tallies: dict[str, int] = field(default_factory=dict)
    #: The estimated cost charged so far for its attempts that fal may bill (nano-dollars).
    spent_nusd: int = 0

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
            **({"cancel": cancel_summary(self.tallies, self.counts)} if self.info.state == "cancelled" else {}),
            **({"cost": cost} if (cost := cost_summary(self.info, self.spent_nusd, self.failures)) else {}),
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


def view_batch(ledger: Ledger, batch_id: str, latest_failures: int = LATEST_FAILURES) -> BatchView | None:
    """Counters, the jobs holding a slot (at most the window) and the latest failures (that many, each read whole);
    None for an unknown batch."""
    info = ledger.batch(batch_id)
    if info is None:
        return None
    info.check_format()
    view = BatchView(info, ledger.counts(batch_id), failures=ledger.failures_by_type(batch_id),
                     tallies=ledger.tallies(batch_id), spent_nusd=ledger.spent_nusd(batch_id))  # fmt: skip
    order = {status: n for n, status in enumerate(JobStatus)}
    view.in_flight = sorted(ledger.records_with(batch_id, ACTIVE), key=lambda r: (order[r.status], r.job.row))
    for record in reversed(ledger.records_with(batch_id, [S.FAILED], latest=latest_failures)):
        view.errors.setdefault(record.error_type or "unknown", []).append(record)
    return view


def cost_summary(info: BatchInfo, spent_nusd: int, failures: dict[str, int]) -> dict[str, Any] | None:
    """What a batch's attempts are estimated to have cost so far and its cap (USD), the jobs the cap kept from
    being sent, and the endpoints it prices (the others are charged nothing); None: no price, cap nor charge."""
    if not info.prices and info.max_cost_nusd is None and not spent_nusd:
        return None
    return {
        "estimated_cost_usd": float(usd(spent_nusd)),
        "cap_usd": None if info.max_cost_nusd is None else float(usd(info.max_cost_nusd)),
        "budget_exceeded": failures.get("budget_exceeded", 0),
        "priced_endpoints": sorted(info.prices),
    }


def cost_text(info: BatchInfo, spent_nusd: int) -> str:
    """`$0.50 of a $0.50 cap`, or `$0.19` without a cap."""
    spent = shown_usd(usd(spent_nusd))
    return spent if info.max_cost_nusd is None else f"{spent} of a {shown_usd(usd(info.max_cost_nusd))} cap"


def list_batches(ledger: Ledger) -> list[tuple[BatchInfo, dict[JobStatus, int]]]:
    """Every batch with its counts, oldest first (one read for all)."""
    return [(seen.info, seen.counts) for seen in overviews(ledger)]


#: What `cancel_batch` counts, and what `status` shows of a cancelled batch.
CANCEL_TALLIES = {
    "cancelled_at_fal": "cancelled at fal",
    "finished": "had already finished at fal (paid for: collected)",
    "never_sent": "never sent",
    "gone": "no longer known to fal",
}


def cancel_summary(tallies: dict[str, int], counts: dict[JobStatus, int]) -> dict[str, int]:
    """The counts of a cancel: how each job ended, and how many are still at fal or looked for (tracked)."""
    summary = {name: tallies.get(name, 0) for name in CANCEL_TALLIES}
    summary["not_reached_yet"] = sum(counts[s] for s in (*AT_FAL, S.SUBMITTING, S.UNCONFIRMED))
    summary["collecting"] = counts[S.COLLECTING]
    return summary


def cancel_batch(ctx: Context, batch_id: str, call_fal: bool) -> dict[str, int]:
    """Stop a batch: nothing new is sent, and every request at fal is cancelled there.

    With `call_fal` (this process has the credential) the cancels are made
    here; else the workers' next step of each job makes them (it is due now).
    A job fal had already finished is collected, not discarded (it is paid
    for); one whose submit is in flight or unconfirmed is cancelled once it is
    known whether fal has it. Returns `cancel_summary` as it stands when done.
    """
    batch = ctx.ledger.batch(batch_id)
    if batch is None:
        return {}
    ctx.ledger.reset_tallies(batch_id)
    ctx.ledger.set_batch_state(batch_id, "cancelled")
    batch = batch.model_copy(update={"state": "cancelled"})
    for record in ctx.ledger.records_with(batch_id, [S.WAITING, S.ADMITTED]):
        update = JobUpdate(error_type="cancelled", error_message="cancelled by the user before it was sent",
                           finished_at=ctx.clock())  # fmt: skip
        move(ctx, batch, record, Move.CANCEL, update, tally="never_sent")  # one a worker admitted meanwhile: below
    at_fal = ctx.ledger.job_ids(batch_id, [*AT_FAL, S.ADMITTED])
    if call_fal:  # cancelled at fal, or (finished there) collected next; what fails is left to the workers
        for record in ctx.ledger.records_with(batch_id, AT_FAL):
            try:
                cancel_at_fal(ctx, batch, record)
            except QueueAPIError as exc:  # left to the workers, as without a credential: its step is due now
                log.warning("cancelling job %s of batch %s at fal failed (%s: %s); the workers try again",
                            record.job.id, batch_id, type(exc).__name__, exc)  # fmt: skip
    # What is left (fal had finished it, the cancel failed, or a worker makes the cancel) is due now.
    ctx.timers.schedule([Timer.step(batch_id, job_id) for job_id in at_fal], ctx.clock())
    ctx.ledger.admit(batch_id)  # admits nothing now; ends the batch if it had no job left to end
    return cancel_summary(ctx.ledger.tallies(batch_id), ctx.ledger.counts(batch_id))


def retry_jobs(
    ctx: Context,
    batch_id: str,
    statuses: Iterable[JobStatus] = (S.FAILED,),
    error_types: Iterable[str] | None = None,
    job_ids: Iterable[str] | None = None,
) -> list[str]:
    """Give exactly the chosen failed or cancelled jobs a new attempt; jobs that succeeded never.

    A cancelled job whose request fal may have run anyway is polled first:
    collected if it ran (it is paid for), submitted again only if fal did
    cancel it. Returns the ids put back in line; the free slots admit them at once.
    """
    batch = ctx.ledger.batch(batch_id)
    if batch is None:
        return []
    unsettled = cancel_summary({}, ctx.ledger.counts(batch_id))["not_reached_yet"] if batch.state == "cancelled" else 0
    if unsettled:  # opening the batch again would let them run on
        raise UsageError(f"batch {batch_id!r}: {unsettled} request(s) of its cancel are not settled yet; retry once"
                         f" they are (`wan-batch status {batch_id}` shows them)")
    wanted_types = set(error_types) if error_types is not None else None
    wanted_ids = set(job_ids) if job_ids is not None else None
    chosen = [
        record for record in ctx.ledger.records_with(batch_id, set(statuses) & {S.FAILED, S.CANCELLED})
        if (wanted_types is None or record.error_type in wanted_types)
        and (wanted_ids is None or record.job.id in wanted_ids)
    ]  # fmt: skip
    if chosen and batch.state == "cancelled":  # open first: a poll in a cancelled batch would cancel again
        ctx.ledger.set_batch_state(batch_id, "open")
        batch = batch.model_copy(update={"state": "open"})
    ctx.ledger.forget_unknown_endpoints(batch_id)
    requeued = []
    for record in chosen:
        if record.status is S.CANCELLED and record.request_id and record.cancel_url:
            update = JobUpdate(finished_at=None, queue_position=None,
                               last_log="retried after a cancel: asking fal whether it ran")  # fmt: skip
            done = move(ctx, batch, record, Move.RECHECK, update)
        else:
            ended = Attempt(record.attempts, record.request_id, record.error_type, record.error_message,
                            record.submitted_at, record.finished_at)  # fmt: skip
            update = JobUpdate(history=(*record.history, ended), error_type=None, error_message=None, outputs=(),
                               finished_at=None, queue_position=None, request_id=None, status_url=None,
                               response_url=None, cancel_url=None)  # fmt: skip
            done = move(ctx, batch, record, Move.REQUEUE, update)
        if done.applied is not None:
            requeued.append(record.job.id)
    if requeued:
        ctx.ledger.admit(batch_id)
    return requeued


def resume_batch(ctx: Context, batch_id: str, owners_gone: bool = False) -> int:
    """Make the next step of every job that holds a slot due now, and fill free slots; how many it set.

    A step a live worker runs now is left to it, unless `owners_gone` (the
    run that held them is known to be dead, e.g. a rerun of `wan-batch run`
    into its folder): then every step is given out again. Jobs at fal are
    polled again, never submitted again; a job caught mid-submit is looked
    for in fal's request history by its step.
    """
    job_ids = ctx.ledger.job_ids(batch_id, ACTIVE)
    timers = [Timer.step(batch_id, job_id) for job_id in job_ids]
    if owners_gone:
        ctx.timers.forget(timers)
    count = ctx.timers.schedule(timers, ctx.clock())
    ctx.ledger.admit(batch_id)
    return count


def sweep(ctx: Context, stale_after_s: float) -> dict[str, int]:
    """A safety net for unfinished batches: a job with a step, unchanged for `stale_after_s`, without a timer gets one.

    Every such job has a timer (they are set in the same step as its
    status), so this finds none unless something went wrong; it reads only
    the index by last update. Returns how many it gave back per batch.
    """
    found: dict[str, int] = {}
    before = ctx.clock() - stale_after_s
    for info, counts in list_batches(ctx.ledger):
        if info.state == "done" or not any(counts[s] for s in ACTIVE):
            continue
        stale = ctx.ledger.job_ids(info.id, ACTIVE, changed_before=before)
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



#: Fields whose values may be local image paths, which an export makes absolute (it may be read elsewhere).
_IMAGE_FIELDS = ("image_url", "image_urls")


def export_rows(ledger: Ledger, batch_id: str, statuses: Iterable[JobStatus]) -> list[dict[str, Any]]:
    """The jobs of the batch in `statuses` as manifest rows (id, endpoint, input, `_` columns), in manifest order.

    A local image path is made absolute, against the batch's manifest folder, so the rows validate wherever
    they are written. Reads every job of the batch.
    """
    info = ledger.batch(batch_id)
    if info is None:
        return []
    wanted, folder = set(statuses), Path(info.manifest).parent
    rows = []
    for record in ledger.records(batch_id):
        if record.status in wanted:
            job = record.job
            values = {name: _absolute(value, folder) if name in _IMAGE_FIELDS else value
                      for name, value in job.input.items()}  # fmt: skip
            confirmed: dict[str, Any] = {} if job.endpoint in KNOWN_ENDPOINTS else {"pass_through": True}
            rows.append({"id": job.id, "endpoint": job.endpoint, **confirmed, **values, **job.meta})
    return rows


def _absolute(value: Any, folder: Path) -> Any:
    if isinstance(value, list):
        return [_absolute(item, folder) for item in value]
    if isinstance(value, str) and not re.match(r"^(https?|data):", value, re.IGNORECASE):
        return str((folder / value).resolve())
    return value
