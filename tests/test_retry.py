from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from runner.fal.retry import (
    RetryPolicy,
    header_value,
    is_retryable_status,
    next_retry_delay_s,
    retry_after_s,
    retry_delay_s,
    retryable_hint,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
FAL_ID = {"x-fal-request-id": "req-1"}


class FixedRng(random.Random):
    """An rng whose uniform() always gives the same fraction of its range."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (429, FAL_ID, True),
        (502, {}, True),  # a proxy: fal never saw it
        (503, {}, True),
        (504, {}, True),
        (502, FAL_ID, False),  # fal itself answered: runner_incomplete_response
        (503, FAL_ID, False),
        (504, FAL_ID, False),
        (503, {"X-Fal-Request-Id": "req-1"}, False),  # header names are case-insensitive
        (504, {"X-Fal-Request-Timeout-Type": "user"}, False),  # the caller's own deadline
        (504, {"x-fal-request-timeout-type": "user", **FAL_ID}, False),
        (500, {}, False),
        (500, FAL_ID, False),
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (422, {}, False),
        (499, {}, False),
        (200, {}, False),
    ],
)
def test_is_retryable_status(status: int, headers: dict[str, str], expected: bool) -> None:
    assert is_retryable_status(status, headers) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Sun, 01 Jun 2025 12:00:30 GMT", 30.0),  # HTTP-date
        ("Sun, 01 Jun 2025 11:59:00 GMT", 0.0),  # already past
        ("Sunday, 01-Jun-25 12:01:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Sun, 01 Jun 2025 12:00:30 -0000", None),  # no zone: unknown instant
    ],
)
def test_retry_after_s(value: str | None, expected: float | None) -> None:
    headers = {} if value is None else {"Retry-After": value}
    assert retry_after_s(headers, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("true", True), ("True", True), ("1", True), ("false", False), ("0", False), ("maybe", None)],
)
def test_retryable_hint(value: str | None, expected: bool | None) -> None:
    headers = {} if value is None else {"X-Fal-Retryable": value}
    assert retryable_hint(headers) is expected


@pytest.mark.parametrize(
    ("attempt", "fraction", "expected"),
    [
        (1, 0.5, 0.1),  # jitter factor 1.0
        (2, 0.5, 0.2),
        (4, 0.5, 0.8),
        (1, 0.0, 0.05),  # factor 0.5
        (1, 1.0, 0.15),  # factor 1.5
        (9, 0.5, 25.6),
        (10, 0.5, 30.0),  # 51.2 capped
        (9, 1.0, 30.0),  # 25.6 * 1.5 capped again
        (10, 0.0, 15.0),  # capped, then jittered down
        (500, 0.5, 30.0),  # no overflow
        (0, 0.5, 0.1),  # treated as the first retry
    ],
)
def test_next_retry_delay_s(attempt: int, fraction: float, expected: float) -> None:
    assert next_retry_delay_s(attempt, 0.1, 30.0, FixedRng(fraction)) == pytest.approx(expected)


def test_next_retry_delay_s_jitter_stays_in_bounds() -> None:
    rng = random.Random(7)
    delays = [next_retry_delay_s(3, 0.1, 30.0, rng) for _ in range(1000)]
    assert min(delays) >= 0.2 and max(delays) <= 0.6
    assert max(delays) - min(delays) > 0.3  # it does jitter


@pytest.mark.parametrize(
    ("server_s", "expected"),
    [
        (None, 0.4),  # backoff for attempt 3 with factor 1.0
        (0.0, 0.0),
        (5.0, 5.0),  # the server's word over the backoff
        (600.0, 120.0),  # capped by retry_after_cap_s
    ],
)
def test_retry_delay_s(server_s: float | None, expected: float) -> None:
    assert retry_delay_s(3, RetryPolicy(), server_s, FixedRng(0.5)) == pytest.approx(expected)


def test_retry_policy_defaults_are_fal_clients() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_s, policy.cap_s) == (10, 0.1, 30.0)
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "1"}, "1"), ({"retry-after": "2"}, "2"), ({"RETRY-AFTER": "3"}, "3"), ({}, None)],
)
def test_header_value_ignores_case(headers: dict[str, str], expected: str | None) -> None:
    assert header_value(headers, "Retry-After") == expected
