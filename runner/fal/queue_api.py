"""The fal queue over HTTP: submit, status, result and cancel, one HTTP call each.

Every failure becomes a classified error of `jobs.errors` (transient, permanent,
auth, unconfirmed submit); nothing here sleeps or retries: what a failure leads
to is `jobs.decisions.decide`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.endpoints import is_endpoint_id
from jobs.errors import (
    AuthError,
    PermanentQueueError,
    QueueAPIError,
    ResultNotReadyError,
    SubmitUnconfirmedError,
    TransientQueueError,
)
from runner.fal.providers import Provider
from runner.fal.retry import (
    header_value,
    is_retryable_status,
    retry_after_s,
    retryable_hint,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
CancelStatus = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND", "OK"]
_CANCEL_STATUSES = frozenset(get_args(CancelStatus))
#: Failures that happen before a byte of the request left: a submit that met one was not queued.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.WriteError,
    httpx.WriteTimeout,
)
_DETAIL_CHARS = 200


class QueueOptions(BaseModel):
    """Per-client settings of the queue calls; None leaves fal's default."""

    model_config = ConfigDict(frozen=True)

    #: `X-Fal-Queue-Priority`; "low" suits overnight batches.
    priority: Literal["normal", "low"] | None = None
    #: `X-Fal-Request-Timeout`: fal gives up if the request has not started by then.
    start_timeout_s: float | None = Field(default=None, gt=1)
    #: `X-Fal-Object-Lifecycle-Preference`: how long output files stay on fal's CDN.
    object_expiration_s: int | None = Field(default=None, gt=0)
    #: `x-fal-no-retry: 1`: turn off fal's server-side retries.
    no_server_retry: bool = False
    #: A submit carries the input images as data URIs, so it may upload megabytes.
    submit_timeout_s: float = Field(default=120.0, gt=0)
    #: Status and cancel answer small bodies at once; 30 s (fal_client: 120) finds a stall sooner.
    poll_timeout_s: float = Field(default=30.0, gt=0)
    result_timeout_s: float = Field(default=120.0, gt=0)
    #: A healthy host connects in well under a second; 10 s (fal_client: 30) fails a dead one faster.
    connect_timeout_s: float = Field(default=10.0, gt=0)


