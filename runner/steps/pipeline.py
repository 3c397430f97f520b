"""What happens to a job, one step at a time: plain functions the Celery tasks call.

Each step loads the job from the ledger, makes at most one kind of call to
fal, records the outcome atomically, and returns the follow-ups to schedule
(a poll in N seconds, a submit of the next admitted job). Nothing here
sleeps: waiting is a follow-up's delay. Every step is safe to run twice: a
step whose job has moved on, or whose poll token is stale, does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from jobs.errors import (
    DownloadError,
    LocalImageError,
    PermanentQueueError,
    QueueAPIError,
    ResultNotReadyError,
    SubmitUnconfirmedError,
    TransientQueueError,
)
from jobs.polling import PollState, next_poll_delay_s, typical_run_s
from jobs.record import Attempt, JobRecord
from jobs.status import JobStatus
from runner.fal.local_images import inline_local_images
from runner.fal.queue_api import QueueStatus, Submission
from runner.fal.retry import retry_delay_s
from runner.ledger.store import BatchInfo
from runner.steps.collect import save_outputs
from runner.steps.context import Context
from runner.steps.folder import BatchFolder

log = logging.getLogger(__name__)
S = JobStatus


@dataclass(frozen=True)
class FollowUp:
    """A step to schedule: `task` for `job_id` after `delay_s`; "end" follows the last job of a batch."""

    task: Literal["submit", "poll", "collect", "end"]
    job_id: str
    delay_s: float = 0.0
    #: The poll chain it belongs to (polls and collects).
    token: int = 0
    #: Transient failures of this call so far.
    tries: int = 0


def admit_next(ctx: Context, batch_id: str) -> list[FollowUp]:
    """Submits for the jobs that free slots of the in-flight window now admit."""
    return [FollowUp("submit", job_id) for job_id in ctx.ledger.admit(batch_id)]


def resume_batch(ctx: Context, batch_id: str, stale_after_s: float = 0.0, lost_after_s: float = 0.0) -> list[FollowUp]:
    """Follow-ups that set unfinished jobs moving again after lost messages, a crash, a kill or a Ctrl-C.

    Only jobs untouched for `stale_after_s` are taken (0: all). Jobs with a
    request_id are polled again under a new poll token (so any older chain
    stops), never submitted again. A job caught mid-submit for `lost_after_s`
    (0: its worker is known to be gone) may have reached fal: it fails as
    `submit_unconfirmed` rather than risk paying twice.
    """
    batch = ctx.ledger.batch(batch_id)
    if batch is None:
        return []
    now = ctx.clock()
    follow: list[FollowUp] = []
    for record in ctx.ledger.records(batch_id):
        idle_s = now - (record.updated_at or 0.0)
        if record.status.is_final or record.status is S.WAITING or idle_s < stale_after_s:
            continue
        follow += _resume_job(ctx, batch, record, owner_gone=idle_s >= lost_after_s)
    return follow + admit_next(ctx, batch_id)


def _resume_job(ctx: Context, batch: BatchInfo, record: JobRecord, owner_gone: bool) -> list[FollowUp]:
    job_id = record.job.id
    if record.status is S.ADMITTED:
        return [FollowUp("submit", job_id)]
    if record.status is S.SUBMITTING:
        if not owner_gone:
            return []
        message = "its submit was cut off in flight; fal may have queued it, so it is not sent again"
        return _finish(ctx, batch, record, S.FAILED, "submit_unconfirmed", message)
    if record.status is S.COLLECTING and owner_gone:  # no other worker is downloading it
        BatchFolder(Path(batch.folder)).remove_leftovers(job_id)
    task: Literal["poll", "collect"] = "collect" if record.status is S.COLLECTING else "poll"
    return [FollowUp(task, job_id, token=ctx.ledger.next_poll_token(batch.id, job_id))]


def cancel_job(ctx: Context, batch_id: str, job_id: str) -> list[FollowUp]:
    """Cancel a job: at fal if it has a request there; it ends CANCELLED with whatever it had saved.

    A job being collected is left to finish (it already ran; its files are free).
    """
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or record.status.is_final or record.status is S.COLLECTING:
        return []
    answer = "never sent"
    if record.status.has_request and record.cancel_url:
        try:
            answer = ctx.queue_client(batch).cancel(record.cancel_url)
        except QueueAPIError as exc:
            answer = f"cancel failed: {exc}"
    return _finish(ctx, batch, record, S.CANCELLED, "cancelled", f"cancelled by the user (fal: {answer})")


def submit_job(ctx: Context, batch_id: str, job_id: str, tries: int = 0) -> list[FollowUp]:
    """Send an admitted job to fal and store its request_id before anything else."""
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or record.status is not S.ADMITTED:
        return []
    if batch.state == "cancelled":
        return _finish(ctx, batch, record, S.CANCELLED, "cancelled", "the batch was cancelled before it was sent")
    try:
        # The manifest's resolved folder: a worker elsewhere may run in another directory.
        body = inline_local_images(record.job, Path(batch.manifest).parent, batch.max_image_bytes)
    except LocalImageError as exc:
        return _finish(ctx, batch, record, S.FAILED, "input_image", str(exc))
    client = ctx.queue_client(batch)  # all that can fail before sending, fails before SUBMITTING
    attempt = record.attempts + 1
    if not ctx.ledger.move(batch_id, job_id, [S.ADMITTED], S.SUBMITTING, attempts=attempt):
        return []  # another worker took it
    owned = replace(record, status=S.SUBMITTING, attempts=attempt)
    try:
        submission = client.submit(record.job.endpoint, body)
    except SubmitUnconfirmedError as exc:
        return _finish(ctx, batch, owned, S.FAILED, "submit_unconfirmed", f"{exc}; it is not sent again")
    except TransientQueueError as exc:
        ctx.ledger.move(batch_id, job_id, [S.SUBMITTING], S.ADMITTED, attempts=record.attempts)  # never sent
        follow = _again(ctx, FollowUp("submit", job_id, tries=tries + 1), exc, ctx.settings.max_call_retries)
        return follow or _finish(ctx, batch, record, S.FAILED, exc.error_type or "transport", str(exc))
    except QueueAPIError as exc:
        return _finish(ctx, batch, owned, S.FAILED, _error_type(exc), str(exc))
    except Exception as exc:  # the request may have left: never send it again
        log.exception("submit of job %s failed unexpectedly", job_id)
        message = f"{type(exc).__name__}: {exc}; fal may have queued it, so it is not sent again"
        return _finish(ctx, batch, owned, S.FAILED, "submit_unconfirmed", message[:500])
    return _submitted(ctx, batch, owned, submission)


def _submitted(ctx: Context, batch: BatchInfo, owned: JobRecord, submission: Submission) -> list[FollowUp]:
    """Store the request (the step that makes the job QUEUED) and schedule its first poll."""
    job_id = owned.job.id
    stored = ctx.ledger.move(
        batch.id, job_id, [S.SUBMITTING], S.QUEUED, expect={"request_id": None},
        request_id=submission.request_id, status_url=submission.status_url,
        response_url=submission.response_url, cancel_url=submission.cancel_url, submitted_at=ctx.clock(),
        queue_position=submission.queue_position, started_at=None, completed_at=None, last_queued_at=None,
    )  # fmt: skip
    if not stored:  # written off meanwhile (a resume took it for lost): no request nobody follows
        log.warning("job %s: request %s came after it was written off; cancelling", job_id, submission.request_id)
        _cancel_quietly(ctx, batch, submission.cancel_url)
        return []
    token = ctx.ledger.next_poll_token(batch.id, job_id)
    state = PollState(0, 0.0, _typical_run_s(ctx, batch.id), submission.queue_position, _concurrency(ctx, batch.id))
    return [FollowUp("poll", job_id, next_poll_delay_s(state, ctx.settings.poll, ctx.rng.random()), token)]


def poll_job(ctx: Context, batch_id: str, job_id: str, token: int, tries: int = 0) -> list[FollowUp]:
    """Ask fal how the job is doing; collect it at once when it is COMPLETED."""
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or ctx.ledger.poll_token(batch_id, job_id) != token:
        return []
    if record.status is S.COLLECTING:  # a poll redelivered after its worker died mid-collect
        return collect_job(ctx, batch_id, job_id, token)
    if record.status not in (S.QUEUED, S.RUNNING):
        return []
    polls = ctx.ledger.count_poll(batch_id, job_id)
    try:
        status = ctx.queue_client(batch).status(_url(record.status_url))
    except TransientQueueError as exc:
        retry = FollowUp("poll", job_id, token=token, tries=tries + 1)
        follow = _again(ctx, retry, exc, ctx.settings.max_unreachable_calls)
        message = f"{exc}; fal may still run it, so it is not submitted again"
        return follow or _finish(ctx, batch, record, S.FAILED, "status_unreachable", message, token)
    except QueueAPIError as exc:
        if exc.status_code == 404:  # fal no longer knows the request: nothing runs, so run it again
            return _retry_or_fail(ctx, batch, record, token, "request_lost", str(exc))
        return _finish(ctx, batch, record, S.FAILED, _error_type(exc), str(exc), token)
    if status.status == "COMPLETED":
        if not _record_completion(ctx, batch_id, record, status, token):
            return []
        return collect_job(ctx, batch_id, job_id, token)
    started_at = _record_progress(ctx, batch_id, record, status, token)
    queued = status.queue_position if status.status == "IN_QUEUE" else None
    since_start_s = ctx.clock() - (started_at or record.submitted_at or ctx.clock())
    state = PollState(polls, since_start_s, _typical_run_s(ctx, batch_id), queued, _concurrency(ctx, batch_id))
    return [FollowUp("poll", job_id, next_poll_delay_s(state, ctx.settings.poll, ctx.rng.random()), token)]


def collect_job(ctx: Context, batch_id: str, job_id: str, token: int, tries: int = 0) -> list[FollowUp]:
    """Fetch the result and download every output file now: fal deletes them within minutes."""
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or record.status is not S.COLLECTING:
        return []
    if ctx.ledger.poll_token(batch_id, job_id) != token:
        return []
    try:
        data = ctx.queue_client(batch).result(_url(record.response_url))
    except ResultNotReadyError:
        # COMPLETED by status but not by result: poll again, backing off so a confused server is not hammered.
        moved = ctx.ledger.move(batch_id, job_id, [S.COLLECTING], S.RUNNING, expect=_seen(record, token))
        delay_s = min(ctx.settings.poll.max_delay_s, ctx.settings.poll.min_delay_s * 2**tries)
        return [FollowUp("poll", job_id, delay_s, token, tries + 1)] if moved else []
    except TransientQueueError as exc:
        retry = FollowUp("collect", job_id, token=token, tries=tries + 1)
        follow = _again(ctx, retry, exc, ctx.settings.max_unreachable_calls)
        return follow or _finish(ctx, batch, record, S.FAILED, "result_unreachable", str(exc), token)
    except QueueAPIError as exc:
        return _result_failed(ctx, batch, record, token, exc)
    return _save(ctx, batch, record, token, tries, data)


def _save(
    ctx: Context, batch: BatchInfo, record: JobRecord, token: int, tries: int, data: dict[str, Any]
) -> list[FollowUp]:
    try:
        outputs = save_outputs(ctx.http, batch, record, data, ctx.settings.max_output_bytes)
    except DownloadError as exc:
        if exc.retryable:
            follow = _again(ctx, FollowUp("collect", record.job.id, token=token, tries=tries + 1), None,
                            ctx.settings.max_call_retries)  # fmt: skip
            return follow or _finish(ctx, batch, record, S.FAILED, "download_failed", str(exc), token)
        return _finish(ctx, batch, record, S.FAILED, "download_failed", str(exc), token)
    except ValueError as exc:  # the result is not an output fal's models give
        return _finish(ctx, batch, record, S.FAILED, "invalid_output", str(exc), token)
    if record.run_s is not None:
        ctx.ledger.note_run_time(batch.id, record.run_s)
    return _finish(ctx, batch, replace(record, outputs=tuple(outputs)), S.SUCCEEDED, None, None, token)


def fail_job(ctx: Context, batch_id: str, job_id: str, error_type: str, message: str) -> list[FollowUp]:
    """End a job that a step could not handle (an unexpected error), whatever its status."""
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or record.status.is_final:
        return []
    return _finish(ctx, batch, record, S.FAILED, error_type, message)


def _result_failed(
    ctx: Context, batch: BatchInfo, record: JobRecord, token: int, exc: QueueAPIError
) -> list[FollowUp]:
    if exc.status_code == 404:  # the result expired or was lost: run it again
        return _retry_or_fail(ctx, batch, record, token, exc.error_type or "result_lost", str(exc))
    status_code = exc.status_code or 0
    if status_code >= 500 and exc.job_retryable is not False:  # a model error or a start timeout
        return _retry_or_fail(ctx, batch, record, token, _error_type(exc), str(exc))
    return _finish(ctx, batch, record, S.FAILED, _error_type(exc), str(exc), token)


def _retry_or_fail(
    ctx: Context, batch: BatchInfo, record: JobRecord, token: int, error_type: str, message: str
) -> list[FollowUp]:
    """A failed attempt (fal has nothing running for it): submit again while attempts remain."""
    if record.attempts >= batch.max_attempts:
        return _finish(ctx, batch, record, S.FAILED, error_type, message, token)
    attempt = Attempt(record.attempts, record.request_id, error_type, message, record.submitted_at, ctx.clock())
    history = replace(record, history=(*record.history, attempt)).to_dict()["history"]
    moved = ctx.ledger.move(
        batch.id, record.job.id, [record.status], S.ADMITTED, expect=_seen(record, token), history=history,
        request_id=None, status_url=None, response_url=None, cancel_url=None, error_type=error_type,
        error_message=message, queue_position=None,
    )  # fmt: skip
    if moved:
        log.info("job %s attempt %d failed (%s); submitting again", record.job.id, record.attempts, error_type)
    return [FollowUp("submit", record.job.id)] if moved else []


def _finish(
    ctx: Context,
    batch: BatchInfo,
    record: JobRecord,
    status: JobStatus,
    error_type: str | None,
    message: str | None,
    token: int | None = None,
) -> list[FollowUp]:
    """End the job if it is still as the step saw it; its sidecar follows, its slot admits the next."""
    now = ctx.clock()
    final = replace(record, status=status, error_type=error_type, error_message=message, finished_at=now)
    moved = ctx.ledger.move(
        batch.id, record.job.id, [record.status], status, release=True, expect=_seen(record, token),
        outputs=final.to_dict()["outputs"], error_type=error_type, error_message=message, finished_at=now,
    )  # fmt: skip
    if not moved:
        return []
    BatchFolder(Path(batch.folder)).write_sidecar(final)
    if status is S.FAILED:  # the run's summary lists failures; this is for worker logs
        log.info("job %s failed: %s: %s", record.job.id, error_type, message)
    follow = admit_next(ctx, batch.id)
    if batch.report_when_done and ctx.ledger.claim_end(batch.id):
        follow.append(FollowUp("end", record.job.id))
    return follow


def _seen(record: JobRecord, token: int | None) -> dict[str, Any]:
    """The fields a step's move requires unchanged: its attempt's request, and its poll chain."""
    seen: dict[str, Any] = {"request_id": record.request_id}
    if token is not None:
        seen["poll_token"] = token
    return seen


def _again(ctx: Context, follow: FollowUp, exc: QueueAPIError | None, limit: int) -> list[FollowUp]:
    """The same call again after a backoff while fewer than `limit` tries failed; [] after."""
    if follow.tries > limit:
        return []
    server_s = exc.retry_after_s if exc is not None else None
    delay_s = retry_delay_s(follow.tries, ctx.settings.retry, server_s, ctx.rng)
    return [replace(follow, delay_s=delay_s)]


def _cancel_quietly(ctx: Context, batch: BatchInfo, cancel_url: str) -> None:
    try:
        ctx.queue_client(batch).cancel(cancel_url)
    except QueueAPIError as exc:
        log.warning("could not cancel %s: %s", cancel_url, exc)


def _error_type(exc: QueueAPIError) -> str:
    if exc.error_type:
        return exc.error_type
    return "validation" if exc.status_code == 422 else f"http_{exc.status_code}"


def _record_completion(
    ctx: Context, batch_id: str, record: JobRecord, status: QueueStatus, token: int
) -> bool:
    inference = (status.metrics or {}).get("inference_time")
    return ctx.ledger.move(
        batch_id, record.job.id, [S.QUEUED, S.RUNNING], S.COLLECTING, expect=_seen(record, token),
        completed_at=ctx.clock(), inference_s=float(inference) if isinstance(inference, int | float) else None,
        started_at=record.started_at, queue_position=None,
    )  # fmt: skip


def _record_progress(
    ctx: Context, batch_id: str, record: JobRecord, status: QueueStatus, token: int
) -> float | None:
    """Store the queue position or the start; when the job started, as far as known."""
    if status.status == "IN_QUEUE":
        ctx.ledger.move(batch_id, record.job.id, [S.QUEUED], S.QUEUED, expect=_seen(record, token),
                        queue_position=status.queue_position, last_queued_at=ctx.clock())  # fmt: skip
        return None
    last_log = status.logs[-1].message[:500] if status.logs else record.last_log
    # It started between the last IN_QUEUE answer and now; the earliest bound makes polls err early.
    started_at = record.started_at or record.last_queued_at or record.submitted_at or ctx.clock()
    ctx.ledger.move(
        batch_id, record.job.id, [S.QUEUED, S.RUNNING], S.RUNNING, expect=_seen(record, token),
        started_at=started_at, queue_position=None, last_log=last_log,
    )  # fmt: skip
    return started_at


def _typical_run_s(ctx: Context, batch_id: str) -> float | None:
    return typical_run_s(ctx.ledger.recent_run_times(batch_id))


def _concurrency(ctx: Context, batch_id: str) -> int:
    # fal runs at most the batch's in-flight jobs at once: an upper bound, so polls err early.
    return max(1, ctx.ledger.in_flight(batch_id))


def _url(value: str | None) -> str:
    if not value:
        raise PermanentQueueError("the job has no request URL stored", error_type="ledger")
    return value
