"""What a simulated request is: its phase, outcome, submit options, timings, and the views of it calls get."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from runner.simulator.config import LARGE_RESULT_BYTES


class Phase(str, Enum):
    """Where a request is, as the status call names it."""

    #: Waiting for a free slot; `queue_position` 0 is next.
    IN_QUEUE = "IN_QUEUE"
    #: Holding one of the `concurrency` slots.
    IN_PROGRESS = "IN_PROGRESS"
    #: Done, whatever the outcome (fal has no FAILED status).
    COMPLETED = "COMPLETED"


class Outcome(str, Enum):
    """How a completed request ended."""

    #: The model produced its output.
    OK = "ok"
    #: The model rejected its input (result 422).
    INVALID_INPUT = "invalid_input"
    #: The model failed (result 500), an injected fault.
    MODEL_ERROR = "model_error"
    #: Cancelled while queued or running (result 499).
    CANCELLED = "cancelled"
    #: Not started within its `X-Fal-Request-Timeout` (result 504).
    TIMED_OUT = "timed_out"


class CancelResult(str, Enum):
    #: Was queued or running; it ends COMPLETED, cancelled.
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    #: Had already completed; nothing changes.
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    #: Unknown, expired, or of another app.
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class Submission:
    """What a submit call asks for, read from its URL, headers and body."""

    endpoint: str
    app: str
    body: dict[str, Any]
    low_priority: bool = False
    start_timeout_s: float | None = None
    files_ttl_s: float | None = None
    webhook_url: str | None = None
    #: The simulator's URL as the submit addressed it: where a webhook's payload points for its files.
    base_url: str = ""
    #: The 422 `detail` entries of input images that could not be read, found at submit: fal reads
    #: them when the request starts, but the store starts requests under its lock.
    image_errors: tuple[dict[str, Any], ...] = ()


@dataclass
class SimRequest:
    """One submitted request; mutated only by the RequestStore, under its lock."""

    id: str
    seq: int
    submission: Submission
    submitted_at: float
    #: The run time drawn at submit; an invalid input ends as soon as it starts.
    run_s: float
    #: The first output's seed when the input names none.
    drawn_seed: int
    started_at: float | None = None
    completed_at: float | None = None
    outcome: Outcome | None = None
    #: The 422 `detail` (FastAPI style) of an invalid input, set when the request starts.
    input_errors: list[dict[str, Any]] = field(default_factory=list)
    #: Set by the expired_result fault: answers 404 from then on.
    expired: bool = False
    #: Size of the result body an OK run returns (set at start): a large one is kept for less.
    result_bytes: int = 0
    #: Past retention: input and result dropped, only the timings are left.
    purged: bool = False

    @property
    def phase(self) -> Phase:
        if self.completed_at is not None:
            return Phase.COMPLETED
        return Phase.IN_PROGRESS if self.started_at is not None else Phase.IN_QUEUE

    @property
    def end_at(self) -> float:
        assert self.started_at is not None
        return self.started_at + self.run_s


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """What fal's request history keeps of a completed request: a few hundred bytes besides its input."""

    id: str
    seq: int
    endpoint: str
    outcome: Outcome
    submitted_at: float
    #: None if it never started (cancelled while queued, or past its start deadline).
    started_at: float | None
    completed_at: float
    #: Seconds it ran; None if it never started.
    run_s: float | None
    #: The submitted body as compact JSON: one immutable str, kept when the purge drops the parsed body.
    input_json: str


@dataclass(frozen=True)
class RequestView:
    """A request as seen at one instant (monotonic `now`)."""

    request: SimRequest
    phase: Phase
    queue_position: int | None
    now: float


@dataclass(frozen=True)
class Retention:
    """How long a completed request's result is kept, in seconds: less for a large one."""

    default_s: float
    large_s: float

    def of(self, request: SimRequest) -> float:
        large = request.outcome is Outcome.OK and request.result_bytes >= LARGE_RESULT_BYTES
        return self.large_s if large else self.default_s
