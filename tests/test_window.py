"""The automatic window's rule (`jobs.window`): a table of what fal said and what the window becomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.status import JobStatus as S
from jobs.window import START, WindowRule, next_window
from runner.batches.intake import _window
from runner.batches.request import RunRequest
from runner.fal.queue_api import QueueClient
from runner.ledger.batch_info import BatchInfo
from runner.ledger.window import adjust_window
from tests.sim_world import World, run_until_quiet
from tests.test_run_e2e import run_cli


@pytest.mark.parametrize(("window", "cap", "in_flight", "ahead", "ours", "expected"), [
    (10, 40, 10, 0, 9, 11),  # none ahead and the window is full: fal could run more
    (10, 40, 6, 0, 5, 10),  # none ahead, but the window is not what holds the batch back
    (40, 40, 40, 0, 39, 40),  # never above the cap
    (22, 40, 22, 1, 21, 22),  # one of ours ahead: two waiting, as wanted
    (25, 40, 25, 4, 24, 24),  # more of ours wait than need to
    (2, 40, 2, 1, 1, 2),  # never below the floor
    (10, 40, 10, 500, 9, 10),  # more ahead than we have at fal: others' requests, ours are not the queue
    (10, 40, 10, 5, 3, 10),  # more ahead than ours that can wait (the rest run): others' too, it stays
    (10, 40, 10, None, 9, 10),  # no queue position: nothing learned
    (50, 40, 12, None, 11, 40),  # a window above a lowered cap comes down to it
    (1, 1, 1, 0, 0, 1),  # a cap of one is one
])  # fmt: skip
def test_the_window_moves_by_one_toward_fal_s_concurrency_plus_two(
    window: int, cap: int, in_flight: int, ahead: int | None, ours: int, expected: int
) -> None:
    assert next_window(window, cap, in_flight, ahead, ours) == expected


def simulate(concurrency: int, start: int, cap: int, answers: int) -> list[int]:
    """The window as submits keep coming back with fal holding `concurrency` at once, all of them ours."""
    window, seen = start, []
    for _ in range(answers):
        in_flight = window  # a batch with more jobs than the window keeps it full
        ahead = max(0, in_flight - concurrency - 1)  # the newest submit waits behind ours that wait
        window = next_window(window, cap, in_flight, ahead, in_flight - 1, WindowRule())
        seen.append(window)
    return seen


@pytest.mark.parametrize(("concurrency", "start"), [(2, 10), (20, 10), (40, 10), (4, 40)])
def test_it_settles_at_fal_s_concurrency_plus_two(concurrency: int, start: int) -> None:
    assert simulate(concurrency, start, cap=60, answers=200)[-10:] == [concurrency + 2] * 10


def auto_world(world_factory: Any, jobs: int, window: int, concurrency: int) -> World:
    world: World = world_factory(jobs=jobs, max_in_flight=window, concurrency=concurrency, run_time="fixed:1")
    info = world.ctx.ledger.batch("b")
    assert info is not None
    world.ctx.ledger.save_batch(info.model_copy(update={"window_auto": True, "window_cap": 40}))
    world.ctx.ledger.admit("b")
    return world


def window_of(world: World) -> int:
    info = world.ctx.ledger.batch("b")
    assert info is not None
    return info.max_in_flight


def test_a_window_too_wide_for_fal_narrows(world_factory: Any) -> None:
    wide = auto_world(world_factory, jobs=24, window=10, concurrency=2)
    run_until_quiet(wide, rounds=200)
    assert [wide.job(f"j{n}").status for n in range(24)] == [S.SUCCEEDED] * 24
    assert 2 <= window_of(wide) < 10 and wide.stats()["max_in_progress"] == 2


def test_a_window_too_narrow_for_fal_widens(world_factory: Any) -> None:
    narrow = auto_world(world_factory, jobs=24, window=2, concurrency=8)
    run_until_quiet(narrow, rounds=200)
    assert [narrow.job(f"j{n}").status for n in range(24)] == [S.SUCCEEDED] * 24
    assert window_of(narrow) > 2 and narrow.stats()["max_in_progress"] > 2, "it grew, and fal ran more at once"


def test_the_window_moves_in_redis_and_a_fixed_one_never(world_factory: Any) -> None:
    world = auto_world(world_factory, jobs=1, window=10, concurrency=2)
    assert adjust_window(world.ctx.ledger, "b", lambda window, cap: window + 1) == (10, 11) and window_of(world) == 11
    assert adjust_window(world.ctx.ledger, "b", lambda window, cap: cap) == (11, 40), "the cap it was recorded with"
    info = world.ctx.ledger.batch("b")
    assert info is not None
    world.ctx.ledger.save_batch(info.model_copy(update={"window_auto": False, "max_in_flight": 7}))  # a rerun, fixed
    assert adjust_window(world.ctx.ledger, "b", lambda window, cap: window + 1) is None and window_of(world) == 7


def test_a_queue_full_of_others_requests_does_not_shrink_the_window(world_factory: Any) -> None:
    world = auto_world(world_factory, jobs=6, window=10, concurrency=2)
    others = QueueClient(world.http, world.provider)
    for n in range(8):  # another client of the account keeps fal busy: 2 running, 6 waiting ahead of ours
        others.submit("fal-ai/wan-25-preview/image-to-image",
                      {"prompt": f"other {n}", "image_urls": ["https://cdn.example.test/o.png"]})
    for job_id in ("j0", "j1", "j2", "j3", "j4", "j5"):
        world.step(job_id)  # each answer: 6 or more ahead, more than ours that can wait
    assert window_of(world) == 10


def test_a_rerun_of_an_automatic_batch_keeps_what_it_learned(tmp_path: Path) -> None:
    request = RunRequest(manifest=tmp_path / "m.csv")
    learned = BatchInfo(id="m", manifest="m", folder="f", created_at=0.0, max_in_flight=23, window_auto=True)
    fixed = learned.model_copy(update={"window_auto": False})
    assert (_window(request, learned), _window(request, fixed), _window(request, None)) == (23, START, START)
    assert _window(request.model_copy(update={"window_cap": 5}), learned) == 5
    assert _window(request.model_copy(update={"max_in_flight": 7}), learned) == 7


def test_max_in_flight_is_auto_or_a_number(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("prompt,image_url\nx,https://cdn.example.test/a.png\n")
    for given in ("lots", "0", "-3"):
        done = run_cli(["run", "m.csv", "--sim", "--max-in-flight", given], tmp_path)
        assert done.returncode == 2 and "give auto, or a number of jobs" in done.stderr, given
    shown = run_cli(["run", "--help"], tmp_path)
    flat = " ".join(shown.stdout.split())
    assert "--max-in-flight auto|N" in flat and "[default: auto]" in flat and "--max-in-flight-cap" in flat
