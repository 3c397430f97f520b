"""Operating an existing batch: view, cancel, retry, resume and sweep, against the simulator and Redis."""

from __future__ import annotations

from typing import Any

from jobs.status import JobStatus
from runner.batches import operations
from runner.simulator import FaultRates
from runner.steps import pipeline
from tests.sim_world import run_until_quiet

S = JobStatus


def test_view_shows_counts_jobs_at_fal_and_errors_by_type(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2, concurrency=1, run_time="fixed:10")
    for submit in pipeline.admit_next(world.ctx, "b"):
        for poll in pipeline.submit_job(world.ctx, "b", submit.job_id):
            world.clock.advance(0.5)
            pipeline.poll_job(world.ctx, "b", poll.job_id, poll.token)
    pipeline.fail_job(world.ctx, "b", "j1", "runner_server_error", "boom")
    view = operations.view_batch(world.ctx.ledger, "b")
    assert view is not None and not view.finished
    assert view.counts[S.FAILED] == 1
    assert [(r.job.id, r.status) for r in view.in_flight] == [("j0", S.RUNNING), ("j2", S.ADMITTED)]
    assert list(view.errors) == ["runner_server_error"]
    data = view.to_dict()
    assert data["errors"]["runner_server_error"]["latest"][0] == {"job_id": "j1", "row": 1, "message": "boom"}
    assert operations.view_batch(world.ctx.ledger, "nope") is None


def test_cancel_stops_admission_and_cancels_requests_at_fal(world_factory: Any) -> None:
    world = world_factory(jobs=4, max_in_flight=2, run_time="fixed:30")
    for submit in pipeline.admit_next(world.ctx, "b"):
        pipeline.submit_job(world.ctx, "b", submit.job_id)
    outcome, follow = operations.cancel_batch(world.ctx, "b")
    assert outcome == {"cancelled": 4} and follow == [], "nothing to admit, no report to write (it is followed)"
    assert world.stats()["cancels"] == 2, "the two requests at fal were cancelled there"
    assert {world.job(f"j{n}").status for n in range(4)} == {S.CANCELLED}
    assert "CANCELLATION_REQUESTED" in (world.job("j0").error_message or "")
    assert world.ctx.ledger.batch("b").state == "cancelled"  # type: ignore[union-attr]
    assert pipeline.admit_next(world.ctx, "b") == []
    assert world.ctx.ledger.in_flight("b") == 0


def test_retry_requeues_exactly_the_chosen_failures(world_factory: Any) -> None:
    world = world_factory(jobs=4, max_in_flight=4)
    run_until_quiet(world, pipeline.admit_next(world.ctx, "b"))
    assert world.ctx.ledger.counts("b")[S.SUCCEEDED] == 4
    # Make two of them failed, of different kinds (the simulator succeeded them all).
    world.ctx.ledger.move("b", "j1", [S.SUCCEEDED], S.FAILED, error_type="runner_server_error")
    world.ctx.ledger.move("b", "j2", [S.SUCCEEDED], S.FAILED, error_type="download_failed")
    requeued, follow = operations.retry_jobs(world.ctx, "b", error_types=["download_failed"])
    assert requeued == ["j2"]
    assert [f.job_id for f in follow] == ["j2"]
    run_until_quiet(world, follow)
    again = world.job("j2")
    assert (again.status, again.attempts) == (S.SUCCEEDED, 2)
    assert [a.error_type for a in again.history] == ["download_failed"]
    assert world.job("j1").status is S.FAILED, "not chosen, not retried"
    assert operations.retry_jobs(world.ctx, "b", statuses=[S.SUCCEEDED, S.FAILED], job_ids=["j0"])[0] == []
    assert world.stats()["submits"] == 5


def test_resume_renews_polls_and_writes_off_only_long_lost_submits(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=3, run_time="fixed:30")
    submits = pipeline.admit_next(world.ctx, "b")
    [old_poll] = pipeline.submit_job(world.ctx, "b", submits[0].job_id)
    world.ctx.ledger.move("b", "j1", [S.ADMITTED], S.SUBMITTING, attempts=1)  # a worker is sending it now
    follow = operations.resume_lost(world.ctx, "b")
    assert [(f.task, f.job_id) for f in follow] == [("poll", "j0"), ("submit", "j2")]
    assert follow[0].token == old_poll.token + 1, "the old poll chain is superseded"
    assert world.job("j1").status is S.SUBMITTING, "a fresh submit is left to its worker"
    world.ctx.clock = lambda: world.job("j1").updated_at + operations.SUBMIT_LOST_AFTER_S + 1
    operations.resume_lost(world.ctx, "b")
    assert (world.job("j1").status, world.job("j1").error_type) == (S.FAILED, "submit_unconfirmed")
    assert world.stats()["submits"] == 1


def test_sweep_takes_only_stale_jobs_of_open_unfinished_batches(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=2, run_time="fixed:30")
    for submit in pipeline.admit_next(world.ctx, "b"):
        pipeline.submit_job(world.ctx, "b", submit.job_id)
    assert operations.sweep(world.ctx, stale_after_s=300) == {"b": []}
    now = world.job("j0").updated_at
    world.ctx.clock = lambda: now + 301
    swept = operations.sweep(world.ctx, stale_after_s=300)
    assert sorted(f.job_id for f in swept["b"]) == ["j0", "j1"]
    world.ctx.ledger.set_batch_state("b", "cancelled")
    assert operations.sweep(world.ctx, stale_after_s=300) == {}


def test_model_failures_then_retry_succeeds(world_factory: Any) -> None:
    world = world_factory(jobs=1, max_attempts=1, faults=FaultRates(model_error=1.0), fault_limit=1)
    run_until_quiet(world, pipeline.admit_next(world.ctx, "b"))
    assert world.job("j0").status is S.FAILED
    requeued, follow = operations.retry_jobs(world.ctx, "b")
    run_until_quiet(world, follow)
    record = world.job("j0")
    assert requeued == ["j0"] and record.status is S.SUCCEEDED
    assert record.attempts == 2 and len(record.history) == 1
