"""Seeded fault injection: which call fails, how, and how many times so far."""

from __future__ import annotations

import random
import threading
from enum import Enum

from runner.simulator.config import FaultRates


class FaultKind(str, Enum):
    """A kind of fault; the value is the FaultRates field and the /_stats key."""

    #: 502/503/504 from a proxy in front of the queue (no `x-fal-request-id`).
    PROXY_5XX = "proxy_5xx"
    #: 429 with `Retry-After`.
    RATE_LIMIT_429 = "rate_limit_429"
    #: The connection closes without a response, before the call does anything.
    DROP_CONNECTION = "drop_connection"
    #: The inference fails (result 500 `runner_server_error`).
    MODEL_ERROR = "model_error"
    #: A download is cut short of its Content-Length.
    TRUNCATED_DOWNLOAD = "truncated_download"
    #: A download dribbles its bytes with pauses.
    SLOW_DOWNLOAD = "slow_download"
    #: A finished result answers 404 as expired.
    EXPIRED_RESULT = "expired_result"
    #: The submit is created, then its response is lost.
    LOST_SUBMIT_RESPONSE = "lost_submit_response"
    #: A storage upload answers 503 from a proxy, storing nothing.
    UPLOAD_5XX = "upload_5xx"
    #: A request's webhook is never delivered.
    WEBHOOK_DROP = "webhook_drop"
    #: A request's webhook is delivered twice.
    WEBHOOK_DUPLICATE = "webhook_duplicate"


PROXY_STATUSES = (502, 503, 504)
_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


class FaultInjector:
    """Decides, per eligible call, whether a fault of a kind strikes.

    Each kind draws from its own RNG (seeded from `seed` and the kind), so the
    traffic of one kind never shifts the decisions of another. After `limit`
    injections of a kind, that kind never strikes again. Thread-safe.
    """

    def __init__(self, rates: FaultRates, seed: int, limit: int | None) -> None:
        self._rates = rates
        self._limit = limit
        self._rngs = {kind: random.Random(f"{seed}:fault:{kind.value}") for kind in FaultKind}
        self._injected = dict.fromkeys(FaultKind, 0)
        self._lock = threading.Lock()

    def strikes(self, kind: FaultKind) -> bool:
        """Whether this eligible call gets the fault; counts it when it does."""
        rate = getattr(self._rates, kind.value)
        if rate <= 0.0:
            return False
        with self._lock:
            if self._limit is not None and self._injected[kind] >= self._limit:
                return False
            if self._rngs[kind].random() >= rate:
                return False
            self._injected[kind] += 1
            return True

    def proxy_status(self) -> int:
        """Which of 502/503/504 a proxy fault answers."""
        with self._lock:
            return self._rngs[FaultKind.PROXY_5XX].choice(PROXY_STATUSES)


def nginx_error_page(status: int) -> bytes:
    """The HTML body nginx sends for a gateway error, as proxies in front of fal do."""
    title = f"{status} {_REASONS.get(status, 'Error')}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return page.encode("ascii")
