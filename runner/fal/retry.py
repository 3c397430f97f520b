"""Which answers of the fal queue are worth the same call again: pure predicates, no I/O.

They follow the official client `fal_client` (its `_should_retry_response`),
plus `Retry-After`, which fal_client ignores. How long to wait is
`jobs.backoff`'s; whether to retry at all is `jobs.decisions.decide`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

#: Statuses worth repeating whoever sent them: timeout, conflict, rate limit.
RETRY_STATUSES = frozenset({408, 409, 429})
#: Statuses a proxy in front of fal answers with when fal was not reached.
INGRESS_STATUSES = frozenset({502, 503, 504})


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
