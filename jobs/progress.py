"""How far a batch is and when it should end: pure functions of its counts and its recent pace."""

from __future__ import annotations

from collections.abc import Mapping

from jobs.status import JobStatus

#: The pace is measured over the jobs that ended in this last stretch of time.
PACE_WINDOW_S = 300.0


def pace_window_s(age_s: float) -> float:
    """How far back the pace looks: the last five minutes, or the batch's whole life if it is younger. The pace is
    then measured from the first job that ended in it, so a batch resumed a minute ago is paced on that minute."""
    return max(1.0, min(PACE_WINDOW_S, age_s))


def progress(counts: Mapping[JobStatus, int]) -> tuple[int, int]:
    """`(jobs that ended, jobs)`."""
    return sum(n for status, n in counts.items() if status.is_final), sum(counts.values())


def eta_s(remaining: int, ended: int, over_s: float) -> float | None:
    """Seconds until the last job ends at the pace of `ended` jobs in `over_s` seconds; 0 when none is left,
    None when none ended lately."""
    if remaining <= 0:
        return 0.0
    if ended <= 0:
        return None
    return remaining * max(over_s, 1.0) / ended
