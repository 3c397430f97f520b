"""When to retry a call to the fal queue, and how long to wait: pure functions, no I/O.

The predicates follow the official client `fal_client` (its `_should_retry_response`
and `_get_retry_delay`), plus `Retry-After`, which fal_client ignores. The loop
that sleeps is `runner.queue_api.call_with_retries`; Celery tasks reschedule
with the same numbers instead of sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from pydantic import BaseModel, ConfigDict, Field

#: Statuses worth repeating whoever sent them: timeout, conflict, rate limit.
RETRY_STATUSES = frozenset({408, 409, 429})
#: Statuses a proxy in front of fal answers with when fal was not reached.
INGRESS_STATUSES = frozenset({502, 503, 504})


class RetryPolicy(BaseModel):
    """How often and how long to retry a transient failure; defaults are fal_client's."""

    model_config = ConfigDict(frozen=True)

    #: Calls in all, the first included.
    max_attempts: int = Field(default=10, ge=1)
    #: Delay before the first retry, doubled for each further one.
    base_s: float = Field(default=0.1, gt=0)
    #: Ceiling of the exponential delay.
    cap_s: float = Field(default=30.0, gt=0)
    #: Ceiling of a server's `Retry-After`, so a bad header cannot stall a batch.
    retry_after_cap_s: float = Field(default=120.0, ge=0)


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """The header `name`, matched without regard to case (plain dicts are not)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def is_retryable_status(status_code: int, headers: Mapping[str, str]) -> bool:
    """Whether repeating a call that got this status may succeed.

    A 502/503/504 counts only without `x-fal-request-id`: with it, fal itself
    answered (a model or runner error), without it a proxy did. Unlike
    fal_client this does not also look for "nginx" in the body: gateways that
    resell fal put their own proxies in front.
    """
    if status_code == 504 and header_value(headers, "x-fal-request-timeout-type"):
        return False
    if status_code in RETRY_STATUSES:
        return True
    return status_code in INGRESS_STATUSES and header_value(headers, "x-fal-request-id") is None


def retry_after_s(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds to wait from `Retry-After` (delta-seconds or an HTTP-date), or None.

    `now` must be timezone-aware. A date in the past gives 0; junk gives None.
    """
    raw = (header_value(headers, "retry-after") or "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; RFC 9110 dates are GMT
            return None
        seconds = (when - now).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def retryable_hint(headers: Mapping[str, str]) -> bool | None:
    """fal's `X-Fal-Retryable` (may resubmitting the job succeed?), None when absent or unclear."""
    raw = (header_value(headers, "x-fal-retryable") or "").strip().lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    return None


def next_retry_delay_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1 = first retry): capped exponential with jitter.

    `base_s * 2**(attempt-1)`, capped at `cap_s`, times U(0.5, 1.5), capped again.
    """
    exponent = max(0, attempt - 1)
    delay_s = cap_s if exponent >= 64 else min(base_s * 2**exponent, cap_s)
    return min(delay_s * rng.uniform(0.5, 1.5), cap_s)


def retry_delay_s(attempt: int, policy: RetryPolicy, server_retry_after_s: float | None, rng: random.Random) -> float:
    """Delay before retry `attempt`: the server's `Retry-After` when given (capped), else backoff."""
    if server_retry_after_s is not None:
        return min(server_retry_after_s, policy.retry_after_cap_s)
    return next_retry_delay_s(attempt, policy.base_s, policy.cap_s, rng)
