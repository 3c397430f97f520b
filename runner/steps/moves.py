"""Applying the lifecycle: a move planned by `jobs.lifecycle`, the files it leaves, and the decisions of `decide`.

Everything that changes a job goes through `move`: it plans the move (pure),
writes the sidecar of a job that ends before the move makes it final (so a
kill in between never leaves a final job without one), and has the ledger
apply it atomically to the revision the caller read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from jobs.decisions import Call, CallFailed, Decision, GiveUp, Reconcile, RetryLater, Seen, SubmitAgain, decide
from jobs.errors import AuthError, QueueAPIError, ResultNotReadyError, SubmitUnconfirmedError
from jobs.lifecycle import JobUpdate, Move, plan, refunded
from jobs.record import Attempt, JobRecord
from jobs.report import brief
from jobs.status import JobStatus
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Applied, OverBudget
from runner.steps.context import Context
from runner.steps.folder import BatchFolder

log = logging.getLogger(__name__)
_LOST = {Call.STATUS: "request_lost", Call.RESULT: "result_lost"}


@dataclass(frozen=True)
class Outcome:
    """What a step did."""

    applied: Applied | None = None
    #: The job's next step is due now and this worker runs it at once, still holding its timer.
    inline: bool = False
    #: The move was refused: its charge would pass the batch's cost cap.
    over_budget: OverBudget | None = None

    @property
    def admitted(self) -> list[str]:
        """Jobs that the slot this step freed admitted: their submits are due now."""
        return [] if self.applied is None else self.applied.admitted


def move(
    ctx: Context,
    batch: BatchInfo,
    record: JobRecord,
    what: Move,
    update: JobUpdate,
    next_in_s: float = 0.0,
    mark: str = "",
    tally: str = "",
) -> Outcome:
    """Apply `what` to `record` (as the caller read it); the job's next step, if any, is due in `next_in_s`.

    With `mark` (the claim of the worker that runs this step), the next step
    is due now and stays with that worker: it runs it at once (`inline`).
    An Outcome with no `applied` means the job moved on meanwhile: the caller does nothing more (unless it says
    `over_budget`: the move was refused for the batch's cost cap, and the job is as the caller read it).
    `tally` counts the move in the batch's tallies (how a cancel ended), atomically with it.
    """
    now = ctx.clock()
    planned = plan(record, what, update, now)
    if planned.target.is_final:
        BatchFolder(Path(batch.folder)).write_sidecar(planned.record)
    lease_until = now + ctx.settings.timers.lease_s
    applied = ctx.ledger.apply(batch.id, planned, now + next_in_s, mark, lease_until if mark else 0.0, tally)
    if isinstance(applied, OverBudget):
        return Outcome(over_budget=applied)
    if applied is None:
        if planned.target.is_final:
            _rewrite_sidecar(ctx, batch, record.job.id)
        return Outcome()
    ctx.metrics.moved(what, applied.record)
    if what is Move.FAIL:  # the run's summary lists failures; this is for worker logs
        log.info("job %s failed: %s: %s", record.job.id, applied.record.error_type, applied.record.error_message)
    return Outcome(applied, inline=bool(mark) and planned.step is not None)


def apply_decision(ctx: Context, batch: BatchInfo, record: JobRecord, decision: Decision) -> Outcome:
    """Carry out what `decide` said: the same call later, a new attempt, or the end of the job."""
    if isinstance(decision, RetryLater):
        counted = JobUpdate(call_failures=record.call_failures + 1) if decision.budget == "call_failures" else \
            JobUpdate(step_errors=record.step_errors + 1)  # fmt: skip
        return move(ctx, batch, record, Move.RETRY, counted, next_in_s=decision.delay_s)
    if isinstance(decision, SubmitAgain):
        return submit_again(ctx, batch, record, decision)
    if isinstance(decision, Reconcile):
        return unconfirm(ctx, batch, record, decision.message)
    return give_up(ctx, batch, record, decision)


def decide_and_apply(ctx: Context, batch: BatchInfo, record: JobRecord, seen: Seen) -> Outcome:
    reconcilable = can_reconcile(ctx, batch)
    decision = decide(seen, record, batch.max_attempts, ctx.settings.limits, ctx.rng.random(), reconcilable)
    return apply_decision(ctx, batch, record, decision)


def can_reconcile(ctx: Context, batch: BatchInfo) -> bool:
    """Whether this worker can look for the batch's lost submits in fal's request history."""
    try:
        return ctx.history_client(batch) is not None
    except AuthError:
        return False


def unconfirm(ctx: Context, batch: BatchInfo, record: JobRecord, message: str) -> Outcome:
    """A submit whose answer was lost: the job leaves its slot and waits while fal's history is searched.

    It reached fal, if at all, by now, and by the time its call would have timed out (its worker died mid-call).
    """
    now, sent_at = ctx.clock(), record.sent_at
    timed_out = None if sent_at is None else sent_at + ctx.queue_client(batch).submit_timeout_s
    update = JobUpdate(last_log=brief(message, 500), queue_position=None,
                       reached_by=now if timed_out is None else min(now, timed_out))  # fmt: skip
    done = move(ctx, batch, record, Move.UNCONFIRM, update, next_in_s=ctx.settings.reconcile.first_look_s)
    if done.applied is not None:
        log.warning("job %s: %s", record.job.id, message)
    return done


def submit_again(ctx: Context, batch: BatchInfo, record: JobRecord, again: SubmitAgain) -> Outcome:
    """A failed attempt (fal has nothing running for it): the job is submitted again, keeping its history."""
    ended = Attempt(record.attempts, record.request_id, again.error_type, again.message, record.submitted_at,
                    ctx.clock())  # fmt: skip
    update = JobUpdate(
        history=(*record.history, ended), request_id=None, status_url=None, response_url=None, cancel_url=None,
        error_type=again.error_type, error_message=again.message, queue_position=None,
    )  # fmt: skip
    done = move(ctx, batch, record, Move.RESUBMIT, refunded(update, record) if again.unbilled else update)
    if done.applied is not None:
        log.info("job %s attempt %d failed (%s); submitting again", record.job.id, record.attempts, again.error_type)
    return done


def give_up(ctx: Context, batch: BatchInfo, record: JobRecord, why: GiveUp) -> Outcome:
    """The job ends FAILED; a request of it that may still run at fal is cancelled there. An attempt fal does not
    bill (a submit it refused, a result it failed itself) is not charged."""
    update = JobUpdate(error_type=why.error_type, error_message=brief(why.message, 500), finished_at=ctx.clock())
    refused = why.unbilled and record.status is JobStatus.SUBMITTING
    if why.unbilled and not refused:
        update = refunded(update, record)
    done = move(ctx, batch, record, Move.REFUSED if refused else Move.FAIL, update)
    if done.applied is not None and why.cancel_at_fal and record.cancel_url:
        cancel_quietly(ctx, batch, record.cancel_url)
    return done


def cancel_quietly(ctx: Context, batch: BatchInfo, cancel_url: str) -> None:
    """Ask fal to cancel a request nobody follows any more; a failure is only logged."""
    try:
        ctx.queue_client(batch).cancel(cancel_url)
    except Exception as exc:  # best effort, after the job's move: it must not undo or repeat that
        log.warning("could not cancel %s: %s: %s", cancel_url, type(exc).__name__, exc)


def call_failed(call: Call, exc: QueueAPIError) -> CallFailed:
    """What a step saw of a call that raised one of the queue client's classified errors."""
    error_type = error_type_of(exc)
    if exc.status_code == 404 and not exc.error_type and call in _LOST:
        error_type = _LOST[call]  # fal no longer knows the request, or no longer has its result
    return CallFailed(
        call, error_type, str(exc), transient=exc.retryable, status_code=exc.status_code,
        job_retryable=exc.job_retryable, retry_after_s=exc.retry_after_s,
        unconfirmed=isinstance(exc, SubmitUnconfirmedError), not_ready=isinstance(exc, ResultNotReadyError),
    )  # fmt: skip


def error_type_of(exc: QueueAPIError) -> str:
    if exc.error_type:
        return exc.error_type
    if exc.status_code is None:
        return "transport"
    return "validation" if exc.status_code == 422 else f"http_{exc.status_code}"


def _rewrite_sidecar(ctx: Context, batch: BatchInfo, job_id: str) -> None:
    """The move that would have ended the job lost to another: its sidecar shows what the ledger holds."""
    folder = BatchFolder(Path(batch.folder))
    current = ctx.ledger.record(batch.id, job_id)
    if current is None:
        return  # purged meanwhile
    if current.status.is_final:
        folder.write_sidecar(current)
    else:  # a job that has not ended has no sidecar yet
        folder.sidecar_path(current.job.file_stem).unlink(missing_ok=True)

