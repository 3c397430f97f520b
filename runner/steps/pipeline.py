"""What happens to a job, one step at a time: load it, make the one call to fal, apply what follows.

The step due for a job follows from its status (`jobs.lifecycle.STEP_OF`):
submit, reconcile (look for a lost submit in fal's request history,
`runner.steps.reconcile`), poll or collect; in a cancelled batch, the poll
step cancels the job at fal. `run_job_step` runs it for a worker that holds
the job's timer; what a failed call or an unexpected error leads to is
`jobs.decisions.decide`'s, applied by `runner.steps.moves`. Nothing here
sleeps: a wait is the due time of the job's next step. A step whose job
moved on meanwhile (its move is refused) does nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from jobs.backoff import Backoff, backoff_delay_s
from jobs.decisions import UNCONFIRMED_ADVICE, Call, CallFailed, GiveUp, StepCrashed
from jobs.errors import DownloadError, LocalImageError, PermanentQueueError, QueueAPIError, UploadExpiredError
from jobs.lifecycle import STEP_OF, JobUpdate, Move, Step
from jobs.polling import PollState, next_poll_delay_s, typical_run_s
from jobs.pricing import shown_usd, usd
from jobs.reconcile import input_digest, start_timeout_s
from jobs.record import JobRecord
from jobs.status import JobStatus
from jobs.window import next_window
from runner.fal.local_images import inline_local_images, local_refs, uploaded_local_images
from runner.fal.queue_api import QueueStatus, Submission
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import OverBudget
from runner.ledger.timers import Timer
from runner.ledger.uploads import READ_MARGIN_S, BatchImages, Uploads
from runner.ledger.window import adjust_window
from runner.steps.collect import save_outputs
from runner.steps.context import Context
from runner.steps.folder import BatchFolder
from runner.steps.moves import (
    Outcome,
    call_failed,
    can_reconcile,
    cancel_quietly,
    decide_and_apply,
    give_up,
    move,
    unconfirm,
)
from runner.steps.reconcile import adopt, reconcile_job

log = logging.getLogger(__name__)
S = JobStatus
#: A poll that finds the request COMPLETED collects it at once; nothing else runs inline.
_MOST_INLINE_STEPS = 2
#: Storing a request fal accepted is tried this often through an outage of Redis (each try is itself
#: retried by the Redis client for about 20 s), with these waits between: about 10 minutes in all.
_STORE_TRIES = 12
_STORE_BACKOFF = Backoff(base_s=1.0, cap_s=30.0, jitter=0.0)

StepFunction = Callable[[Context, BatchInfo, JobRecord, str], Outcome]


def run_job_step(ctx: Context, batch_id: str, job_id: str, mark: str) -> list[str]:
    """Run the step due for the job, whose timer this worker holds as `mark`; the job ids it admitted.

    A step that blows up is an outcome like any other (`StepCrashed`): it
    runs again after a backoff, on its own budget. If the ledger cannot
    even record that (Redis is gone), the exception propagates and the
    timer comes back when its lease lapses.
    """
    admitted: list[str] = []
    for _ in range(_MOST_INLINE_STEPS):
        batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
        if batch is None or record is None or record.status not in STEP_OF:
            break
        try:
            outcome = STEPS[STEP_OF[record.status]](ctx, batch, record, mark)
        except Exception as exc:
            log.exception("the %s step of job %s of batch %s failed unexpectedly", STEP_OF[record.status].value,
                          job_id, batch_id)  # fmt: skip
            now = ctx.ledger.record(batch_id, job_id)  # as the step left it (it may have sent the job)
            if now is None or now.status not in STEP_OF:
                break
            outcome = decide_and_apply(ctx, batch, now, StepCrashed(f"{type(exc).__name__}: {exc}"[:400]))
        admitted += outcome.admitted
        if not outcome.inline:
            break
    return admitted


def submit_job(ctx: Context, batch: BatchInfo, record: JobRecord, mark: str) -> Outcome:
    """Send an admitted job to fal and store its request_id before anything else happens to it."""
    unsent = _not_to_send(ctx, batch, record)
    if unsent is not None:
        return unsent
    cost = batch.attempt_cost_nusd(record.job)
    beyond = _beyond_cap(ctx, batch, cost)
    if beyond is not None:  # early, before its images are read; the charge at SEND stays the authority
        return give_up(ctx, batch, record, GiveUp("budget_exceeded", beyond))
    try:
        body = _body(ctx, batch, record)
    except LocalImageError as exc:
        kind = "upload_expired" if isinstance(exc, UploadExpiredError) else "input_image"
        return give_up(ctx, batch, record, GiveUp(kind, str(exc)))
    client = ctx.queue_client(batch)  # all that can fail before sending, fails before SUBMITTING
    # Read now what the first poll's delay needs: once fal has answered, storing its request_id comes first.
    learned = (_typical_run_s(ctx, batch.id), _concurrency(ctx, batch.id))
    # What was sent, and when, is stored before it leaves: if its answer is lost, fal's history is searched for it.
    what = JobUpdate(attempts=record.attempts + 1, sent_at=ctx.clock(), sent_digest=input_digest(body),
                     sent_start_timeout_s=start_timeout_s(batch.priority, batch.start_timeout_s),
                     sent_webhook=batch.webhook_url is not None, sent_cost_nusd=cost or 0)
    sending = move(ctx, batch, record, Move.SEND, what, mark=mark)
    if sending.over_budget is not None:
        why = over_budget_message(cost or 0, sending.over_budget)
        return give_up(ctx, batch, record, GiveUp("budget_exceeded", why))
    if sending.applied is None:
        return sending  # cancelled meanwhile
    sent = sending.applied.record
    try:
        submission = client.submit(record.job.endpoint, body, batch.webhook_url if sent.sent_webhook else None)
    except QueueAPIError as exc:
        seen = call_failed(Call.SUBMIT, exc)
    except Exception as exc:  # the request may have left: never send it again
        log.exception("submit of job %s failed unexpectedly", record.job.id)
        seen = CallFailed(Call.SUBMIT, "submit_unconfirmed", f"{type(exc).__name__}: {exc}"[:400], unconfirmed=True)
    else:
        return _accepted(ctx, batch, sent, submission, learned)
    return _submit_failed(ctx, batch, sent, seen, mark)


def _submit_failed(ctx: Context, batch: BatchInfo, sent: JobRecord, seen: CallFailed, mark: str) -> Outcome:
    """What follows a submit call that failed: the same call later, a search of fal's history, or the end."""
    if seen.status_code == 404:  # no such app: the batch's other jobs of this endpoint are not sent
        message = f"fal has no app {sent.job.endpoint!r} (check the endpoint id): {seen.message}"
        ctx.ledger.note_unknown_endpoint(batch.id, sent.job.endpoint, message)
        return give_up(ctx, batch, sent, GiveUp("unknown_endpoint", message, unbilled=True))
    if seen.transient and not seen.unconfirmed:  # nothing left: back to ADMITTED, the same call later
        back = move(ctx, batch, sent, Move.UNSENT, JobUpdate(attempts=sent.attempts - 1), mark=mark)
        if back.applied is None:
            return back
        sent = back.applied.record
    return decide_and_apply(ctx, batch, sent, seen)


