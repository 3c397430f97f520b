"""What the ledger knows of a job: its status, request, timings, outputs and error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from jobs.job import Job
from jobs.status import JobStatus


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One saved output image; `path` is relative to the batch folder."""

    index: int
    path: str
    url: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """An earlier attempt of a job that was submitted again (kept for the report)."""

    number: int
    request_id: str | None
    error_type: str | None
    error_message: str | None
    submitted_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class Reconciled:
    """A submit whose answer was lost, and how fal's request history resolved it (kept for the report)."""

    #: The attempt whose submit it was.
    attempt: int
    #: "adopted": fal had the request, and it was followed; "absent": fal never had it.
    outcome: str
    #: The request adopted (None when absent).
    request_id: str | None
    #: When that submit was sent, and when the history settled it.
    sent_at: float | None
    resolved_at: float


@dataclass(frozen=True)
class JobRecord:
    """A job and everything that happened to it; times are Unix seconds."""

    job: Job
    status: JobStatus = JobStatus.WAITING
    #: Submits made (0 until the first).
    attempts: int = 0
    request_id: str | None = None
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    queued_at: float | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    finished_at: float | None = None
    #: Last time anything happened to the job; a sweep resumes jobs left still too long.
    updated_at: float | None = None
    #: fal's `metrics.inference_time`, when it gave one.
    inference_s: float | None = None
    queue_position: int | None = None
    #: When fal last said IN_QUEUE: the job started after this (and before it was seen running).
    last_queued_at: float | None = None
    polls: int = 0
    last_log: str | None = None
    outputs: tuple[OutputFile, ...] = ()
    error_type: str | None = None
    error_message: str | None = None
    history: tuple[Attempt, ...] = field(default=())
    #: When the latest submit call began, and the digest of the exact body it sent (`jobs.reconcile`):
    #: what fal's request history is searched for when its answer is lost.
    sent_at: float | None = None
    sent_digest: str | None = None
    #: The start deadline (`X-Fal-Request-Timeout`) that submit carried: it bounds how long fal may hold it.
    sent_start_timeout_s: float | None = None
    #: That submit carried the batch's webhook URL (`fal_webhook`): fal calls back when it ends, so polls are a
    #: safety net only (a rerun that turns webhooks on or off changes nothing for requests already sent).
    sent_webhook: bool = False
    #: The estimated cost of the latest submit (`jobs.pricing`, nano-dollars), charged to the batch's budget when it
    #: was sent; given back if fal never had it or refused it.
    sent_cost_nusd: int = 0
    #: The estimated cost of every attempt of the job that fal may bill (nano-dollars).
    charged_nusd: int = 0
    #: Of a lost submit: the latest time it can have reached fal (when its call failed, or when it would
    #: have timed out); its start deadline runs from then.
    reached_by: float | None = None
    #: Lost submits of the job and how each was resolved.
    reconciled: tuple[Reconciled, ...] = field(default=())
    #: Moves applied to the job so far: a move is applied only to the revision its mover read.
    revision: int = 0
    #: Transient failures in a row of the call the job's step makes now (status, result, download...).
    call_failures: int = 0
    #: Unexpected errors in a row of the job's step.
    step_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["job"] = self.job.to_dict()
        data["status"] = self.status.value
        data["outputs"] = [asdict(o) for o in self.outputs]
        data["history"] = [asdict(a) for a in self.history]
        data["reconciled"] = [asdict(r) for r in self.reconciled]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        values = dict(data)
        values["job"] = Job.from_dict(values["job"])
        values["status"] = JobStatus(values["status"])
        values["outputs"] = tuple(OutputFile(**o) for o in values.get("outputs") or ())
        values["history"] = tuple(Attempt(**a) for a in values.get("history") or ())
        values["reconciled"] = tuple(Reconciled(**r) for r in values.get("reconciled") or ())
        return cls(**values)

    @property
    def queue_wait_s(self) -> float | None:
        """Time between the submit and the start at fal (estimated from fal's run time)."""
        if self.submitted_at is None:
            return None
        if self.completed_at is not None and self.inference_s is not None:
            return max(0.0, self.completed_at - self.submitted_at - self.inference_s)
        if self.started_at is not None:
            return max(0.0, self.started_at - self.submitted_at)
        return None

    @property
    def run_s(self) -> float | None:
        """fal's run time of the request; from the status polls when fal gave none."""
        if self.inference_s is not None:
            return self.inference_s
        if self.started_at is not None and self.completed_at is not None:
            return max(0.0, self.completed_at - self.started_at)
        return None

    @property
    def latency_s(self) -> float | None:
        """From the first submit to the outputs on disk."""
        first = self.history[0].submitted_at if self.history else self.submitted_at
        if first is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - first)
