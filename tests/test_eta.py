"""How far a batch is and when it should end (`jobs.progress`), and the ledger's count of recent ends behind it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobs.lifecycle import Move
from jobs.progress import PACE_WINDOW_S, eta_s, pace_window_s, progress
from jobs.status import JobStatus as S
from runner.ledger.overview import ended_since


@pytest.mark.parametrize(("remaining", "ended", "over_s", "expected"), [
    (0, 0, 300.0, 0.0),  # nothing left: it ends now
    (100, 0, 300.0, None),  # nothing ended lately: no pace to go by
    (100, 50, 300.0, 600.0),  # 50 in 300 s: 100 more take 600 s
    (10, 10, 60.0, 60.0),  # a batch resumed a minute ago is paced on that minute
    (5, 1, 0.0, 5.0),  # one end just now: at least a second apiece, never a division by zero
])  # fmt: skip
def test_eta(remaining: int, ended: int, over_s: float, expected: float | None) -> None:
    assert eta_s(remaining, ended, over_s) == expected


def test_the_pace_looks_back_five_minutes_or_the_batch_s_life() -> None:
    assert (pace_window_s(30.0), pace_window_s(7200.0), pace_window_s(0.0)) == (30.0, PACE_WINDOW_S, 1.0)


def test_progress_counts_final_jobs() -> None:
    counts = {status: 0 for status in S} | {S.SUCCEEDED: 3, S.FAILED: 1, S.CANCELLED: 1, S.RUNNING: 2, S.WAITING: 4}
    assert progress(counts) == (5, 11)


def test_the_ledger_counts_recent_ends_and_the_first_of_them(world_factory: Any) -> None:
    world = world_factory(jobs=4)
    assert ended_since(world.ctx.ledger, "b", 0.0) == (0, None)
    before = time.time()
    world.force("j0", Move.FAIL, error_type="x")
    world.force("j2", Move.FAIL, error_type="y")
    ended, first = ended_since(world.ctx.ledger, "b", before)
    assert ended == 2 and first is not None and before <= first <= time.time()
    assert ended_since(world.ctx.ledger, "b", time.time() + 1) == (0, None)
