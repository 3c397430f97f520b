"""The bodies and headers the simulated queue answers with, apart from the HTTP plumbing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from runner.simulator.requests import Outcome, Phase, RequestView, SimRequest

REQUEST_ID_HEADER = "x-fal-request-id"
ERROR_TYPE_HEADER = "X-Fal-Error-Type"
_PROGRESS_STEPS = 4
#: Outcomes whose runs log progress steps (None: still running, outcome not decided).
_RAN_FULLY = (None, Outcome.OK, Outcome.MODEL_ERROR)


class Delivery(str, Enum):
    """How the HTTP layer sends a reply."""

    #: Status, headers and the whole body.
    SEND = "send"
    #: Nothing: the connection closes without a response.
    DROP = "drop"
    #: The full Content-Length, then part of the body, then the connection closes.
    TRUNCATE = "truncate"
    #: The whole body in small chunks, with pauses between them.
    SLOW = "slow"


@dataclass(frozen=True)
class Reply:
    """An answer to one call, before it is written to the socket."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delivery: Delivery = Delivery.SEND
    #: Seconds the answer waits before it is written (the fault of a slow link).
    delay_s: float = 0.0


@dataclass(frozen=True)
class Failure:
    """How a request that did not end OK reports it: status error and result reply."""

    status_code: int
    message: str
    error_type: str | None
    headers: dict[str, str] = field(default_factory=dict)


FAILURES = {
    Outcome.MODEL_ERROR: Failure(500, "Simulated model failure (injected fault)", "runner_server_error",
                                 {ERROR_TYPE_HEADER: "runner_server_error", "X-Fal-Retryable": "true"}),
    Outcome.CANCELLED: Failure(499, "Request was cancelled by the client", "client_cancelled",
                               {ERROR_TYPE_HEADER: "client_cancelled"}),
    Outcome.TIMED_OUT: Failure(504, "Request timed out before it started", "request_timeout",
                               {ERROR_TYPE_HEADER: "request_timeout", "X-Fal-Request-Timeout-Type": "user"}),
    Outcome.INVALID_INPUT: Failure(422, "Unprocessable Entity: the model rejected its input", None),
}  # fmt: skip


def json_reply(status: int, payload: Any, request_id: str | None = None,
               headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
    """A JSON reply from the service itself: it carries `x-fal-request-id`."""
    all_headers = {
        "Content-Type": "application/json",
        REQUEST_ID_HEADER: request_id or str(uuid.uuid4()),
        **(headers or {}),
    }
    return Reply(status, json.dumps(payload).encode("utf-8"), all_headers)


def queue_urls(base_url: str, app: str, request_id: str) -> dict[str, str]:
    """The response, status and cancel URLs: under owner/app only, whatever the sub-path."""
    response_url = f"{base_url}/{app}/requests/{request_id}"
    return {
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }


def status_body(view: RequestView, urls: dict[str, str], logs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The status call's body for the request's phase; `logs` None when not asked for."""
    request = view.request
    body: dict[str, Any] = {"status": view.phase.value, "request_id": request.id, **urls,
                            "logs": logs, "metrics": {}}  # fmt: skip
    if view.phase is Phase.IN_QUEUE:
        body["queue_position"] = view.queue_position
    elif view.phase is Phase.COMPLETED:
        if request.started_at is not None:
            body["metrics"] = {"inference_time": request.run_s}
        failure = FAILURES.get(request.outcome or Outcome.OK)
        if failure is not None:
            body["error"] = failure.message
            if failure.error_type is not None:
                body["error_type"] = failure.error_type
    return body


def failure_reply(request: SimRequest) -> Reply:
    """The result call's answer for a request that did not end OK."""
    outcome = request.outcome or Outcome.OK
    failure = FAILURES[outcome]
    if outcome is Outcome.INVALID_INPUT:
        payload: dict[str, Any] = {"detail": request.input_errors}
    else:
        payload = {"detail": failure.message, "error_type": failure.error_type}
    return json_reply(failure.status_code, payload, request.id, failure.headers)


def request_logs(request: SimRequest, now: float, wall: Callable[[float], float]) -> list[dict[str, Any]]:
    """The model's log lines up to `now` (monotonic); `wall` turns an instant into Unix time."""
    start = request.started_at
    if start is None:
        return []
    end = request.completed_at if request.completed_at is not None else start + request.run_s
    lines = [_log_line(wall(start), "INFO", f"Starting inference on {request.submission.endpoint}")]
    for step in range(1, _PROGRESS_STEPS + 1):
        at = start + (end - start) * step / _PROGRESS_STEPS
        if at <= now and request.outcome in _RAN_FULLY:
            lines.append(_log_line(wall(at), "INFO", f"Step {step}/{_PROGRESS_STEPS}"))
    if request.completed_at is not None:
        failure = FAILURES.get(request.outcome or Outcome.OK)
        done = ("ERROR", failure.message) if failure else ("INFO", "Inference finished")
        lines.append(_log_line(wall(request.completed_at), *done))
    return lines


def _log_line(at: float, level: str, message: str) -> dict[str, Any]:
    timestamp = datetime.fromtimestamp(at, UTC).isoformat()
    return {"message": message, "level": level, "source": "USER", "timestamp": timestamp}
