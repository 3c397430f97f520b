"""A simulator on a manual clock, a real Redis and a batch in the ledger, for step-by-step tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobs.endpoints import WAN25_I2I
from jobs.job import Job, canonical_json, fingerprint
from runner.fal.providers import Provider
from runner.fal.queue_api import QueueClient
from runner.ledger.store import BatchInfo, Ledger
from runner.settings import WorkerSettings
from runner.simulator import SimConfig, run_simulator
from runner.simulator.clock import ManualClock
from runner.steps import pipeline
from runner.steps.context import Context
from runner.steps.pipeline import FollowUp

KEY = "pipeline-test-key"


@dataclass
class World:
    ctx: Context
    sim: Any
    clock: ManualClock
    folder: Path
    http: httpx.Client
    provider: Provider

    def job(self, job_id: str) -> Any:
        record = self.ctx.ledger.record("b", job_id)
        assert record is not None
        return record

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.sim.stats()
        return stats


def make_jobs(count: int) -> list[Job]:
    jobs = []
    for n in range(count):
        body = {"prompt": f"p{n}", "image_urls": ["https://cdn.example.test/a.png"], "image_size": "square", "seed": n}
        jobs.append(Job(f"j{n}", WAN25_I2I, body, fingerprint(WAN25_I2I, canonical_json(body)), "m.jsonl", n + 1, n))
    return jobs


@pytest.fixture
def world_factory(redis_client: redis.Redis, tmp_path: Path) -> Iterator[Any]:
    contexts: list[Any] = []
    clients: list[httpx.Client] = []

    def make(jobs: int = 2, max_in_flight: int = 2, max_attempts: int = 3, settings: WorkerSettings | None = None,
             **sim: Any) -> World:  # fmt: skip
        clock = ManualClock()
        config = SimConfig(key=KEY, seed=1, **{"concurrency": 2, "run_time": "fixed:1", **sim})
        context = run_simulator(config, clock=clock)
        running = context.__enter__()
        contexts.append(context)
        http = httpx.Client()
        clients.append(http)
        provider = Provider.fal(KEY, base_url=running.base_url)
        ledger = Ledger(redis_client)
        (tmp_path / "m.jsonl").write_text("")
        ledger.save_batch(BatchInfo(id="b", manifest=str(tmp_path / "m.jsonl"), folder=str(tmp_path / "out" / "b"),
                                    created_at=0.0, max_in_flight=max_in_flight, max_attempts=max_attempts,
                                    provider_url=running.base_url))  # fmt: skip
        ledger.sync_jobs("b", make_jobs(jobs), now=0.0)
        ctx = Context(ledger, http, lambda _b: QueueClient(http, provider), settings or WorkerSettings(),
                      random.Random(1))  # fmt: skip
        return World(ctx, running, clock, tmp_path / "out" / "b", http, provider)

    yield make
    for http in clients:
        http.close()
    for context in contexts:
        context.__exit__(None, None, None)


def run_until_quiet(world: World, follow: list[FollowUp], advance_s: float = 1.5, rounds: int = 20,
                    on_end: Callable[[FollowUp], None] | None = None) -> None:  # fmt: skip
    """Run follow-ups as a worker would, moving the simulator's clock instead of waiting; ends go to `on_end`."""
    steps = {"submit": lambda f: pipeline.submit_job(world.ctx, "b", f.job_id, f.tries),
             "poll": lambda f: pipeline.poll_job(world.ctx, "b", f.job_id, f.token, f.tries),
             "collect": lambda f: pipeline.collect_job(world.ctx, "b", f.job_id, f.token, f.tries),
             "end": lambda f: _ended(f, on_end)}  # fmt: skip
    for _ in range(rounds):
        if not follow:
            return
        if any(f.task != "submit" for f in follow):
            world.clock.advance(advance_s)
        follow = [nxt for f in follow for nxt in steps[f.task](f)]
    raise AssertionError(f"still busy after {rounds} rounds: {follow}")


def _ended(follow: FollowUp, on_end: Callable[[FollowUp], None] | None) -> list[FollowUp]:
    assert on_end is not None, f"unexpected end of the batch: {follow}"
    on_end(follow)
    return []