def _beyond_cap(ctx: Context, batch: BatchInfo, cost: int | None) -> str | None:
    """Why an attempt costing `cost` is not to be sent under the batch's cost cap, or None (no cap, or it fits)."""
    cap = batch.max_cost_nusd
    if cap is None:
        return None
    if cost is None:
        return ("not sent: its cost cannot be estimated (its endpoint has no price, or its input does not say how"
                " many units it makes), so the batch's cost cap could not hold; give --price and retry it")
    spent = ctx.ledger.spent_nusd(batch.id)
    return None if spent + cost <= cap else over_budget_message(cost, OverBudget(spent, cap))


def over_budget_message(cost_nusd: int, over: OverBudget) -> str:
    """Why a job was not sent: the batch's cost cap, with what it would cost and what was spent."""
    return (f"not sent: its estimated cost ({shown_usd(usd(cost_nusd))}) would take the batch past its cost cap of"
            f" {shown_usd(usd(over.cap_nusd))} ({shown_usd(usd(over.spent_nusd))} charged so far); raise the cap"
            " (--max-cost) and retry it")


def _body(ctx: Context, batch: BatchInfo, record: JobRecord) -> dict[str, Any]:
    """What is sent: the job's input, its local images as URLs of their uploads, or inlined as data URIs."""
    if batch.images == "upload":
        refs = local_refs([record.job])
        uploads = Uploads(ctx.ledger.redis, ctx.ledger.keys, batch.storage_url or "")
        # fal reads them when the request starts: up to its start deadline from now
        read_by = ctx.clock() + start_timeout_s(batch.priority, batch.start_timeout_s) + READ_MARGIN_S
        urls = BatchImages(ctx.ledger.redis, ctx.ledger.keys).urls(batch.id, refs, uploads, read_by)
        return uploaded_local_images(record.job, urls)
    # The manifest's resolved folder: a worker elsewhere may run in another directory.
    return inline_local_images(record.job, Path(batch.manifest).parent, batch.max_image_bytes)


