from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner.fal.retry import header_value, is_retryable_status, retry_after_s, retryable_hint

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
FAL_ID = {"x-fal-request-id": "req-1"}


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
    ("headers", "expected"),
    [({"Retry-After": "1"}, "1"), ({"retry-after": "2"}, "2"), ({"RETRY-AFTER": "3"}, "3"), ({}, None)],
)
def test_header_value_ignores_case(headers: dict[str, str], expected: str | None) -> None:
    assert header_value(headers, "Retry-After") == expected
