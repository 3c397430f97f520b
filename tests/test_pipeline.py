"""The job steps, called one at a time against the simulator (on a manual clock) and a real Redis."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobs.endpoints import WAN25_I2I
from jobs.job import Job, canonical_json, fingerprint
from jobs.status import JobStatus
from runner import pipeline
from runner.ledger import BatchInfo, Ledger
from runner.pipeline import Context, FollowUp
from runner.providers import Provider
from runner.queue_api import QueueClient
from runner.settings import WorkerSettings
from runner.simulator import FaultRates, SimConfig, run_simulator
from runner.simulator.clock import ManualClock

S = JobStatus
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


def run_until_quiet(world: World, follow: list[FollowUp], advance_s: float = 1.5, rounds: int = 20) -> None:
    """Run follow-ups as a worker would, moving the simulator's clock instead of waiting."""
    steps = {"submit": lambda f: pipeline.submit_job(world.ctx, "b", f.job_id, f.tries),
             "poll": lambda f: pipeline.poll_job(world.ctx, "b", f.job_id, f.token, f.tries),
             "collect": lambda f: pipeline.collect_job(world.ctx, "b", f.job_id, f.token, f.tries)}  # fmt: skip
    for _ in range(rounds):
        if not follow:
            return
        if any(f.task != "submit" for f in follow):
            world.clock.advance(advance_s)
        follow = [nxt for f in follow for nxt in steps[f.task](f)]
    raise AssertionError(f"still busy after {rounds} rounds: {follow}")


def test_a_job_goes_from_waiting_to_succeeded_with_its_files(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2)
    admitted = pipeline.admit_next(world.ctx, "b")
    assert [f.job_id for f in admitted] == ["j0", "j1"]
    after_submit = pipeline.submit_job(world.ctx, "b", "j0")
    record = world.job("j0")
    assert record.status is S.QUEUED and record.request_id and record.attempts == 1
    assert [f.task for f in after_submit] == ["poll"] and after_submit[0].token == 1
    run_until_quiet(world, [*after_submit, FollowUp("submit", "j1")])
    for job_id in ("j0", "j1", "j2"):
        done = world.job(job_id)
        assert done.status is S.SUCCEEDED, (job_id, done.error_message)
        assert (world.folder / done.outputs[0].path).is_file()
        assert (world.folder / "jobs" / f"{job_id}.json").is_file()
    assert world.ctx.ledger.in_flight("b") == 0
    assert world.stats()["submits"] == 3 and world.stats()["duplicate_submits"] == 0


def test_queue_position_and_logs_reach_the_ledger(world_factory: Any) -> None:
    world = world_factory(jobs=2, concurrency=1, run_time="fixed:10")
    follow = pipeline.admit_next(world.ctx, "b")
    polls = [f for step in follow for f in pipeline.submit_job(world.ctx, "b", step.job_id)]
    world.clock.advance(1.0)
    for step in polls:
        pipeline.poll_job(world.ctx, "b", step.job_id, step.token)
    first, second = world.job("j0"), world.job("j1")
    assert first.status is S.RUNNING and first.last_log
    assert second.status is S.QUEUED and second.queue_position == 0 and second.last_queued_at is not None


