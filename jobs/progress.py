"""How far a batch is and when it should end: pure functions of its counts and its recent pace."""

from __future__ import annotations

from collections.abc import Mapping

from jobs.status import JobStatus

#: The pace is measured over the jobs that ended in this last stretch of time.
PACE_WINDOW_S = 300.0


def pace_window_s(age_s: float) -> float:
    """Over how long the pace is measured: the last five minutes, or the batch's whole life if it is younger."""
    return max(1.0, min(PACE_WINDOW_S, age_s))


def progress(counts: Mapping[JobStatus, int]) -> tuple[int, int]:
    """`(jobs that ended, jobs)`."""
    return sum(n for status, n in counts.items() if status.is_final), sum(counts.values())


def eta_s(remaining: int, ended_in_window: int, window_s: float) -> float | None:
    """Seconds until the last job ends at the recent pace; 0 when none is left, None when none ended lately."""
    if remaining <= 0:
        return 0.0
    if ended_in_window <= 0:
        return None
    return remaining * window_s / ended_in_window
