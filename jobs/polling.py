"""When to poll a submitted job next: a pure function of what is known so far.

The first poll aims at when the job should be done (the batch's typical run
time, plus its wait in fal's queue); a job still queued is not expected before
it has run; past the expected end, polls back off geometrically with how
overdue the job is, capped far below the broker's
visibility timeout so a scheduled poll is never redelivered as lost.

With webhooks, fal says when a job ends and its step is due then: a poll is
only the safety net for a delivery that never came (dropped, or the receiver
was down), due a generous while after the job's expected end.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PollPolicy:
    #: First delay while the batch has no finished job to learn from.
    first_delay_s: float = 1.0
    min_delay_s: float = 0.1
    #: Far below Redis' default visibility timeout (3600 s).
    max_delay_s: float = 30.0
    #: Each poll past the expected end waits this fraction of the time overdue (1.0 doubles it).
    overdue_factor: float = 1.0
    #: Before any job of the batch has finished, each poll waits this fraction of the time waited.
    learning_factor: float = 0.5
    #: Delays are stretched by up to this fraction, at random, to spread polls out.
    jitter: float = 0.05
    #: Added to the expected end, so that the first poll rarely comes too early.
    margin_s: float = 0.05
    #: With webhooks: the safety poll waits this many times the expected wait, plus the grace below.
    webhook_factor: float = 2.0
    webhook_grace_s: float = 30.0
    #: ... and at most this long (a job fal keeps queued for hours is still looked at now and then).
    webhook_max_delay_s: float = 600.0


@dataclass(frozen=True)
class PollState:
    """What the runner knows of one job when it schedules its next poll."""

    polls_done: int
    #: Seconds since the job started at fal, as far as known: since it was first
    #: seen IN_PROGRESS, else since it was submitted.
    since_start_s: float
    #: Typical run time of this batch's jobs so far (None before the first finishes).
    typical_run_s: float | None
    #: fal's queue position while the job is IN_QUEUE now; None once it runs.
    queue_position: int | None = None
    #: Requests fal runs at once for this batch, at most: how fast its queue drains.
    concurrency: int = 1
    #: fal delivers a webhook when the job ends: polls are only a safety net.
    webhooks: bool = False


def next_poll_delay_s(state: PollState, policy: PollPolicy, rand: float) -> float:
    """Seconds until the next status poll; `rand` in [0, 1) draws the jitter."""
    stretch = 1.0 + policy.jitter * rand
    if state.webhooks:
        return _safety_delay_s(state, policy) * stretch
    typical_s = state.typical_run_s
    if typical_s is None:
        if state.polls_done == 0:
            return _clamp(policy.first_delay_s * stretch, policy)
        return _clamp(state.since_start_s * policy.learning_factor * stretch, policy)
    if state.queue_position is not None:
        # Still queued: it cannot end before the requests ahead drain and it runs.
        wait_s = typical_s * state.queue_position / max(1, state.concurrency)
        return _clamp((wait_s + typical_s + policy.margin_s) * stretch, policy)
    remaining_s = typical_s + policy.margin_s - state.since_start_s
    if remaining_s > policy.min_delay_s:
        return _clamp(remaining_s * stretch, policy)
    overdue_s = max(0.0, -remaining_s)
    return _clamp(overdue_s * policy.overdue_factor * stretch, policy)


def _safety_delay_s(state: PollState, policy: PollPolicy) -> float:
    """With webhooks: a generous while after the job's expected end (its queue, then its run), or after the
    time waited so far if it is overdue; before any job ended, the expected end is not known: the grace alone."""
    typical_s = state.typical_run_s
    if typical_s is None:
        expected_s = max(0.0, state.since_start_s)
    else:
        queued_s = typical_s * (state.queue_position or 0) / max(1, state.concurrency)
        expected_s = max(queued_s + typical_s - state.since_start_s, state.since_start_s)
    delay_s = expected_s * policy.webhook_factor + policy.webhook_grace_s
    return min(policy.webhook_max_delay_s, max(policy.min_delay_s, delay_s))


def typical_run_s(recent_run_s: Sequence[float]) -> float | None:
    """The median of the batch's recent run times, or None before any."""
    return statistics.median(recent_run_s) if recent_run_s else None


def _clamp(delay_s: float, policy: PollPolicy) -> float:
    return min(policy.max_delay_s, max(policy.min_delay_s, delay_s))