def test_a_stale_poll_does_nothing(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    [submit] = pipeline.admit_next(world.ctx, "b")
    [poll] = pipeline.submit_job(world.ctx, "b", submit.job_id)
    newer = world.ctx.ledger.next_poll_token("b", "j0")  # as a resume does
    assert pipeline.poll_job(world.ctx, "b", "j0", poll.token) == []
    assert world.stats()["status_polls"] == 0
    assert pipeline.poll_job(world.ctx, "b", "j0", newer) != []


def test_status_that_keeps_failing_never_resubmits(world_factory: Any) -> None:
    settings = WorkerSettings(max_unreachable_calls=2)
    world = world_factory(jobs=1, settings=settings)
    [submit] = pipeline.admit_next(world.ctx, "b")
    [poll] = pipeline.submit_job(world.ctx, "b", submit.job_id)
    world.ctx.queue_client = _failing_status(world.ctx.queue_client)
    follow = [poll]
    for _ in range(5):
        follow = [n for f in follow for n in pipeline.poll_job(world.ctx, "b", f.job_id, f.token, f.tries)]
    record = world.job("j0")
    assert record.status is S.FAILED and record.error_type == "status_unreachable"
    assert "not submitted again" in (record.error_message or "")
    assert world.stats()["submits"] == 1


def _failing_status(make_client: Any) -> Any:
    """Every status call fails as a proxy 502 would: the same classified error the client raises."""
    from jobs.errors import TransientQueueError

    def client_for(batch: BatchInfo) -> Any:
        client = make_client(batch)

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(client, name)

            def status(self, url: str, with_logs: bool = True) -> Any:
                raise TransientQueueError("status: HTTP 502 (proxy)", status_code=502)

        return Failing()

    return client_for


def test_a_request_fal_lost_runs_again_with_its_history(world_factory: Any) -> None:
    world = world_factory(jobs=1, faults=FaultRates(expired_result=1.0), fault_limit=1)
    run_until_quiet(world, pipeline.admit_next(world.ctx, "b"))
    record = world.job("j0")
    assert record.status is S.SUCCEEDED, record.error_message
    assert record.attempts == 2
    # Its result answered 404 (expired): fal no longer has it, so it ran again.
    assert [a.error_type for a in record.history] == ["result_lost"]
    assert record.history[0].request_id not in (None, record.request_id)
    assert world.stats()["submits"] == 2


def test_retryable_model_errors_use_up_attempts_then_fail(world_factory: Any) -> None:
    world = world_factory(jobs=1, max_attempts=3, faults=FaultRates(model_error=1.0))
    run_until_quiet(world, pipeline.admit_next(world.ctx, "b"))
    record = world.job("j0")
    assert (record.status, record.attempts, record.error_type) == (S.FAILED, 3, "runner_server_error")
    assert len(record.history) == 2
    assert world.stats()["submits"] == 3
    assert world.ctx.ledger.in_flight("b") == 0


def test_a_poll_redelivered_mid_collect_collects(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    [submit] = pipeline.admit_next(world.ctx, "b")
    [poll] = pipeline.submit_job(world.ctx, "b", submit.job_id)
    world.clock.advance(2.0)
    # The worker died right after marking it COLLECTING: the ledger says so, nothing is on disk.
    world.ctx.ledger.move("b", "j0", [S.QUEUED], S.COLLECTING, completed_at=1.0)
    assert pipeline.poll_job(world.ctx, "b", "j0", poll.token) == []
    assert world.job("j0").status is S.SUCCEEDED


def test_a_request_that_arrives_after_its_job_was_written_off_is_cancelled(world_factory: Any) -> None:
    world = world_factory(jobs=1, run_time="fixed:30")
    pipeline.admit_next(world.ctx, "b")
    world.ctx.ledger.move("b", "j0", [S.ADMITTED], S.SUBMITTING, attempts=1)
    owned = world.job("j0")
    submission = world.ctx.queue_client(world.ctx.ledger.batch("b")).submit(WAN25_I2I, owned.job.input)  # type: ignore[arg-type]
    world.ctx.ledger.move("b", "j0", [S.SUBMITTING], S.FAILED, release=True, error_type="submit_unconfirmed")
    assert pipeline._submitted(world.ctx, world.ctx.ledger.batch("b"), owned, submission) == []  # type: ignore[arg-type]
    assert world.stats()["cancels"] == 1
    assert world.job("j0").status is S.FAILED


def test_fail_job_ends_any_unfinished_job_and_frees_its_slot(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=1)
    [submit] = pipeline.admit_next(world.ctx, "b")
    follow = pipeline.fail_job(world.ctx, "b", submit.job_id, "internal_error", "boom")
    assert world.job("j0").status is S.FAILED
    assert [f.job_id for f in follow] == ["j1"], "its slot admitted the next job"
    assert pipeline.fail_job(world.ctx, "b", "j0", "internal_error", "again") == []


def test_an_unexpected_error_from_the_submit_call_is_never_sent_again(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    make_client = world.ctx.queue_client

    def exploding(batch: BatchInfo) -> Any:
        client = make_client(batch)

        class Exploding:
            def submit(self, endpoint: str, body: dict[str, Any]) -> Any:
                client.submit(endpoint, body)  # it reached fal...
                raise RuntimeError("...and then something broke")

        return Exploding()

    world.ctx.queue_client = exploding
    [submit] = pipeline.admit_next(world.ctx, "b")
    assert pipeline.submit_job(world.ctx, "b", submit.job_id) == []
    record = world.job("j0")
    assert (record.status, record.error_type) == (S.FAILED, "submit_unconfirmed")
    assert world.stats()["submits"] == 1
    assert world.ctx.ledger.in_flight("b") == 0


def test_a_job_fal_did_not_start_in_time_runs_again(world_factory: Any) -> None:
    from runner.queue_api import QueueOptions

    world = world_factory(jobs=2, max_in_flight=2, concurrency=1, run_time="fixed:5")
    client = QueueClient(world.http, world.provider, QueueOptions(start_timeout_s=2))
    world.ctx.queue_client = lambda _batch: client
    polls = [f for s in pipeline.admit_next(world.ctx, "b") for f in pipeline.submit_job(world.ctx, "b", s.job_id)]
    world.clock.advance(3.0)  # j1 waited behind j0 past its 2 s start deadline
    follow = [f for p in polls for f in pipeline.poll_job(world.ctx, "b", p.job_id, p.token)]
    record = world.job("j1")
    assert record.status is S.ADMITTED and record.error_type == "request_timeout"
    assert [a.error_type for a in record.history] == ["request_timeout"]
    assert FollowUp("submit", "j1") in follow
    assert world.job("j0").status is S.RUNNING
