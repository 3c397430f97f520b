"""The simulated fal queue as calls in, replies out: routing, auth, faults, the queue and its history."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from jobs.endpoints import KNOWN_ENDPOINTS
from jobs.errors import HistoryQueryError
from runner.settings import MIB
from runner.simulator.auth import auth_problem, is_bearer, platform_auth_problem
from runner.simulator.config import SimConfig, parse_run_time
from runner.simulator.faults import FaultInjector, FaultKind, nginx_error_page
from runner.simulator.history import HISTORY_PATH, parse_query, render_page, select_page
from runner.simulator.inputs import InputReader
from runner.simulator.outputs import Outputs, result_size_bytes, serves, validation_detail
from runner.simulator.pricing import PRICING_METHODS, answer_pricing
from runner.simulator.requests import CancelResult, Outcome, Phase, Retention, SimRequest, Submission
from runner.simulator.responses import (
    Delivery,
    Reply,
    failure_reply,
    json_reply,
    queue_urls,
    request_logs,
    status_body,
)
from runner.simulator.state import RequestStore
from runner.simulator.stats import Counter, Stats
from runner.simulator.storage import (
    CDN_PREFIX,
    GATEWAY_TOKEN_DETAIL,
    STORAGE_TYPE,
    Storage,
    StorageRoute,
    lifecycle_ttl_s,
    storage_route,
)
from runner.simulator.webhooks import JWKS_PATH, WebhookSender

_CANCEL_STATUS_CODES = {
    CancelResult.CANCELLATION_REQUESTED: 202,
    CancelResult.ALREADY_COMPLETED: 400,
    CancelResult.NOT_FOUND: 404,
}
_NOT_FOUND = {"detail": "Request not found"}


@dataclass(frozen=True)
class Call:
    """One HTTP call as the service sees it; `headers` keys are lower-case."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    #: `http://host:port` as the client addressed the simulator.
    base_url: str

    @property
    def parts(self) -> list[str]:
        """The path's segments: `/fal-ai/wan/requests/ID` -> `["fal-ai", "wan", "requests", "ID"]`."""
        return [part for part in self.path.split("/") if part]

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class Service:
    """Answers calls; thread-safe (each part guards its own state)."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._run_time = parse_run_time(config.run_time)
        self._run_rng = random.Random(f"{config.seed}:run_time")
        self._seed_rng = random.Random(f"{config.seed}:seeds")
        self._faults = FaultInjector(config.faults, config.seed, config.fault_limit)
        self._stats = Stats()
        retention = Retention(config.retention_s, config.large_result_retention_s)
        self._store = RequestStore(config.concurrency, retention, self._start, self._purged, clock)
        self._storage = Storage(config.storage_token_ttl_s, config.storage_file_lifetime_s,
                                int(config.storage_mb * MIB), clock, self._store.wall_time)  # fmt: skip
        self._outputs = Outputs(self._store, int(config.file_cache_mb * MIB), clock, self._storage.file_at)
        max_image_bytes = int(config.fetch_max_mb * MIB)
        self._inputs = InputReader(config.fetch_inputs, config.fetch_timeout_s, max_image_bytes, self._outputs.own_file)
        self.webhooks = WebhookSender(self._store, self._webhook_says, lambda kind: self._strikes(FaultKind(kind)),
                                      config.seed, config.webhook_retry_s, config.webhook_tries,
                                      lambda n: self._stats.count(Counter.WEBHOOKS_SENT, n))  # fmt: skip

    def close(self) -> None:
        """Release what the service holds open: the client that fetches input images, the webhooks' sender."""
        self._inputs.close()
        self.webhooks.close()

    def handle(self, call: Call) -> Reply:
        """The reply to `call`; /_stats and /files are never faulted nor authenticated.

        Calls under /v1 go to the Platform API, faulted like the queue's but open to a fal key only.
        fal storage's calls (see `runner.simulator.storage`) check their own credentials, and only
        uploads are faulted (`upload_5xx`).
        """
        if call.parts[:1] == ["_stats"]:
            return self._stats_call(call)
        if call.path == JWKS_PATH and call.method == "GET":
            return json_reply(200, self.webhooks.jwks())
        if call.parts[:1] == ["files"] and call.method == "GET":
            return self._download(call)
        route = storage_route(call.method, call.parts)
        if route is not None:
            return self._storage_call(call, route)
        fault = self._queue_fault()
        if fault is not None:
            return fault
        # Before the queue's routes: they would take /v1/models/requests/... for a call of app v1/models.
        platform = call.parts[:1] == ["v1"]
        authorize = platform_auth_problem if platform else auth_problem
        problem = authorize(call.headers.get("authorization"), self._config.key, self._config.token)
        if problem is not None:
            return json_reply(401, {"detail": problem})
        return self._platform(call) if platform else self._route(call)

    def stats(self) -> dict[str, Any]:
        """The /_stats body: call and fault counts, queue counters, per-request timings."""
        return {**self._stats.snapshot(), **self._store.snapshot(), "held_results": self._outputs.held_results(),
                **self._storage.snapshot()}  # fmt: skip

    def _stats_call(self, call: Call) -> Reply:
        if call.method == "POST" and call.parts == ["_stats", "reset"]:
            self._stats.reset()
            self._store.reset_stats()
            return json_reply(200, self.stats())
        if call.method == "GET" and call.parts == ["_stats"]:
            return json_reply(200, self.stats())
        return json_reply(404, {"detail": "Not Found"})

    def _queue_fault(self) -> Reply | None:
        if self._strikes(FaultKind.DROP_CONNECTION):
            return Reply(0, delivery=Delivery.DROP)
        if self._strikes(FaultKind.PROXY_5XX):
            status = self._faults.proxy_status()
            return Reply(status, nginx_error_page(status), {"Content-Type": "text/html"})
        if self._strikes(FaultKind.RATE_LIMIT_429):
            headers = {"Content-Type": "application/json", "Retry-After": f"{self._config.retry_after_s:g}"}
            return Reply(429, json.dumps({"detail": "Too Many Requests"}).encode(), headers)
        return None

    def _strikes(self, kind: FaultKind) -> bool:
        struck = self._faults.strikes(kind)
        if struck:
            self._stats.count_fault(kind)
        return struck

    def _route(self, call: Call) -> Reply:
        parts = call.parts
        if call.method == "POST" and len(parts) >= 2:
            return self._submit(call)
        if len(parts) < 4 or parts[2] != "requests":
            return json_reply(404, {"detail": "Not Found"})
        app, request_id, rest = "/".join(parts[:2]), parts[3], parts[4:]
        if call.method == "GET" and rest == ["status"]:
            return self._status(call, app, request_id)
        if call.method == "GET" and not rest:
            return self._result(call, app, request_id)
        if call.method == "PUT" and rest == ["cancel"]:
            return self._cancel(app, request_id)
        if rest in ([], ["status"], ["cancel"]):
            return json_reply(405, {"detail": "Method Not Allowed"})
        return json_reply(404, {"detail": "Not Found"})

    # --- the four queue calls -------------------------------------------

    def _submit(self, call: Call) -> Reply:
        endpoint = "/".join(call.parts)
        app = "/".join(call.parts[:2])
        if not serves(endpoint):
            return json_reply(404, {"detail": f"Application {endpoint!r} not found"})
        try:
            body = json.loads(call.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            detail = "The request body must be a JSON object"
            return json_reply(400, {"detail": detail, "error_type": "bad_request"}, None,
                              {"X-Fal-Error-Type": "bad_request"})  # fmt: skip
        request_id = str(uuid.uuid4())
        # Read here, not at the start as fal does: the store starts a request under its lock.
        submission = replace(_submission(call, endpoint, app, body), image_errors=self._inputs.check(endpoint, body))
        view = self._store.submit(request_id, submission, self._draw)
        self._stats.count_submit(endpoint, body, len(call.body))
        if self._strikes(FaultKind.LOST_SUBMIT_RESPONSE):
            return Reply(0, delivery=Delivery.DROP)
        payload: dict[str, Any] = {
            "status": "IN_QUEUE",
            "request_id": request_id,
            **queue_urls(call.base_url, app, request_id),
            "logs": None,
            "metrics": {},
            "queue_position": view.queue_position or 0,
        }
        reply = json_reply(200, payload, request_id)
        return replace(reply, delay_s=self._config.submit_latency_s) if self._config.submit_latency_s else reply

    def _status(self, call: Call, app: str, request_id: str) -> Reply:
        self._stats.count(Counter.STATUS_POLLS)
        view = self._store.view(request_id, app)
        if view is None:  # fal answers an unknown id with an id of its own
            return json_reply(404, _NOT_FOUND)
        logs = None
        if call.query_value("logs") in ("1", "true", "True"):
            logs = request_logs(view.request, view.now, self._store.wall_time)
        body = status_body(view, queue_urls(call.base_url, app, request_id), logs)
        return json_reply(200 if view.phase is Phase.COMPLETED else 202, body, request_id)

    def _result(self, call: Call, app: str, request_id: str) -> Reply:
        self._stats.count(Counter.RESULT_FETCHES)
        view = self._store.view(request_id, app)
        if view is None:  # fal answers an unknown id with an id of its own
            return json_reply(404, _NOT_FOUND)
        request = view.request
        if view.phase is not Phase.COMPLETED:
            body = status_body(view, queue_urls(call.base_url, app, request_id), None)
            return json_reply(202, body, request_id)
        if self._strikes(FaultKind.EXPIRED_RESULT):
            self._store.expire(request_id)
            return json_reply(404, _NOT_FOUND)
        if request.outcome is not Outcome.OK:
            return failure_reply(request)
        return json_reply(200, self._outputs.result(request, call.base_url), request_id)

    def _cancel(self, app: str, request_id: str) -> Reply:
        self._stats.count(Counter.CANCELS)
        result = self._store.cancel(request_id, app)
        known_id = None if result is CancelResult.NOT_FOUND else request_id
        return json_reply(_CANCEL_STATUS_CODES[result], {"status": result.value}, known_id)

    def _download(self, call: Call) -> Reply:
        _, request_id, name = [*call.parts, "", ""][:3]
        index, _, _ = name.partition(".")
        found = None
        if index.isdigit() and len(call.parts) == 3:
            found = self._outputs.file(request_id, int(index))
        if found is None:
            return json_reply(404, {"detail": "File not found"})
        self._stats.count(Counter.DOWNLOADS)
        delivery = Delivery.SEND
        if self._strikes(FaultKind.TRUNCATED_DOWNLOAD):
            delivery = Delivery.TRUNCATE
        elif self._strikes(FaultKind.SLOW_DOWNLOAD):
            delivery = Delivery.SLOW
        return Reply(200, found.data, {"Content-Type": found.content_type}, delivery)

    # --- fal storage -----------------------------------------------------

    def _storage_call(self, call: Call, route: StorageRoute) -> Reply:
        if route in (StorageRoute.FILE, StorageRoute.UPLOAD) and call.parts[1] != self._storage.instance:
            return json_reply(404, {"detail": "File not found"})  # another simulator's: gone with it
        if route is StorageRoute.FILE:
            return self._stored_file(call)
        if route is StorageRoute.UNKNOWN:
            return json_reply(404, {"detail": "Not Found"})
        if call.method != "POST":
            return json_reply(405, {"detail": "Method Not Allowed"})
        return self._storage_token(call) if route is StorageRoute.TOKEN else self._upload(call)

    def _storage_token(self, call: Call) -> Reply:
        header = call.headers.get("authorization")
        if is_bearer(header):
            return json_reply(403, {"detail": GATEWAY_TOKEN_DETAIL})
        problem = auth_problem(header, self._config.key, self._config.token)
        if problem is not None:
            return json_reply(401, {"detail": problem})
        if call.query_value("storage_type") != STORAGE_TYPE:
            return json_reply(400, {"detail": f"The simulator serves storage_type={STORAGE_TYPE} only"})
        self._stats.count(Counter.STORAGE_TOKENS)
        return json_reply(200, self._storage.issue_token(call.base_url))

    def _upload(self, call: Call) -> Reply:
        if self._strikes(FaultKind.UPLOAD_5XX):
            return Reply(503, nginx_error_page(503), {"Content-Type": "text/html"})
        problem = self._storage.token_problem(call.headers.get("authorization"))
        if problem is not None:
            return json_reply(401, {"detail": problem})
        max_bytes = int(self._config.upload_max_mb * MIB)
        if len(call.body) > max_bytes:
            detail = f"A single upload takes at most {max_bytes} bytes; larger files go in parts (multipart)"
            return json_reply(413, {"detail": detail})
        path = self._storage.put(call.body, call.headers)
        if path is None:
            detail = (f"The simulator's storage is full ({self._config.storage_mb:g} MB of files not expired yet):"
                      " start it with more (storage_mb, wan-batch sim --storage-mb), or send images inline")
            return json_reply(507, {"detail": detail})
        self._stats.count(Counter.UPLOADS)
        self._stats.count(Counter.UPLOAD_BYTES, len(call.body))
        return json_reply(200, {"access_url": f"{call.base_url}/{CDN_PREFIX}/{path}"})

    def _stored_file(self, call: Call) -> Reply:
        found = self._storage.get(call.parts[3], call.parts[4])
        if found is None:
            return json_reply(404, {"detail": "File not found"})
        self._stats.count(Counter.STORAGE_FETCHES)
        return Reply(200, found.data, {"Content-Type": found.content_type})

    # --- the Platform API ----------------------------------------------

    def _platform(self, call: Call) -> Reply:
        path = "/" + "/".join(call.parts)
        methods = {HISTORY_PATH: "GET", **PRICING_METHODS}
        if path not in methods:
            return json_reply(404, {"detail": "Not Found"})
        if call.method != methods[path]:
            return json_reply(405, {"detail": "Method Not Allowed"})
        if path in PRICING_METHODS:
            self._stats.count(Counter.PRICING_CALLS)
            answer = answer_pricing(path, call.query, call.body, self._config.prices)
            return json_reply(answer.status, answer.body)
        self._stats.count(Counter.HISTORY_CALLS)
        try:
            query = parse_query(call.query)
        except HistoryQueryError as exc:
            return json_reply(exc.status, {"detail": exc.detail})
        finished, now = self._store.finished(self._config.history_lag_s)
        page = select_page(finished, query, now, self._store.wall_time)
        return json_reply(200, render_page(page, query.payloads, self._store.wall_time, self._outputs.held_result))

    # --- the model ------------------------------------------------------

    def _draw(self) -> tuple[float, int]:
        """A new request's run time and seed; called under the store's lock, so in submit order."""
        return self._run_time.draw_s(self._run_rng), self._seed_rng.randrange(2**31)

    def _start(self, request: SimRequest) -> Outcome:
        """Decide how a starting request ends: its input is checked as the model would, then its images."""
        endpoint = KNOWN_ENDPOINTS.get(request.submission.endpoint)
        if endpoint is not None:
            checked = endpoint.validate_input(request.submission.body)
            if checked.errors:
                request.input_errors = validation_detail(checked.errors)
                return Outcome.INVALID_INPUT
        if request.submission.image_errors:
            request.input_errors = list(request.submission.image_errors)
            return Outcome.INVALID_INPUT
        if self._strikes(FaultKind.MODEL_ERROR):
            return Outcome.MODEL_ERROR
        request.result_bytes = result_size_bytes(request)
        return Outcome.OK

    def _webhook_says(self, request: SimRequest) -> tuple[str, Any, str | None]:
        """A request's webhook: its result when it ended OK, else the error its result call answers."""
        if request.outcome is Outcome.OK:  # a result dropped past retention: fal then says its payload is gone
            payload = None if request.purged else self._outputs.result(request, request.submission.base_url)
            return "OK", payload, None
        failed = failure_reply(request)
        payload = json.loads(failed.body) if failed.body else None
        return "ERROR", payload, f"request failed with status {failed.status}"

    def _purged(self, request: SimRequest) -> None:
        """The store dropped a request past retention: drop its result and files too."""
        self._outputs.forget(request)


def _submission(call: Call, endpoint: str, app: str, body: dict[str, Any]) -> Submission:
    """A submit's options, read from its headers and query; malformed ones are ignored."""
    priority = call.headers.get("x-fal-queue-priority", "").strip().lower()
    return Submission(
        endpoint=endpoint,
        app=app,
        body=body,
        low_priority=priority == "low",
        start_timeout_s=_positive_float(call.headers.get("x-fal-request-timeout")),
        files_ttl_s=lifecycle_ttl_s(call.headers.get("x-fal-object-lifecycle-preference")),
        webhook_url=call.query_value("fal_webhook"),
        base_url=call.base_url,
    )


def _positive_float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None
