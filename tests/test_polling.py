import pytest

from jobs.polling import PollPolicy, PollState, next_poll_delay_s, typical_run_s

POLICY = PollPolicy(
    first_delay_s=1.0, min_delay_s=0.1, max_delay_s=30.0, overdue_factor=0.5, learning_factor=0.5, jitter=0.0, margin_s=0.05
)


@pytest.mark.parametrize(
    ("state", "delay_s"),
    [
        # Nothing learnt yet: the first delay, then half the time waited so far.
        (PollState(0, 0.0, None), 1.0),
        (PollState(1, 1.0, None), 0.5),
        (PollState(3, 4.0, None), 2.0),
        (PollState(9, 600.0, None), 30.0),
        # Known run time: aim just past the expected end.
        (PollState(0, 0.01, 2.0), 2.04),
        (PollState(1, 1.0, 2.0), 1.05),
        # Overdue: back off with how late it is, never below the minimum.
        (PollState(1, 2.1, 2.0), 0.1),
        (PollState(2, 3.05, 2.0), 0.5),
        (PollState(5, 62.05, 2.0), 30.0),
        # Queued at fal: position 10 with 5 running at once drains in 4 s, then it runs 2 s.
        (PollState(0, 0.0, 2.0, queue_position=10, concurrency=5), 6.05),
        (PollState(0, 0.0, 2.0, queue_position=1000, concurrency=1), 30.0),
        (PollState(0, 0.0, 2.0, queue_position=0, concurrency=0), 2.05),
        # Still queued long after submit: it has not run yet, so not "overdue".
        (PollState(3, 9.0, 2.0, queue_position=0, concurrency=4), 2.05),
    ],
)
def test_next_poll_delay(state: PollState, delay_s: float) -> None:
    assert next_poll_delay_s(state, POLICY, rand=0.5) == pytest.approx(delay_s)


@pytest.mark.parametrize("rand", [0.0, 0.3, 0.999])
def test_jitter_only_stretches_and_stays_capped(rand: float) -> None:
    policy = PollPolicy(jitter=0.1, margin_s=0.0)
    delay = next_poll_delay_s(PollState(0, 0.0, 2.0), policy, rand)
    assert 2.0 <= delay <= 2.2
    assert next_poll_delay_s(PollState(9, 10_000.0, 2.0), policy, rand) == policy.max_delay_s


@pytest.mark.parametrize(
    ("actual_s", "max_polls"), [(1.9, 1), (2.0, 1), (2.04, 1), (2.3, 3), (3.0, 5), (10.0, 8), (100.0, 12)]
)
def test_polls_grow_with_the_log_of_lateness(actual_s: float, max_polls: int) -> None:
    """Poll a job whose batch typically takes 2 s but which takes `actual_s`."""
    since, polls = 0.0, 0
    while since < actual_s:
        since += next_poll_delay_s(PollState(polls, since, 2.0), PollPolicy(), rand=0.5)
        polls += 1
    assert polls <= max_polls
    assert since - max(actual_s, 2.0) <= max(0.15, 0.5 * (actual_s - 2.0)), "seen soon after it finished"


def test_typical_run_time_is_the_median() -> None:
    assert typical_run_s([]) is None
    assert typical_run_s([2.0, 2.1, 30.0]) == 2.1