def _not_to_send(ctx: Context, batch: BatchInfo, record: JobRecord) -> Outcome | None:
    """What happens instead of a submit: its worker died mid-call, the batch is cancelled, or fal has no app
    for the endpoint (it said so to an earlier job of the batch); None when the job is to be sent."""
    if record.status is S.SUBMITTING:
        return _cut_off(ctx, batch, record)
    if batch.state == "cancelled":
        update = JobUpdate(error_type="cancelled", error_message="cancelled by the user before it was sent",
                           finished_at=ctx.clock())  # fmt: skip
        # One fal failed and that comes back to be sent again was counted when fal had finished it.
        return move(ctx, batch, record, Move.CANCEL, update, tally="" if record.attempts else "never_sent")
    unknown = ctx.ledger.unknown_endpoint(batch.id, record.job.endpoint)
    if unknown is not None:
        return give_up(ctx, batch, record, GiveUp("unknown_endpoint", f"not sent: {unknown}"))
    return None


def _cut_off(ctx: Context, batch: BatchInfo, record: JobRecord) -> Outcome:
    message = "its submit was cut off in flight"
    if can_reconcile(ctx, batch):
        return unconfirm(ctx, batch, record, f"{message}; looking for it in fal's request history")
    return give_up(ctx, batch, record, GiveUp("submit_unconfirmed", f"{message}; {UNCONFIRMED_ADVICE}"))


def _accepted(
    ctx: Context, batch: BatchInfo, sent: JobRecord, submission: Submission, learned: tuple[float | None, int]
) -> Outcome:
    """Store the request (the move that makes the job QUEUED) and set its first poll.

    The request is paid for: a Redis that does not answer is waited for,
    with the request_id in the log meanwhile, rather than the request lost.
    """
    state = PollState(0, 0.0, learned[0], submission.queue_position, learned[1], webhooks=sent.sent_webhook)
    update = JobUpdate(
        request_id=submission.request_id, status_url=submission.status_url, response_url=submission.response_url,
        cancel_url=submission.cancel_url, submitted_at=ctx.clock(), queue_position=submission.queue_position,
        started_at=None, completed_at=None, last_queued_at=None,
    )  # fmt: skip
    delay_s = next_poll_delay_s(state, ctx.settings.poll, ctx.rng.random())
    for outage in range(1, _STORE_TRIES + 1):
        try:
            stored = move(ctx, batch, sent, Move.ACCEPT, update, delay_s)
            break
        except (redis.ConnectionError, redis.TimeoutError):
            if outage == _STORE_TRIES:
                log.error("job %s: fal accepted request %s, and Redis never answered to store it", sent.job.id,
                          submission.request_id)  # fmt: skip
                raise
            log.warning("job %s: fal accepted request %s; Redis does not answer, storing it again", sent.job.id,
                        submission.request_id)  # fmt: skip
            time.sleep(backoff_delay_s(outage, _STORE_BACKOFF, 0.0))  # waiting for Redis, never for fal
    if stored.applied is not None:
        if sent.sent_webhook and ctx.ledger.redis.delete(ctx.ledger.keys.early_webhook(submission.request_id)):
            ctx.timers.schedule([Timer.step(batch.id, sent.job.id)], ctx.clock())  # it ended before it was stored
        _learn_window(ctx, batch, submission.queue_position)
        return stored
    now = ctx.ledger.record(batch.id, sent.job.id)
    if now is not None and now.status is S.UNCONFIRMED and now.sent_at == sent.sent_at:
        # Another worker took the step over and is looking for this very submit: its answer is here.
        log.warning("job %s: request %s answered late; following it", sent.job.id, submission.request_id)
        return adopt(ctx, batch, now, submission.request_id, submission)
    log.warning("job %s: request %s came after the job moved on; cancelling it", sent.job.id, submission.request_id)
    cancel_quietly(ctx, batch, submission.cancel_url)
    return stored


