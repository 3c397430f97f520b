"""fal's webhooks, simulated: a request submitted with `?fal_webhook=URL` is POSTed there when it ends.

As fal does: the body is `{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error"}`,
signed with Ed25519 over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)` (hex signature in
`X-Fal-Webhook-Signature`; the key is served as a JWKS at `/.well-known/jwks.json`), and a delivery that fails
(no 2xx, or no answer) is tried again later, 10 tries in all. The faults `webhook_drop` (never delivered)
and `webhook_duplicate` (delivered twice) strike per request.

A thread of its own watches for requests that ended and delivers them; the timestamp is the wall clock's, as
a receiver checks it against its own.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jobs.webhooks import signed_message
from runner.simulator.requests import FinishedRequest, SimRequest
from runner.simulator.state import RequestStore

log = logging.getLogger(__name__)
JWKS_PATH = "/.well-known/jwks.json"
#: fal's user id of the simulated account, in each delivery's headers and signature.
SIM_USER_ID = "sim-user"
_WATCH_EVERY_S = 0.05
_TIMEOUT_S = 10.0
#: Tries are at most this far apart (fal spreads its 10 over 2 hours; a test waits seconds).
_RETRY_MAX_S = 2.0

#: What a request that ended says in its webhook: (status, payload, error), given the request.
Describe = Callable[[SimRequest], tuple[str, Any, str | None]]


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    request_id: str = field(compare=False)
    tries: int = field(default=0, compare=False)


class WebhookSender:
    """Delivers the webhooks of requests that ended; `close` stops it (what is still due is dropped)."""

    def __init__(self, store: RequestStore, describe: Describe, strikes: Callable[[str], bool], seed: int,
                 retry_s: float, tries: int, on_sent: Callable[[int], None]) -> None:  # fmt: skip
        self._store = store
        self._describe = describe
        self._strikes = strikes
        self._retry_s = retry_s
        self._tries = tries
        self._on_sent = on_sent
        self._key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{seed}:webhook-key".encode()).digest())
        self._due: list[_Delivery] = []
        self._seen = 0
        self._seq = 0
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=_TIMEOUT_S)
        self._thread = threading.Thread(target=self._run, name="sim-webhooks", daemon=True)
        self._thread.start()

    def jwks(self) -> dict[str, Any]:
        """The public key, as fal publishes its keys."""
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig"}]}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_TIMEOUT_S + 1)
        self._http.close()

    def signed_headers(self, request_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The headers fal sends with `body` (also for tests that forge or replay one)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._key.sign(signed_message(request_id, SIM_USER_ID, stamp, body)).hex()
        return {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": SIM_USER_ID,
            "X-Fal-Webhook-Timestamp": stamp,
            "X-Fal-Webhook-Signature": signature,
        }

    def _run(self) -> None:
        while not self._stop.wait(_WATCH_EVERY_S):
            try:
                self._collect_ended()
                self._deliver_due()
            except Exception:  # the simulator's own bug: logged, never the end of its deliveries
                log.exception("simulated webhook delivery failed")

    def _collect_ended(self) -> None:
        ended, self._seen = self._store.finished_from(self._seen)
        for done in ended:
            try:
                self._enqueue(done)
            except Exception:  # the simulator's own bug: this request's webhook is lost, not the others'
                log.exception("simulated webhook of request %s not made", done.id)

    def _enqueue(self, done: FinishedRequest) -> None:
        request = self._store.find(done.id)
        if request is None or not request.submission.webhook_url or self._strikes("webhook_drop"):
            return
        status, payload, error = self._describe(request)
        body = json.dumps({"request_id": request.id, "gateway_request_id": request.id, "status": status,
                           "payload": payload, "error": error}).encode()  # fmt: skip
        copies = 2 if self._strikes("webhook_duplicate") else 1
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._due, _Delivery(time.monotonic(), self._seq, request.submission.webhook_url, body,
                                                request.id))  # fmt: skip

    def _deliver_due(self) -> None:
        while self._due and self._due[0].due <= time.monotonic() and not self._stop.is_set():
            delivery = heapq.heappop(self._due)
            delivery.tries += 1
            try:
                answer = self._http.post(delivery.url, content=delivery.body,
                                         headers=self.signed_headers(delivery.request_id, delivery.body))  # fmt: skip
                ok = 200 <= answer.status_code < 300
            except Exception:  # no answer, or a URL that cannot be called: tried again, as fal does
                ok = False
            self._on_sent(1)
            if not ok and delivery.tries < self._tries:
                delivery.due = time.monotonic() + min(self._retry_s * 2 ** (delivery.tries - 1), _RETRY_MAX_S)
                heapq.heappush(self._due, delivery)
