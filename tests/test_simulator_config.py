"""The simulator's settings and its clocks: pure code, no server."""

from __future__ import annotations

import random
import statistics

import pytest
from pydantic import ValidationError

from runner.simulator import ManualClock, SimConfig, parse_run_time
from runner.simulator.config import RunTime


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fixed:2", RunTime("fixed", 2.0)),
        ("fixed:0", RunTime("fixed", 0.0)),
        ("fixed:0.05", RunTime("fixed", 0.05)),
        ("uniform:0.5,1.5", RunTime("uniform", 0.5, 1.5)),
        ("uniform:1,1", RunTime("uniform", 1.0, 1.0)),
        ("uniform:0,3", RunTime("uniform", 0.0, 3.0)),
        ("lognormal:1,0.5", RunTime("lognormal", 1.0, 0.5)),
        ("lognormal:2.5,0", RunTime("lognormal", 2.5, 0.0)),
    ],
)
def test_parse_run_time(spec: str, expected: RunTime) -> None:
    assert parse_run_time(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "use fixed:S"),
        ("fixed", "use fixed:S"),
        ("fixed:", "use fixed:S"),
        ("fixed:1,2", "use fixed:S"),
        ("fixed:abc", "must be numbers"),
        ("fixed:-1", "finite and >= 0"),
        ("fixed:nan", "finite and >= 0"),
        ("fixed:inf", "finite and >= 0"),
        ("uniform:1", "A <= B"),
        ("uniform:2,1", "A <= B"),
        ("uniform:1,x", "must be numbers"),
        ("lognormal:1", "MEAN > 0"),
        ("lognormal:0,1", "MEAN > 0"),
        ("lognormal:1,-0.5", "finite and >= 0"),
        ("gamma:1,2", "use fixed:S"),
        ("FIXED:1", "use fixed:S"),
    ],
)
def test_parse_run_time_refuses(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_run_time(spec)


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [("fixed:0.3", 0.3, 0.3), ("uniform:0.5,1.5", 0.5, 1.5), ("lognormal:1,0.5", 0.0, float("inf"))],
)
def test_draws_stay_in_range_and_repeat_by_seed(spec: str, low: float, high: float) -> None:
    run_time = parse_run_time(spec)
    draws = [run_time.draw_s(random.Random(7)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    rng = random.Random(7)
    assert all(low <= run_time.draw_s(rng) <= high for _ in range(1000))


def test_lognormal_mean_is_its_first_argument() -> None:
    rng = random.Random(1)
    draws = [parse_run_time("lognormal:2,0.5").draw_s(rng) for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(2.0, rel=0.03)


def test_config_checks_its_run_time_and_keeps_fals_retention() -> None:
    with pytest.raises(ValidationError, match="run time 'uniform:2,1'"):
        SimConfig(run_time="uniform:2,1")
    config = SimConfig()
    assert (config.retention_s, config.large_result_retention_s) == (3600.0, 360.0)
    assert "secret" not in repr(SimConfig(key="secret", token="secret"))


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start_s=5.0)
    assert clock() == clock() == 5.0
    clock.advance(1.5)
    clock.sleep(0.5)  # returns at once, the clock moved on
    assert clock() == 7.0
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
