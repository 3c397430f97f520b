"""The one status enum of a job; the moves between statuses are in `jobs.lifecycle`."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    #: Recorded in the ledger; waits for a slot in the in-flight window.
    WAITING = "waiting"
    #: Holds a slot; its submit task is queued, no HTTP call made yet (safe to send).
    ADMITTED = "admitted"
    #: The submit call may have reached fal, and no request_id is stored yet.
    SUBMITTING = "submitting"
    #: The submit's answer was lost after the request may have left: fal's request history is searched
    #: for it (found: it is followed; proven absent: submitted again). Holds no slot while it waits.
    UNCONFIRMED = "unconfirmed"
    #: fal has it (request_id stored) and reports it IN_QUEUE.
    QUEUED = "queued"
    #: fal reports IN_PROGRESS.
    RUNNING = "running"
    #: fal reports COMPLETED; the result and output files are being fetched.
    COLLECTING = "collecting"
    #: Every output file is on disk with its sidecar.
    SUCCEEDED = "succeeded"
    #: Given up: a permanent error, or out of attempts. `error_type` says why.
    FAILED = "failed"
    #: Stopped by the user; partial outputs kept.
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL

    @property
    def holds_slot(self) -> bool:
        """Whether the job counts against the in-flight window."""
        return self in IN_FLIGHT

    @property
    def has_step(self) -> bool:
        """Whether a worker has something to do for the job (a submit, a lookup, a poll, a collect)."""
        return self in ACTIVE

    @property
    def has_request(self) -> bool:
        """Whether fal has a request for the job (so it is polled, never resubmitted)."""
        return self in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COLLECTING)


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
IN_FLIGHT = frozenset(
    {JobStatus.ADMITTED, JobStatus.SUBMITTING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COLLECTING}
)
#: Jobs a worker has a step for: those holding a slot, and those whose lost submit is looked for.
ACTIVE = IN_FLIGHT | {JobStatus.UNCONFIRMED}