class Submission(BaseModel):
    """What a submit returns; the URLs are already on the provider's own host."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


class LogLine(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str = ""
    level: str | None = None
    source: str | None = None
    timestamp: str | None = None


class QueueStatus(BaseModel):
    """A status answer; a failed inference also ends COMPLETED, its error shows in the result."""

    model_config = ConfigDict(extra="allow")

    status: QueueState
    request_id: str | None = None
    queue_position: int | None = None
    logs: list[LogLine] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None


@cache
def user_agent() -> str:
    try:
        version = metadata.version("wan-batch")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"wan-batch/{version}"


#: Told of every call made to fal: its name (`submit`, `status`...) and its HTTP status, or `unanswered`.
CallObserver = Callable[[str, str], None]


class FalHttp:
    """One HTTP call to one of a provider's APIs, its failures classified; the credential goes only to its host."""

    def __init__(self, http: httpx.Client, provider: Provider, options: QueueOptions | None = None,
                 on_call: CallObserver | None = None) -> None:  # fmt: skip
        self._http = http
        self._provider = provider
        self._options = options or QueueOptions()
        self._on_call = on_call

    def __repr__(self) -> str:
        """Where and how it authenticates; never the credential."""
        name = type(self).__name__
        return f"{name}(base_url={self._provider.base_url!r}, auth_scheme={self._provider.auth_scheme!r})"

    # --- one HTTP call -------------------------------------------------------

    def _send(self, call: str, method: str, url: str, *, timeout_s: float, **kwargs: Any) -> httpx.Response:
        own_url = self._provider.own_url(url)
        headers = {
            **kwargs.pop("headers", {}),
            **self._provider.auth_headers(),
            "User-Agent": user_agent(),
            "Accept": "application/json",
        }
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._options.connect_timeout_s))
        try:
            request = self._http.build_request(method, own_url, headers=headers, timeout=timeout, **kwargs)
            response = self._http.send(request, auth=None, follow_redirects=False)
        except httpx.HTTPError as exc:
            self._observe(call, "unanswered")
            raise self._transport_error(call, own_url, exc) from None
        except httpx.InvalidURL as exc:
            raise PermanentQueueError(f"{call} {_display_url(own_url)}: invalid URL: {exc}") from None
        self._observe(call, str(response.status_code))
        return response

    def _observe(self, call: str, code: str) -> None:
        if self._on_call is not None:
            self._on_call(call, code)

    def _transport_error(self, call: str, url: str, exc: httpx.HTTPError) -> QueueAPIError:
        what = self._provider.redact(f"{call} {_display_url(url)}: {type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.UnsupportedProtocol) or not isinstance(exc, httpx.TransportError):
            return PermanentQueueError(what, error_type="transport")
        if call == "submit" and not isinstance(exc, _NOT_SENT):
            return SubmitUnconfirmedError(
                f"{what}; the request may have been queued, and submitting again may run it twice",
                error_type="transport",
            )
        return TransientQueueError(what, error_type="transport")

    def _success_body(self, call: str, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer; raises the classified error for anything else."""
        if not response.is_success:
            raise self._status_error(call, response)
        body = _json_or_none(response)
        if not isinstance(body, dict):
            raise PermanentQueueError(
                f"{call} {_display_url(str(response.url))}: HTTP {response.status_code} with a body"
                f" that is not a JSON object: {_summary(_text_of(response))}",
                status_code=response.status_code,
                error_type="invalid_response",
                fal_request_id=response.headers.get("x-fal-request-id"),
            )
        return body

    def _status_error(self, call: str, response: httpx.Response) -> QueueAPIError:
        status, headers = response.status_code, response.headers
        body = _json_or_none(response)
        error_type = _error_type(body, headers)
        if error_type is None and status == 504 and header_value(headers, "x-fal-request-timeout-type"):
            error_type = "request_timeout"
        detail = self._provider.redact(_detail(body, response))
        cls: type[QueueAPIError] = PermanentQueueError
        hint = ""
        if status in (401, 403):
            cls, hint = AuthError, f"; the credential was refused: check {self._provider.credential_name}"
        elif is_retryable_status(status, headers):
            cls = TransientQueueError
        fal_request_id = headers.get("x-fal-request-id")
        message = f"{call} {_display_url(str(response.url))}: HTTP {status}"
        message += (f" {error_type}" if error_type else "") + f": {_summary(detail)}{hint}"
        message += f" (fal request {fal_request_id})" if fal_request_id else ""
        return cls(
            self._provider.redact(message),
            status_code=status,
            error_type=error_type,
            detail=detail,
            retry_after_s=retry_after_s(headers, datetime.now(UTC)),
            fal_request_id=fal_request_id,
            job_retryable=retryable_hint(headers),
        )


class QueueClient(FalHttp):
    """One provider's queue over a caller-owned `httpx.Client`; each method makes one call."""

    def submit(self, endpoint_id: str, body: dict[str, Any], webhook_url: str | None = None) -> Submission:
        """Queue one request. Not idempotent: each successful call is a billed request.

        Raises ValueError for a malformed `endpoint_id`, SubmitUnconfirmedError
        when the answer was lost after the request was sent, and the other
        QueueAPIError kinds as classified.
        """
        if not is_endpoint_id(endpoint_id):
            raise ValueError(f"not a fal endpoint id (owner/app[/path]): {endpoint_id!r}")
        params = {"fal_webhook": webhook_url} if webhook_url else None
        headers = self._submit_headers()
        url, timeout_s = self._provider.submit_url(endpoint_id), self._options.submit_timeout_s
        response = self._send("submit", "POST", url, timeout_s=timeout_s, json=body, params=params, headers=headers)
        data = self._success_body("submit", response)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise SubmitUnconfirmedError(
                f"submit {_display_url(str(response.url))}: HTTP {response.status_code} without a"
                " request_id; the request may be queued but cannot be followed",
                status_code=response.status_code,
                detail=self._provider.redact(data),
            )
        return self._submission(endpoint_id, request_id, data)

    def status(self, status_url: str, with_logs: bool = True) -> QueueStatus:
        """The request's state; raises a QueueAPIError as classified."""
        params = {"logs": "1"} if with_logs else None
        response = self._send("status", "GET", status_url, timeout_s=self._options.poll_timeout_s, params=params)
        return _parse_status(response, self._success_body("status", response))

    def result(self, response_url: str) -> dict[str, Any]:
        """The model's output (only a 200 is one).

        Raises ResultNotReadyError before completion (its `detail` is the
        status body), PermanentQueueError for a failed model (422 with the
        `detail` list, 500...) or an expired result (404).
        """
        response = self._send("result", "GET", response_url, timeout_s=self._options.result_timeout_s)
        data = self._success_body("result", response)
        if response.status_code != 200:
            raise ResultNotReadyError(
                f"result {_display_url(str(response.url))}: HTTP {response.status_code},"
                f" not completed yet (status {data.get('status')!r})",
                status_code=response.status_code,
                detail=data,
            )
        return data

    def cancel(self, cancel_url: str) -> CancelStatus:
        """Ask to cancel; safe to repeat. A request fal no longer knows (404) gives NOT_FOUND."""
        response = self._send("cancel", "PUT", cancel_url, timeout_s=self._options.poll_timeout_s)
        body = _json_or_none(response)
        stated = body.get("status") if isinstance(body, dict) else None
        if response.status_code in (200, 202, 400, 404) and stated in _CANCEL_STATUSES:
            return cast(CancelStatus, stated)
        if response.status_code == 404:
            return "NOT_FOUND"
        data = self._success_body("cancel", response)
        raise PermanentQueueError(
            f"cancel {_display_url(str(response.url))}: unexpected answer {_summary(data)}",
            status_code=response.status_code,
            error_type="invalid_response",
            detail=data,
        )

    @property
    def submit_timeout_s(self) -> float:
        """How long a submit may take: its body may still be on its way to fal until then."""
        return self._options.submit_timeout_s

    def follow(self, endpoint_id: str, request_id: str) -> Submission:
        """The URLs of a request known only by its id (found in fal's request history): fal's form, owner/app only."""
        return self._submission(endpoint_id, request_id, {})

    # --- inside ---------------------------------------------------------------

    def _submit_headers(self) -> dict[str, str]:
        opts, headers = self._options, dict[str, str]()
        if opts.priority:
            headers["X-Fal-Queue-Priority"] = opts.priority
        if opts.start_timeout_s is not None:
            headers["X-Fal-Request-Timeout"] = str(float(opts.start_timeout_s))
        if opts.object_expiration_s is not None:
            headers["X-Fal-Object-Lifecycle-Preference"] = json.dumps(
                {"expiration_duration_seconds": opts.object_expiration_s}
            )
        if opts.no_server_retry:
            headers["x-fal-no-retry"] = "1"
        return headers

    def _submission(self, endpoint_id: str, request_id: str, data: dict[str, Any]) -> Submission:
        # Without URLs in the answer, build fal's form (owner/app only) rather than lose the id.
        owner_app = "/".join(endpoint_id.split("/")[:2])
        fallback = self._provider.submit_url(f"{owner_app}/requests/{request_id}")

        def own_url(name: str, suffix: str) -> str:
            given = data.get(name)
            url = given if isinstance(given, str) and given else fallback + suffix
            own = self._provider.own_url(url)
            if own != url:
                log.debug("%s of %s re-based onto %s", name, request_id, self._provider.base_url)
            return own

        position = data.get("queue_position")
        return Submission(
            request_id=request_id,
            status_url=own_url("status_url", "/status"),
            response_url=own_url("response_url", ""),
            cancel_url=own_url("cancel_url", "/cancel"),
            queue_position=position if isinstance(position, int) else None,
        )


def _parse_status(response: httpx.Response, data: dict[str, Any]) -> QueueStatus:
    try:
        return QueueStatus.model_validate(data)
    except ValidationError as exc:
        raise PermanentQueueError(
            f"status {_display_url(str(response.url))}: unexpected answer"
            f" ({exc.error_count()} problem(s)): {_summary(data)}",
            status_code=response.status_code,
            error_type="invalid_response",
            detail=data,
        ) from None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _text_of(response: httpx.Response) -> str:
    try:
        return response.text[:_DETAIL_CHARS]
    except (UnicodeDecodeError, LookupError):
        return repr(response.content[:_DETAIL_CHARS])


def _error_type(body: Any, headers: httpx.Headers) -> str | None:
    value = body.get("error_type") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else headers.get("x-fal-error-type")


def _detail(body: Any, response: httpx.Response) -> Any:
    """The server's `detail` (a string, or a 422's list), else the whole JSON, else the text."""
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body if body is not None else _text_of(response)


def _summary(detail: Any) -> str:
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        text = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}" for d in detail)
    elif isinstance(detail, str):
        text = detail
    else:
        text = json.dumps(detail, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _display_url(url: str) -> str:
    """`url` without user info or query, as shown in messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
