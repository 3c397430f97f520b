"""What happens next to a job, after what its step saw: the same call later, a new attempt, or its end.

Pure functions. `decide` maps what a step saw (a failed call, a step that blew
up) to a `Decision`; the moves that carry it out are `jobs.lifecycle`'s. Each
retry has its own budget: transient failures of one call in a row, unexpected
errors of one step in a row, and attempts (submits) of the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.backoff import Backoff, backoff_delay_s
from jobs.lifecycle import AT_FAL
from jobs.record import JobRecord
from jobs.status import JobStatus

S = JobStatus


class Call(str, Enum):
    """The calls a step makes to fal."""

    SUBMIT = "submit"
    STATUS = "status"
    RESULT = "result"
    DOWNLOAD = "download"
    #: A page of fal's request history, looking for a lost submit.
    HISTORY = "history"
    #: A cancel, for a job of a cancelled batch (only a failure in passing is decided: any other leaves the
    #: job to be followed to its end).
    CANCEL = "cancel"


@dataclass(frozen=True)
class CallFailed:
    """A call to fal that failed, as classified where it was made."""

    call: Call
    error_type: str
    message: str
    #: Repeating the same call may succeed: a transport error, 408/409/429, a proxy's 5xx, a cut-short download.
    transient: bool = False
    status_code: int | None = None
    #: fal's `X-Fal-Retryable`: may a new attempt succeed? None when fal gave no hint.
    job_retryable: bool | None = None
    #: The server's `Retry-After`, in seconds.
    retry_after_s: float | None = None
    #: A submit whose answer was lost after the request may have left: fal may have queued it.
    unconfirmed: bool = False
    #: The result was asked for before the request completed.
    not_ready: bool = False


@dataclass(frozen=True)
class StepCrashed:
    """A step that raised an exception nobody expected (a bug, a Redis blip, a full disk)."""

    message: str


Seen = CallFailed | StepCrashed


@dataclass(frozen=True)
class RetryLater:
    """The same call (or step) again after `delay_s`; `budget` names the count of failures it adds to."""

    delay_s: float
    budget: Literal["call_failures", "step_errors"]


@dataclass(frozen=True)
class SubmitAgain:
    """A new attempt: fal has nothing running for this one."""

    error_type: str
    message: str
    #: fal does not bill the attempt that ended (`unbilled`).
    unbilled: bool = False


@dataclass(frozen=True)
class Reconcile:
    """The submit's answer was lost: fal's request history will say whether fal has the request."""

    message: str


@dataclass(frozen=True)
class GiveUp:
    """The job ends FAILED; with `cancel_at_fal`, its request may still run at fal and is cancelled there."""

    error_type: str
    message: str
    cancel_at_fal: bool = False
    #: fal does not bill the job's latest attempt (`unbilled`).
    unbilled: bool = False


Decision = RetryLater | SubmitAgain | Reconcile | GiveUp


class Limits(BaseModel):
    """The budgets of `decide`, and how long each kind of retry waits."""

    model_config = ConfigDict(frozen=True)

    #: Transient failures in a row of a submit or a download before the job fails.
    call_retries: int = Field(default=8, ge=0)
    #: Transient failures in a row of status or result calls (about an hour at the 30 s cap). Never a
    #: resubmit: fal may still be running it.
    unreachable_calls: int = Field(default=120, ge=0)
    #: Unexpected errors in a row of one step before the job fails as `internal_error`.
    step_errors: int = Field(default=8, ge=0)
    #: Between calls that failed in passing (fal_client's numbers).
    call_backoff: Backoff = Backoff()
    #: Between runs of a step that blew up: long enough for a Redis or a disk to come back.
    step_backoff: Backoff = Backoff(base_s=1.0, cap_s=60.0)
    #: Between fetches of a result that was not ready although the status said COMPLETED.
    not_ready_backoff: Backoff = Backoff(base_s=0.1, cap_s=30.0, jitter=0.0)


#: What a user is told of a submit that may have reached fal and cannot be looked up.
UNCONFIRMED_ADVICE = (
    "fal may have queued it, so it is not sent again: check fal's dashboard, and `wan-batch retry` it if it did"
    " not run"
)


def unbilled(seen: CallFailed) -> bool:
    """Whether fal bills nothing for the attempt a failed call ends: a submit fal answered with a 4xx (it refused
    the request, which never ran), or a result fal answered with its own 5xx ("5xx failures are not billed"; a
    start timeout or a scheduling failure never ran at all). A model's 4xx after inference may be billed."""
    code = seen.status_code or 0
    return (seen.call is Call.SUBMIT and 400 <= code < 500) or (seen.call is Call.RESULT and code >= 500)


