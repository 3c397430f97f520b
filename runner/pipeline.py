"""What happens to a job, one step at a time: plain functions the Celery tasks call.

Each step loads the job from the ledger, makes at most one kind of call to
fal, records the outcome atomically, and returns the follow-ups to schedule
(a poll in N seconds, a submit of the next admitted job). Nothing here
sleeps: waiting is a follow-up's delay. Every step is safe to run twice: a
step whose job has moved on, or whose poll token is stale, does nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import httpx

from jobs.errors import (
    DownloadError,
    PermanentQueueError,
    QueueAPIError,
    ResultNotReadyError,
    SubmitUnconfirmedError,
    TransientQueueError,
)
from jobs.polling import PollState, next_poll_delay_s, typical_run_s
from jobs.record import Attempt, JobRecord
from jobs.status import FINAL, JobStatus
from runner.collect import save_outputs
from runner.ledger import BatchInfo, Ledger
from runner.local_images import LocalImageError, inline_local_images
from runner.queue_api import QueueClient, QueueStatus
from runner.retry import retry_delay_s
from runner.settings import WorkerSettings
from runner.storage import BatchFolder

log = logging.getLogger(__name__)
S = JobStatus
NOT_FINAL = [s for s in JobStatus if s not in FINAL]


@dataclass(frozen=True)
class FollowUp:
    """A step to schedule: `task` for `job_id` after `delay_s`."""

    task: Literal["submit", "poll", "collect"]
    job_id: str
    delay_s: float = 0.0
    #: The poll chain it belongs to (polls and collects).
    token: int = 0
    #: Transient failures of this call so far.
    tries: int = 0


@dataclass
class Context:
    """What a step needs, built once per worker process."""

    ledger: Ledger
    http: httpx.Client
    #: The queue client of a batch's provider (credentials come from the worker's side).
    queue_client: Callable[[BatchInfo], QueueClient]
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time


def admit_next(ctx: Context, batch_id: str) -> list[FollowUp]:
    """Submits for the jobs that free slots of the in-flight window now admit."""
    return [FollowUp("submit", job_id) for job_id in ctx.ledger.admit(batch_id)]


def resume_batch(ctx: Context, batch_id: str, owner_gone: bool) -> list[FollowUp]:
    """Follow-ups that set every unfinished job moving again, after a crash, a kill or a Ctrl-C.

    Jobs with a request_id are polled again (under a new poll token, so any
    older poll chain stops), never submitted again. A job caught mid-submit
    may have reached fal: when its worker is known to be gone (`owner_gone`)
    it fails as `submit_unconfirmed` rather than risk paying twice.
    """
    batch = ctx.ledger.batch(batch_id)
    if batch is None:
        return []
    follow: list[FollowUp] = []
    for record in ctx.ledger.records(batch_id):
        job_id = record.job.id
        if record.status is S.ADMITTED:
            follow.append(FollowUp("submit", job_id))
        elif record.status is S.SUBMITTING and owner_gone:
            message = "the run stopped while its submit was in flight; fal may have queued it (rerun with `retry`)"
            follow += _finish(ctx, batch, record, S.FAILED, "submit_unconfirmed", message)
        elif record.status in (S.QUEUED, S.RUNNING, S.COLLECTING):
            task: Literal["poll", "collect"] = "collect" if record.status is S.COLLECTING else "poll"
            follow.append(FollowUp(task, job_id, token=ctx.ledger.next_poll_token(batch_id, job_id)))
    return follow + admit_next(ctx, batch_id)


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
    attempt = record.attempts + 1
    if not ctx.ledger.move(batch_id, job_id, [S.ADMITTED], S.SUBMITTING, attempts=attempt):
        return []  # another worker took it
    try:
        submission = ctx.queue_client(batch).submit(record.job.endpoint, body)
    except SubmitUnconfirmedError as exc:
        return _finish(ctx, batch, record, S.FAILED, "submit_unconfirmed", f"{exc} (rerun it with `retry`)")
    except TransientQueueError as exc:
        ctx.ledger.move(batch_id, job_id, [S.SUBMITTING], S.ADMITTED, attempts=record.attempts)  # never sent
        return _again(ctx, FollowUp("submit", job_id, tries=tries + 1), exc) or _finish(
            ctx, batch, record, S.FAILED, exc.error_type or "transport", str(exc)
        )
    except PermanentQueueError as exc:
        return _finish(ctx, batch, record, S.FAILED, exc.error_type or f"http_{exc.status_code}", str(exc))
    now = ctx.clock()
    ctx.ledger.move(
        batch_id, job_id, [S.SUBMITTING], S.QUEUED,
        request_id=submission.request_id, status_url=submission.status_url,
        response_url=submission.response_url, cancel_url=submission.cancel_url,
        submitted_at=now, queue_position=submission.queue_position, started_at=None, completed_at=None,
    )  # fmt: skip
    token = ctx.ledger.next_poll_token(batch_id, job_id)
    state = PollState(0, 0.0, _typical_run_s(ctx, batch_id), submission.queue_position, _concurrency(ctx, batch_id))
    return [FollowUp("poll", job_id, next_poll_delay_s(state, ctx.settings.poll, ctx.rng.random()), token)]


def poll_job(ctx: Context, batch_id: str, job_id: str, token: int, tries: int = 0) -> list[FollowUp]:
    """Ask fal how the job is doing; collect it at once when it is COMPLETED."""
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or not _current(ctx, record, batch_id, token, S.QUEUED, S.RUNNING):
        return []
    polls = ctx.ledger.count_poll(batch_id, job_id)
    try:
        status = ctx.queue_client(batch).status(_url(record.status_url))
    except TransientQueueError as exc:
        follow = _again(ctx, FollowUp("poll", job_id, token=token, tries=tries + 1), exc)
        return follow or _retry_or_fail(ctx, batch, record, exc.error_type or "transport", str(exc))
    except QueueAPIError as exc:
        return _retry_or_fail(ctx, batch, record, exc.error_type or f"http_{exc.status_code}", str(exc))
    if status.status == "COMPLETED":
        _record_completion(ctx, batch_id, record, status)
        return collect_job(ctx, batch_id, job_id, token)
    started_at = _record_progress(ctx, batch_id, record, status)
    queued = status.queue_position if status.status == "IN_QUEUE" else None
    since_start_s = ctx.clock() - (started_at or record.submitted_at or ctx.clock())
    state = PollState(polls, since_start_s, _typical_run_s(ctx, batch_id), queued, _concurrency(ctx, batch_id))
    return [FollowUp("poll", job_id, next_poll_delay_s(state, ctx.settings.poll, ctx.rng.random()), token)]


def collect_job(ctx: Context, batch_id: str, job_id: str, token: int, tries: int = 0) -> list[FollowUp]:
    """Fetch the result and download every output file now: fal deletes them within minutes."""
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or not _current(ctx, record, batch_id, token, S.COLLECTING):
        return []
    try:
        data = ctx.queue_client(batch).result(_url(record.response_url))
    except ResultNotReadyError:
        ctx.ledger.move(batch_id, job_id, [S.COLLECTING], S.RUNNING)
        return [FollowUp("poll", job_id, ctx.settings.poll.min_delay_s, token)]
    except TransientQueueError as exc:
        follow = _again(ctx, FollowUp("collect", job_id, token=token, tries=tries + 1), exc)
        return follow or _retry_or_fail(ctx, batch, record, exc.error_type or "transport", str(exc))
    except PermanentQueueError as exc:
        return _result_failed(ctx, batch, record, exc)
    try:
        outputs = save_outputs(ctx.http, batch, record, data, ctx.settings.max_output_bytes)
    except DownloadError as exc:
        if exc.retryable:
            follow = _again(ctx, FollowUp("collect", job_id, token=token, tries=tries + 1), None)
            return follow or _retry_or_fail(ctx, batch, record, "download_failed", str(exc))
        return _finish(ctx, batch, record, S.FAILED, "download_failed", str(exc))
    except ValueError as exc:  # the result is not an output fal's models give
        return _finish(ctx, batch, record, S.FAILED, "invalid_output", str(exc))
    done = replace(record, outputs=tuple(outputs))
    if record.run_s is not None:
        ctx.ledger.note_run_time(batch_id, record.run_s)
    return _finish(ctx, batch, done, S.SUCCEEDED, None, None)


def _result_failed(ctx: Context, batch: BatchInfo, record: JobRecord, exc: PermanentQueueError) -> list[FollowUp]:
    error_type = exc.error_type or ("validation" if exc.status_code == 422 else f"http_{exc.status_code}")
    if exc.status_code == 404:  # the result expired or was lost: run it again
        return _retry_or_fail(ctx, batch, record, exc.error_type or "result_lost", str(exc))
    if exc.status_code is not None and exc.status_code >= 500 and exc.job_retryable is not False:
        return _retry_or_fail(ctx, batch, record, error_type, str(exc))
    return _finish(ctx, batch, record, S.FAILED, error_type, str(exc))


def _retry_or_fail(ctx: Context, batch: BatchInfo, record: JobRecord, error_type: str, message: str) -> list[FollowUp]:
    """A failed attempt: submit the job again while attempts remain, keeping its slot."""
    if record.attempts >= batch.max_attempts:
        return _finish(ctx, batch, record, S.FAILED, error_type, message)
    attempt = Attempt(record.attempts, record.request_id, error_type, message, record.submitted_at, ctx.clock())
    history = replace(record, history=(*record.history, attempt)).to_dict()["history"]
    moved = ctx.ledger.move(
        batch.id, record.job.id, NOT_FINAL, S.ADMITTED, history=history, request_id=None, status_url=None,
        response_url=None, cancel_url=None, error_type=error_type, error_message=message, queue_position=None,
    )  # fmt: skip
    log.info("job %s attempt %d failed (%s); submitting again", record.job.id, record.attempts, error_type)
    return [FollowUp("submit", record.job.id)] if moved else []


def _finish(
    ctx: Context, batch: BatchInfo, record: JobRecord, status: JobStatus, error_type: str | None, message: str | None
) -> list[FollowUp]:
    """End the job: sidecar on disk first, then the final status; its slot admits the next job."""
    now = ctx.clock()
    final = replace(record, status=status, error_type=error_type, error_message=message, finished_at=now)
    BatchFolder(Path(batch.folder)).write_sidecar(final)
    outputs = final.to_dict()["outputs"]
    ctx.ledger.move(
        batch.id, record.job.id, NOT_FINAL, status, release=True,
        outputs=outputs, error_type=error_type, error_message=message, finished_at=now,
    )  # fmt: skip
    if status is S.FAILED:  # the run's summary lists failures; this is for worker logs
        log.info("job %s failed: %s: %s", record.job.id, error_type, message)
    return admit_next(ctx, batch.id)


def _again(ctx: Context, follow: FollowUp, exc: QueueAPIError | None) -> list[FollowUp]:
    """The same call again after a backoff, while tries remain; [] when they are used up."""
    if follow.tries > ctx.settings.max_call_retries:
        return []
    server_s = exc.retry_after_s if exc is not None else None
    delay_s = retry_delay_s(follow.tries, ctx.settings.retry, server_s, ctx.rng)
    return [replace(follow, delay_s=delay_s)]


def _current(ctx: Context, record: JobRecord, batch_id: str, token: int, *statuses: JobStatus) -> bool:
    return record.status in statuses and ctx.ledger.poll_token(batch_id, record.job.id) == token


def _record_completion(ctx: Context, batch_id: str, record: JobRecord, status: QueueStatus) -> None:
    inference = (status.metrics or {}).get("inference_time")
    ctx.ledger.move(
        batch_id, record.job.id, [S.QUEUED, S.RUNNING], S.COLLECTING, completed_at=ctx.clock(),
        inference_s=float(inference) if isinstance(inference, int | float) else None,
        started_at=record.started_at, queue_position=None,
    )  # fmt: skip


def _record_progress(ctx: Context, batch_id: str, record: JobRecord, status: QueueStatus) -> float | None:
    """Store the queue position or the start; when the job started, as far as known."""
    if status.status == "IN_QUEUE":
        ctx.ledger.update(batch_id, record.job.id, queue_position=status.queue_position, last_queued_at=ctx.clock())
        return None
    last_log = status.logs[-1].message[:500] if status.logs else record.last_log
    # It started between the last IN_QUEUE answer and now; the earliest bound makes polls err early.
    started_at = record.started_at or record.last_queued_at or record.submitted_at or ctx.clock()
    ctx.ledger.move(
        batch_id, record.job.id, [S.QUEUED, S.RUNNING], S.RUNNING,
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
