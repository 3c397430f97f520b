"""The job steps, called one at a time against the simulator (on a manual clock) and a real Redis."""

from __future__ import annotations

from typing import Any

from jobs.endpoints import WAN25_I2I
from jobs.status import JobStatus
from runner.fal.queue_api import QueueClient
from runner.ledger.store import BatchInfo
from runner.settings import WorkerSettings
from runner.simulator import FaultRates
from runner.steps import pipeline
from runner.steps.pipeline import FollowUp
from tests.sim_world import run_until_quiet

S = JobStatus


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
    from runner.fal.queue_api import QueueOptions

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
