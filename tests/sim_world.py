"""A simulator on a manual clock, a real Redis and a batch in the ledger, for step-by-step tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobs.endpoints import WAN25_I2I
from jobs.job import Job, canonical_json, fingerprint
from jobs.lifecycle import JobUpdate, Move, plan
from jobs.pricing import Price, Unit
from jobs.record import JobRecord
from jobs.status import JobStatus
from runner.fal.history import HistoryClient
from runner.fal.providers import Provider
from runner.fal.queue_api import QueueClient
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Ledger
from runner.ledger.timers import Timer, TimerKind
from runner.settings import WorkerSettings
from runner.simulator import SimConfig, run_simulator
from runner.simulator.clock import ManualClock
from runner.steps.context import Context
from runner.tasks import Runtime, create_app, run_timer

KEY = "pipeline-test-key"
#: Far enough ahead that every timer is due: tests move the simulator's clock instead of waiting.
EVERYTHING_DUE = 10**12


@dataclass
class World:
    ctx: Context
    sim: Any
    clock: ManualClock
    folder: Path
    http: httpx.Client
    provider: Provider
    runtime: Runtime

    def job(self, job_id: str) -> JobRecord:
        record = self.ctx.ledger.record("b", job_id)
        assert record is not None
        return record

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.sim.stats()
        return stats

    def due(self) -> list[Timer]:
        """Every timer set, soonest first (none is claimed)."""
        members = self.ctx.ledger.redis.zrange(self.ctx.ledger.keys.timers, 0, -1)
        return [Timer.from_member(m) for m in members]

    def run(self, timer: Timer) -> None:
        """Run one timer as a worker that got its message would."""
        self.ctx.timers.claim_due(EVERYTHING_DUE, 30.0, 1000)
        run_timer(self.runtime, timer)

    def step(self, job_id: str) -> None:
        """Run the step of `job_id` that is due."""
        self.run(Timer.step("b", job_id))

    def force(self, job_id: str, move: Move, **values: Any) -> JobRecord:
        """Apply a move to a job by hand (to set up a case); its next step is due now."""
        record = self.job(job_id)
        applied = self.ctx.ledger.apply("b", plan(record, move, JobUpdate(**values), self.ctx.clock()))
        assert applied is not None
        return applied.record


def replace_calls(world: World, **calls: Callable[..., Any]) -> Callable[[BatchInfo], Any]:
    """Make the world's queue client answer the named calls with `calls` (each gets the real client first);
    every other call is the real client's. Returns the real clients' factory, to put back."""
    make_client = world.ctx.queue_client

    def client_for(batch: BatchInfo) -> Any:
        client = make_client(batch)

        class Replaced:
            def __getattr__(self, name: str) -> Any:
                call = calls.get(name)
                return getattr(client, name) if call is None else partial(call, client)

        return Replaced()

    world.ctx.queue_client = client_for
    return make_client


#: What a job of `make_jobs` costs at the price `priced` sets: one image at $0.05.
FIVE_CENTS = 50_000_000


def priced(world: World, max_cost_nusd: int | None = None) -> None:
    """Price the world's batch at $0.05 an image (its jobs make one each), with a cost cap."""
    info = world.ctx.ledger.batch("b")
    assert info is not None
    price = Price(WAN25_I2I, Decimal("0.05"), Unit.IMAGE, "test")
    world.ctx.ledger.save_batch(info.model_copy(update={"prices": {WAN25_I2I: price.to_dict()},
                                                        "max_cost_nusd": max_cost_nusd}))  # fmt: skip


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
             report_when_done: bool = False, **sim: Any) -> World:  # fmt: skip
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
                                    provider_url=running.base_url, report_when_done=report_when_done))  # fmt: skip
        ledger.sync_jobs("b", make_jobs(jobs), now=0.0)
        history = HistoryClient(http, Provider.fal(KEY, base_url=f"{running.base_url}/v1"))
        ctx = Context(ledger, http, lambda _b: QueueClient(http, provider), lambda _b: history,
                      settings or WorkerSettings(), random.Random(1))  # fmt: skip
        runtime = Runtime(create_app("redis://unused:1/0"), lambda: ctx)
        return World(ctx, running, clock, tmp_path / "out" / "b", http, provider, runtime)

    yield make
    for http in clients:
        http.close()
    for context in contexts:
        context.__exit__(None, None, None)


def run_until_quiet(world: World, advance_s: float = 1.5, rounds: int = 40) -> list[Timer]:
    """Run due timers as workers would, moving the simulator's clock instead of waiting; the ones run.

    Each round runs every timer set; the clock moves before a round that has
    more than submits to do, so polls find the simulator further along.
    """
    ran: list[Timer] = []
    for _ in range(rounds):
        due = world.due()
        if not due:
            return ran
        statuses = {world.ctx.ledger.record(t.owner, t.item).status for t in due if t.kind is TimerKind.STEP}  # type: ignore[union-attr]
        if statuses - {JobStatus.ADMITTED}:
            world.clock.advance(advance_s)
        for timer in due:
            world.run(timer)
            ran.append(timer)
    raise AssertionError(f"still busy after {rounds} rounds: {world.due()}")