def cancel_at_fal(ctx: Context, batch: BatchInfo, record: JobRecord, mark: str = "") -> Outcome:
    """Cancel the job's request at fal. It ends CANCELLED only when fal says so; one fal had already finished
    is paid for, so it goes on to be collected. Raises QueueAPIError when fal did not answer."""
    answer = ctx.queue_client(batch).cancel(_url(record.cancel_url))
    now = ctx.clock()
    if answer == "ALREADY_COMPLETED":
        update = JobUpdate(completed_at=now, queue_position=None, last_log="fal had finished it before the cancel")
        return move(ctx, batch, record, Move.COMPLETE, update, mark=mark, tally="finished")
    gone = answer == "NOT_FOUND"
    said = "fal no longer knew its request" if gone else "fal cancelled its request"
    update = JobUpdate(error_type="cancelled", error_message=f"cancelled by the user; {said}", finished_at=now,
                       queue_position=None)  # fmt: skip
    return move(ctx, batch, record, Move.CANCEL, update, tally="gone" if gone else "cancelled_at_fal")


def poll_job(ctx: Context, batch: BatchInfo, record: JobRecord, mark: str) -> Outcome:
    """Ask fal how the job is doing; when it is COMPLETED, collect it at once.

    In a cancelled batch, cancel it at fal instead. A cancel fal does not take
    (a refused credential, an outage that outlasts its budget) never ends the
    job: it is followed to its end and collected, as it is paid for.
    """
    if batch.state == "cancelled":
        try:
            return cancel_at_fal(ctx, batch, record, mark)
        except QueueAPIError as exc:
            seen = call_failed(Call.CANCEL, exc)
            if seen.transient and record.call_failures < ctx.settings.limits.unreachable_calls:
                return decide_and_apply(ctx, batch, record, seen)
            log.warning("job %s: fal did not take its cancel (%s); following it to its end instead", record.job.id,
                        exc)  # fmt: skip
    try:
        status = ctx.queue_client(batch).status(_url(record.status_url))
    except QueueAPIError as exc:
        return decide_and_apply(ctx, batch, record, call_failed(Call.STATUS, exc))
    now, polls = ctx.clock(), record.polls + 1
    if status.status == "COMPLETED":
        if record.sent_webhook:  # the safety net caught it: its webhook was lost, or the receiver is not reachable
            ctx.metrics.count_later("webhooks", {"outcome": "missed"})
        inference = (status.metrics or {}).get("inference_time")
        inference_s = float(inference) if isinstance(inference, int | float) else None
        # Never seen running (it ran between two polls): it started when its run began, after its submit.
        began = now - inference_s if inference_s is not None else record.last_queued_at or record.submitted_at or now
        started_at = record.started_at or max(began, record.submitted_at or began)
        update = JobUpdate(completed_at=now, polls=polls, queue_position=None, inference_s=inference_s,
                           started_at=started_at)  # fmt: skip
        finished = "finished" if batch.state == "cancelled" else ""  # it ran to its end although cancelled
        return move(ctx, batch, record, Move.COMPLETE, update, mark=mark, tally=finished)
    if status.status == "IN_QUEUE":
        update = JobUpdate(queue_position=status.queue_position, last_queued_at=now, polls=polls)
        return move(ctx, batch, record, Move.SEEN_QUEUED, update, _next_poll_s(ctx, batch, record, status, None))
    # It started between the last IN_QUEUE answer and now; the earliest bound makes polls err early.
    started_at = record.started_at or record.last_queued_at or record.submitted_at or now
    last_log = status.logs[-1].message[:500] if status.logs else record.last_log
    update = JobUpdate(started_at=started_at, queue_position=None, last_log=last_log, polls=polls)
    return move(ctx, batch, record, Move.SEEN_RUNNING, update, _next_poll_s(ctx, batch, record, status, started_at))


