"""The one backoff, as a table: delays by retry, jitter, cap and the server's Retry-After."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from jobs.backoff import Backoff, backoff_delay_s

FAL_CLIENT = Backoff()  # 0.1 s doubling, capped at 30 s, jitter 0.5..1.5


@pytest.mark.parametrize(
    ("retry", "rand", "expected"),
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
        (10_000, 0.5, 30.0),  # not even past a float's range
        (0, 0.5, 0.1),  # treated as the first retry
    ],
)
def test_backoff_delay_s(retry: int, rand: float, expected: float) -> None:
    assert backoff_delay_s(retry, FAL_CLIENT, rand) == pytest.approx(expected)


def test_the_jitter_stays_in_bounds_and_does_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay_s(3, FAL_CLIENT, rng.random()) for _ in range(1000)]
    assert min(delays) >= 0.2 and max(delays) <= 0.6
    assert max(delays) - min(delays) > 0.3


@pytest.mark.parametrize(
    ("server_s", "expected"),
    [
        (None, 0.4),  # backoff for retry 3 with factor 1.0
        (0.0, 0.0),
        (5.0, 5.0),  # the server's word over the backoff
        (600.0, 120.0),  # capped by retry_after_cap_s
        (-3.0, 0.0),
    ],
)
def test_the_servers_retry_after_wins_capped(server_s: float | None, expected: float) -> None:
    assert backoff_delay_s(3, FAL_CLIENT, 0.5, server_s) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (Backoff(base_s=5.0, factor=3.0, cap_s=300.0, jitter=0.0), [5.0, 15.0, 45.0, 135.0, 300.0]),  # notify
        (Backoff(base_s=1.0, cap_s=60.0), [1.0, 2.0, 4.0, 8.0, 16.0]),  # a step that blew up
        (Backoff(base_s=0.2, cap_s=5.0, jitter=0.0), [0.2, 0.4, 0.8, 1.6, 3.2]),  # a Redis that does not answer
    ],
)
def test_each_use_has_its_own_policy_and_the_same_function(policy: Backoff, delays: list[float]) -> None:
    assert [backoff_delay_s(n, policy, 0.5) for n in range(1, 6)] == pytest.approx(delays)


def test_the_defaults_are_fal_clients_and_bad_policies_are_refused() -> None:
    assert (FAL_CLIENT.base_s, FAL_CLIENT.factor, FAL_CLIENT.cap_s, FAL_CLIENT.jitter) == (0.1, 2.0, 30.0, 0.5)
    for bad in ({"base_s": 0}, {"factor": 0.5}, {"jitter": 1.0}, {"cap_s": -1}):
        with pytest.raises(ValidationError):
            Backoff(**bad)  # type: ignore[arg-type]