def decide(seen: Seen, record: JobRecord, max_attempts: int, limits: Limits, rand: float,
           reconcilable: bool = False) -> Decision:  # fmt: skip
    """What follows what a step saw of `record`; `rand` in [0, 1) draws the jitter of a delay.

    `reconcilable`: fal's request history can be searched for a submit of the
    job's batch whose answer was lost (else such a job ends `submit_unconfirmed`).
    """
    if isinstance(seen, StepCrashed):
        return _after_crash(seen, record, limits, rand, reconcilable)
    if seen.call is Call.SUBMIT:
        return _after_submit(seen, record, limits, rand, reconcilable)
    if seen.not_ready or seen.transient:
        return _call_again(seen, record, limits, rand)
    if seen.call is Call.DOWNLOAD:
        return GiveUp(seen.error_type, seen.message)
    if seen.call is Call.HISTORY:
        return GiveUp("submit_unconfirmed", f"fal's request history cannot be searched: {seen.message}; "
                      + UNCONFIRMED_ADVICE)  # fmt: skip
    if seen.call is Call.RESULT and seen.status_code == 499 and record.error_type == "cancelled":
        # The user retried a job of a cancel, and fal had cancelled its request: not a failed try, sent again.
        return SubmitAgain(seen.error_type, seen.message)
    if seen.status_code == 404:  # fal no longer has the request (or its result): nothing runs, so run it again
        return _new_attempt(SubmitAgain(seen.error_type, seen.message), record, max_attempts)
    model_error = seen.call is Call.RESULT and (seen.status_code or 0) >= 500 and seen.job_retryable is not False
    if model_error:  # a model's 5xx or a start timeout: a new attempt may succeed
        return _new_attempt(SubmitAgain(seen.error_type, seen.message, unbilled(seen)), record, max_attempts)
    return GiveUp(seen.error_type, seen.message, cancel_at_fal=record.status in AT_FAL, unbilled=unbilled(seen))


def _after_crash(seen: StepCrashed, record: JobRecord, limits: Limits, rand: float, reconcilable: bool) -> Decision:
    if record.status is S.SUBMITTING:  # the request may have left: never sent again unless proven absent
        return _unconfirmed(seen.message, reconcilable)
    if record.step_errors < limits.step_errors:
        return RetryLater(backoff_delay_s(record.step_errors + 1, limits.step_backoff, rand), "step_errors")
    message = f"failed {record.step_errors + 1} times: {seen.message}"
    if record.status is S.UNCONFIRMED:  # fal may have it: never a blind retry
        return GiveUp("submit_unconfirmed", f"looking for its lost submit {message}; {UNCONFIRMED_ADVICE}")
    return GiveUp("internal_error", message, cancel_at_fal=record.status in AT_FAL)


def _after_submit(seen: CallFailed, record: JobRecord, limits: Limits, rand: float, reconcilable: bool) -> Decision:
    if seen.unconfirmed:
        return _unconfirmed(seen.message, reconcilable)
    if not seen.transient:
        return GiveUp(seen.error_type, seen.message, unbilled=unbilled(seen))
    if record.call_failures < limits.call_retries:
        delay_s = backoff_delay_s(record.call_failures + 1, limits.call_backoff, rand, seen.retry_after_s)
        return RetryLater(delay_s, "call_failures")
    return GiveUp(seen.error_type, seen.message)


def _unconfirmed(message: str, reconcilable: bool) -> Decision:
    if reconcilable:
        return Reconcile(f"{message}; looking for it in fal's request history")
    return GiveUp("submit_unconfirmed", f"{message}; {UNCONFIRMED_ADVICE}")


def _call_again(seen: CallFailed, record: JobRecord, limits: Limits, rand: float) -> Decision:
    """A status, result or download call that failed in passing, or a result that was not ready."""
    if seen.call is Call.DOWNLOAD:
        budget, backoff = limits.call_retries, limits.call_backoff
    elif seen.not_ready:
        budget, backoff = limits.unreachable_calls, limits.not_ready_backoff
    else:
        budget, backoff = limits.unreachable_calls, limits.call_backoff
    if record.call_failures < budget:
        return RetryLater(backoff_delay_s(record.call_failures + 1, backoff, rand, seen.retry_after_s), "call_failures")
    if seen.call is Call.DOWNLOAD:
        return GiveUp(seen.error_type, seen.message)
    if seen.call is Call.RESULT:
        return GiveUp("result_unreachable", seen.message)
    if seen.call is Call.HISTORY:
        return GiveUp("submit_unconfirmed", f"fal's request history did not answer: {seen.message}; "
                      + UNCONFIRMED_ADVICE)  # fmt: skip
    # fal may still run it: never a resubmit, and it is cancelled there rather than left running unwatched.
    message = f"{seen.message}; fal may still run it, so it is not submitted again"
    return GiveUp("status_unreachable", message, cancel_at_fal=record.status in AT_FAL)


def _new_attempt(again: SubmitAgain, record: JobRecord, max_attempts: int) -> Decision:
    if record.attempts >= max_attempts:
        return GiveUp(again.error_type, again.message, unbilled=again.unbilled)
    return again