def collect_job(ctx: Context, batch: BatchInfo, record: JobRecord, mark: str) -> Outcome:
    """Fetch the result and download every output file now: fal deletes them within minutes."""
    folder = BatchFolder(Path(batch.folder))
    folder.remove_leftovers(record.job.file_stem)  # of a worker that died here: this one holds the job now
    try:
        data = ctx.queue_client(batch).result(_url(record.response_url))
    except QueueAPIError as exc:  # a result not ready although COMPLETED is fetched again, backing off
        return decide_and_apply(ctx, batch, record, call_failed(Call.RESULT, exc))
    try:
        outputs = save_outputs(ctx.http, batch, record, data, ctx.settings.max_output_bytes)
    except DownloadError as exc:
        seen = CallFailed(Call.DOWNLOAD, "download_failed", str(exc), transient=exc.retryable)
        return decide_and_apply(ctx, batch, record, seen)
    except ValueError as exc:  # the result is not an output fal's models give
        return give_up(ctx, batch, record, GiveUp("invalid_output", str(exc)))
    if record.run_s is not None:
        ctx.ledger.note_run_time(batch.id, record.run_s)
    done = JobUpdate(outputs=tuple(outputs), finished_at=ctx.clock(), error_type=None, error_message=None)
    return move(ctx, batch, record, Move.SUCCEED, done)


def _next_poll_s(
    ctx: Context, batch: BatchInfo, record: JobRecord, status: QueueStatus, started_at: float | None
) -> float:
    queued = status.queue_position if status.status == "IN_QUEUE" else None
    since_start_s = ctx.clock() - (started_at or record.submitted_at or ctx.clock())
    state = PollState(record.polls + 1, since_start_s, _typical_run_s(ctx, batch.id), queued,
                      _concurrency(ctx, batch.id), webhooks=record.sent_webhook)  # fmt: skip
    return next_poll_delay_s(state, ctx.settings.poll, ctx.rng.random())


def _learn_window(ctx: Context, batch: BatchInfo, ahead: int | None) -> None:
    """An automatic window follows what fal's answer to a submit says (`jobs.window`); one that grew admits now.

    Best effort: the request is stored already, and a window not moved now moves at the next answer.
    """
    if not batch.window_auto:
        return
    try:
        counts = ctx.ledger.counts(batch.id)
        in_flight = ctx.ledger.in_flight(batch.id)
        # Ours that may wait before it: those fal has and no poll saw run, and those being sent (not this one).
        ours = max(0, counts[S.QUEUED] + counts[S.SUBMITTING] - 1)
        moved = adjust_window(ctx.ledger, batch.id, lambda was, cap: next_window(was, cap, in_flight, ahead, ours))
        if moved is not None and moved[1] > moved[0] and ctx.ledger.admit(batch.id):
            ctx.timers.nudge()  # their submits are due now: every dispatcher looks
    except redis.RedisError as exc:
        log.warning("batch %s: its window was not moved (%s)", batch.id, type(exc).__name__)


def _typical_run_s(ctx: Context, batch_id: str) -> float | None:
    return typical_run_s(ctx.ledger.recent_run_times(batch_id))


def _concurrency(ctx: Context, batch_id: str) -> int:
    # fal runs at most the batch's in-flight jobs at once: an upper bound, so polls err early.
    return max(1, ctx.ledger.in_flight(batch_id))


def _url(value: str | None) -> str:
    if not value:
        raise PermanentQueueError("the job has no request URL stored", error_type="ledger")
    return value


STEPS: dict[Step, StepFunction] = {
    Step.SUBMIT: submit_job, Step.RECONCILE: reconcile_job, Step.POLL: poll_job, Step.COLLECT: collect_job,
}
