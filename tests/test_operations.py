"""Operating an existing batch: view, cancel, retry, resume, sweep and purge, against the simulator and Redis."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.endpoints import WAN25_I2I
from jobs.errors import PermanentQueueError, UsageError
from jobs.lifecycle import Move
from jobs.status import JobStatus
from runner.batches import operations
from runner.cli import main
from runner.fal.providers import Provider
from runner.fal.queue_api import QueueClient
from runner.ledger.timers import Timer, worker_mark
from runner.simulator import FaultRates
from tests.sim_world import EVERYTHING_DUE, FIVE_CENTS, priced, replace_calls, run_until_quiet

S = JobStatus


def test_view_shows_counts_jobs_at_fal_and_errors_by_type(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2, concurrency=1, run_time="fixed:10")
    world.ctx.ledger.admit("b")
    for job_id in ("j0", "j1"):
        world.step(job_id)
        world.clock.advance(0.5)
        world.step(job_id)
    world.force("j1", Move.FAIL, error_type="runner_server_error", error_message="boom")
    view = operations.view_batch(world.ctx.ledger, "b")
    assert view is not None and not view.finished
    assert view.counts[S.FAILED] == 1
    assert [(r.job.id, r.status) for r in view.in_flight] == [("j2", S.ADMITTED), ("j0", S.RUNNING)]
    assert view.failures == {"runner_server_error": 1}
    data = view.to_dict()
    assert data["errors"]["runner_server_error"] == {"count": 1, "latest": [{"job_id": "j1", "row": 1, "message": "boom"}]}
    assert operations.view_batch(world.ctx.ledger, "nope") is None


def commands_of(redis: Any, call: Any) -> int:
    """How many commands Redis ran for `call()` (INFO itself apart)."""

    def total() -> int:
        stats = redis.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    before = total()
    call()
    return total() - before


def test_status_reads_indexes_not_every_job(world_factory: Any) -> None:
    """`status` costs the same with 300 or 3,000 jobs waiting: it reads the few that hold a slot."""
    from tests.sim_world import make_jobs

    world = world_factory(jobs=300, max_in_flight=2)
    world.ctx.ledger.admit("b")
    few = commands_of(world.ctx.ledger.redis, lambda: operations.view_batch(world.ctx.ledger, "b"))
    world.ctx.ledger.sync_jobs("b", make_jobs(3000), now=1.0)
    many = commands_of(world.ctx.ledger.redis, lambda: operations.view_batch(world.ctx.ledger, "b"))
    view = operations.view_batch(world.ctx.ledger, "b")
    assert view is not None and view.counts[S.WAITING] == 2998 and len(view.in_flight) == 2
    assert many == few < 40


def test_status_shows_the_cost_so_far_its_cap_and_the_jobs_the_cap_kept_from_fal(
    world_factory: Any, redis_server: Any
) -> None:
    world = world_factory(jobs=5, max_in_flight=5)
    status = ["status", "b", "--redis", redis_server.broker_url]
    unpriced = CliRunner().invoke(main, status)
    assert unpriced.exit_code == 0 and "cost" not in unpriced.stdout, "no price, no cap: no cost shown"
    assert "cost" not in json.loads(CliRunner().invoke(main, [*status, "--json"]).stdout)
    priced(world, max_cost_nusd=2 * FIVE_CENTS)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    shown = CliRunner().invoke(main, status)
    assert shown.exit_code == 0, shown.output
    assert "  estimated cost so far: $0.10 of a $0.10 cap; 3 job(s) not sent for it (budget_exceeded)\n" in shown.stdout
    cost = json.loads(CliRunner().invoke(main, [*status, "--json"]).stdout)["cost"]
    assert cost == {"estimated_cost_usd": 0.1, "cap_usd": 0.1, "budget_exceeded": 3, "priced_endpoints": [WAN25_I2I]}
    priced(world)  # the same prices, no cap
    assert "  estimated cost so far: $0.10; 3 job(s)" in CliRunner().invoke(main, status).stdout


def test_retry_with_a_higher_cap_sends_the_jobs_the_cap_kept_and_a_failed_retry_changes_no_cap(
    world_factory: Any, redis_server: Any
) -> None:
    world = world_factory(jobs=4, max_in_flight=4)
    priced(world, max_cost_nusd=2 * FIVE_CENTS)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    retry = ["retry", "b", "--redis", redis_server.broker_url, "--error-type"]
    typo = CliRunner().invoke(main, [*retry, "budget_exceded", "--max-cost", "1"])
    assert typo.exit_code == 1 and "no job failed as budget_exceded" in typo.output
    assert world.ctx.ledger.batch("b").max_cost_nusd == 2 * FIVE_CENTS, "a retry that did nothing changed no cap"
    same_cap = CliRunner().invoke(main, [*retry, "budget_exceeded"])
    assert same_cap.exit_code == 0 and "2 job(s) queued" in same_cap.output
    assert "cost cap $0.10: $0.10 spent, $0.00 left; a job that does not fit ends budget_exceeded again" in \
        same_cap.output  # fmt: skip
    run_until_quiet(world)
    assert world.ctx.ledger.failures_by_type("b") == {"budget_exceeded": 2}
    raised = CliRunner().invoke(main, [*retry, "budget_exceeded", "--max-cost", "0.20"])
    assert raised.exit_code == 0 and "cost cap" not in raised.output
    run_until_quiet(world)
    assert world.ctx.ledger.counts("b")[S.SUCCEEDED] == 4 and world.stats()["submits"] == 4
    assert (world.ctx.ledger.batch("b").max_cost_nusd, world.ctx.ledger.spent_nusd("b")) == (4 * FIVE_CENTS,) * 2


def test_cancel_stops_admission_and_cancels_requests_at_fal(world_factory: Any) -> None:
    world = world_factory(jobs=4, max_in_flight=2, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    summary = operations.cancel_batch(world.ctx, "b", call_fal=True)
    assert summary == {"cancelled_at_fal": 2, "finished": 0, "never_sent": 2, "gone": 0, "not_reached_yet": 0,
                       "collecting": 0}  # fmt: skip
    assert world.stats()["cancels"] == 2, "the two requests at fal were cancelled there"
    assert {world.job(f"j{n}").status for n in range(4)} == {S.CANCELLED}
    assert "fal cancelled its request" in (world.job("j0").error_message or "")
    info = world.ctx.ledger.batch("b")
    assert info is not None and info.state == "cancelled" and info.ended_at is not None
    assert world.ctx.ledger.admit("b") == []
    assert world.ctx.ledger.in_flight("b") == 0
    run_until_quiet(world)
    assert world.stats()["cancels"] == 2 and world.due() == [], "no step of theirs is left to run"


def test_cancel_without_a_credential_hands_the_cancels_to_the_workers(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    summary = operations.cancel_batch(world.ctx, "b", call_fal=False)
    assert (summary["never_sent"], summary["cancelled_at_fal"], summary["not_reached_yet"]) == (1, 0, 2)
    assert world.stats()["cancels"] == 0, "nothing was said to fal, and nothing is reported cancelled there"
    assert {world.job(j).status for j in ("j0", "j1")} == {S.QUEUED}, "still tracked"
    assert {t.item for t in world.due()} == {"j0", "j1"}, "their steps are due now, for the workers"
    run_until_quiet(world)
    view = operations.view_batch(world.ctx.ledger, "b")
    assert view is not None and view.to_dict()["cancel"]["cancelled_at_fal"] == 2
    assert world.stats()["cancels"] == 2 and view.to_dict()["cancel"]["not_reached_yet"] == 0


def test_a_request_fal_had_finished_is_collected_not_cancelled(world_factory: Any) -> None:
    world = world_factory(jobs=1, run_time="fixed:1")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.clock.advance(2.0)  # it ran at fal: it is paid for
    summary = operations.cancel_batch(world.ctx, "b", call_fal=True)
    assert (summary["finished"], summary["cancelled_at_fal"], summary["collecting"]) == (1, 0, 1)
    run_until_quiet(world)
    record = world.job("j0")
    assert record.status is S.SUCCEEDED and (world.folder / record.outputs[0].path).is_file()
    assert world.stats()["submits"] == 1


def test_cancel_leaves_a_job_being_collected_to_finish(world_factory: Any) -> None:
    world = world_factory(jobs=1, run_time="fixed:1")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.clock.advance(2.0)
    world.force("j0", Move.COMPLETE)  # its poll saw it COMPLETED; the download is under way
    assert operations.cancel_batch(world.ctx, "b", call_fal=True)["collecting"] == 1
    world.step("j0")
    assert world.job("j0").status is S.SUCCEEDED


@pytest.mark.parametrize(("ran", "submits"), [(True, 1), (False, 2)])
def test_retry_of_a_cancelled_job_collects_what_fal_ran_and_resubmits_only_what_it_cancelled(
    world_factory: Any, ran: bool, submits: int
) -> None:
    world = world_factory(jobs=1, run_time="fixed:1")
    world.ctx.ledger.admit("b")
    world.step("j0")
    if ran:  # fal ran it although the job was cancelled (an answer that came too late, an older version)
        world.clock.advance(2.0)
        world.force("j0", Move.CANCEL, error_type="cancelled", error_message="cancelled by the user")
    else:
        operations.cancel_batch(world.ctx, "b", call_fal=True)
    assert world.job("j0").status is S.CANCELLED
    assert operations.retry_jobs(world.ctx, "b", statuses=[S.CANCELLED]) == ["j0"]
    run_until_quiet(world)
    record = world.job("j0")
    assert record.status is S.SUCCEEDED, record.error_message
    assert world.stats()["submits"] == submits and world.stats()["duplicate_submits"] == submits - 1


def test_retry_requeues_exactly_the_chosen_failures(world_factory: Any) -> None:
    world = world_factory(jobs=4, max_in_flight=4)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    assert world.ctx.ledger.counts("b")[S.SUCCEEDED] == 4
    # Make two of them failed, of different kinds, as if they had (the simulator succeeded them all).
    for job_id, error_type in (("j1", "runner_server_error"), ("j2", "download_failed")):
        record = world.job(job_id)
        world.ctx.ledger.redis.hset(world.ctx.ledger.keys.job("b", job_id), "status", "collecting")
        world.ctx.ledger.redis.hincrby(world.ctx.ledger.keys.counts("b"), "succeeded", -1)
        world.ctx.ledger.redis.hincrby(world.ctx.ledger.keys.counts("b"), "collecting", 1)
        world.ctx.ledger.redis.sadd(world.ctx.ledger.keys.in_flight("b"), job_id)
        assert record is not None
        world.force(job_id, Move.FAIL, error_type=error_type)
    requeued = operations.retry_jobs(world.ctx, "b", error_types=["download_failed"])
    assert requeued == ["j2"]
    assert [t.item for t in world.due()] == ["j2"], "admitted at once: its submit is due"
    run_until_quiet(world)
    again = world.job("j2")
    assert (again.status, again.attempts) == (S.SUCCEEDED, 2)
    assert [a.error_type for a in again.history] == ["download_failed"]
    assert world.job("j1").status is S.FAILED, "not chosen, not retried"
    assert operations.retry_jobs(world.ctx, "b", statuses=[S.SUCCEEDED, S.FAILED], job_ids=["j0"]) == []
    assert world.stats()["submits"] == 5
    assert world.ctx.ledger.batch("b").state == "done"  # type: ignore[union-attr]


def test_resume_gives_every_unfinished_step_out_again_but_leaves_running_ones(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=3, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")  # polled in a while
    world.ctx.timers.claim_due(EVERYTHING_DUE, 30.0, 10)
    running = Timer.step("b", "j1")
    assert world.ctx.timers.begin(running, worker_mark(), time.time(), 60.0) == "ok"  # a live worker runs it
    assert operations.resume_batch(world.ctx, "b") == 2
    now = time.time()
    assert world.ctx.timers.due_at(Timer.step("b", "j0")) <= now  # type: ignore[operator]
    assert world.ctx.timers.due_at(running) > now + 30, "left to its worker"  # type: ignore[operator]
    assert operations.resume_batch(world.ctx, "b", owners_gone=True) == 3
    assert world.ctx.timers.due_at(running) <= time.time()  # type: ignore[operator]
    assert world.stats()["submits"] == 1


def test_sweep_gives_a_timer_back_to_a_job_that_lost_it(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=2, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    assert operations.sweep(world.ctx, stale_after_s=300) == {}
    world.ctx.timers.forget([Timer.step("b", "j0")])  # what no move ever does
    later = time.time() + 301
    world.ctx.clock = lambda: later
    assert operations.sweep(world.ctx, stale_after_s=300) == {"b": 1}
    assert world.ctx.timers.due_at(Timer.step("b", "j0")) == later
    world.ctx.ledger.set_batch_state("b", "cancelled")  # its jobs still have cancels to make
    world.ctx.timers.forget([Timer.step("b", "j0")])
    assert operations.sweep(world.ctx, stale_after_s=300) == {"b": 1}


def test_model_failures_then_retry_succeeds(world_factory: Any) -> None:
    world = world_factory(jobs=1, max_attempts=1, faults=FaultRates(model_error=1.0), fault_limit=1)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    assert world.job("j0").status is S.FAILED
    assert world.ctx.ledger.batch("b").state == "done"  # type: ignore[union-attr]
    requeued = operations.retry_jobs(world.ctx, "b")
    assert world.ctx.ledger.batch("b").state == "open", "a retried batch runs again"  # type: ignore[union-attr]
    run_until_quiet(world)
    record = world.job("j0")
    assert requeued == ["j0"] and record.status is S.SUCCEEDED
    assert record.attempts == 2 and len(record.history) == 1
    assert world.ctx.ledger.failures_by_type("b") == {}


def test_purge_removes_only_finished_batches_and_never_their_files(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=2)
    world.ctx.ledger.admit("b")
    removed, unfinished = operations.purge_batches(world.ctx.ledger, None, "b")
    assert removed == [] and unfinished == ["b"], "it is running"
    run_until_quiet(world)
    request_id = world.job("j0").request_id
    files = sorted(p.relative_to(world.folder) for p in world.folder.rglob("*"))
    assert operations.purge_batches(world.ctx.ledger, 3600.0)[0] == [], "it ended just now"
    removed, unfinished = operations.purge_batches(world.ctx.ledger, 0.0)
    assert [(p.batch_id, p.jobs) for p in removed] == [("b", 2)] and unfinished == []
    redis = world.ctx.ledger.redis
    assert [k for k in redis.scan_iter("wb:batch:b*")] == [] and world.ctx.ledger.batch_ids() == []
    assert world.ctx.ledger.job_for_request(request_id or "") is None
    assert sorted(p.relative_to(world.folder) for p in world.folder.rglob("*")) == files


def test_purge_keeps_an_ended_batch_until_its_report_is_written(world_factory: Any) -> None:
    world = world_factory(jobs=1, report_when_done=True)
    world.ctx.ledger.admit("b")
    world.force("j0", Move.FAIL, error_type="x")
    assert operations.purge_batches(world.ctx.ledger, 0.0, "b") == ([], ["b"]), "its report is still due"
    world.run(Timer.end("b"))
    removed, _ = operations.purge_batches(world.ctx.ledger, 0.0, "b")
    assert [p.batch_id for p in removed] == ["b"] and (world.folder / "report.json").is_file()


def test_retry_is_refused_while_the_cancels_of_a_batch_are_not_settled(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    operations.cancel_batch(world.ctx, "b", call_fal=False)  # the workers have yet to cancel j0 and j1 at fal
    with pytest.raises(UsageError, match="2 request\\(s\\) of its cancel are not settled yet"):
        operations.retry_jobs(world.ctx, "b", statuses=[S.CANCELLED], job_ids=["j2"])
    assert world.ctx.ledger.batch("b").state == "cancelled"  # type: ignore[union-attr]
    run_until_quiet(world)
    assert world.stats()["cancels"] == 2
    assert operations.retry_jobs(world.ctx, "b", statuses=[S.CANCELLED], job_ids=["j2"]) == ["j2"]


def test_a_cancel_refused_to_this_shell_leaves_the_jobs_to_the_workers(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=2, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    wrong = Provider.fal("not-the-key", base_url=world.sim.base_url)  # the operator's shell has a stale key
    shell = replace(world.ctx, queue_client=lambda _batch: QueueClient(world.http, wrong))
    summary = operations.cancel_batch(shell, "b", call_fal=True)
    assert (summary["cancelled_at_fal"], summary["not_reached_yet"]) == (0, 2), "nothing is said cancelled"
    assert {world.job(j).status for j in ("j0", "j1")} == {S.QUEUED}, "nor failed: still tracked"
    run_until_quiet(world)  # the workers, with the right key
    assert {world.job(j).status for j in ("j0", "j1")} == {S.CANCELLED}
    assert world.ctx.ledger.tallies("b") == {"cancelled_at_fal": 2}


def test_a_cancel_fal_does_not_take_follows_the_job_to_its_end(world_factory: Any) -> None:
    world = world_factory(jobs=1, run_time="fixed:2")
    world.ctx.ledger.admit("b")
    world.step("j0")

    def cancel(client: QueueClient, url: str) -> Any:
        raise PermanentQueueError("cancel: HTTP 403: not allowed", status_code=403)

    replace_calls(world, cancel=cancel)
    operations.cancel_batch(world.ctx, "b", call_fal=False)
    run_until_quiet(world)
    record = world.job("j0")
    assert record.status is S.SUCCEEDED and (world.folder / record.outputs[0].path).is_file(), "paid for: collected"
    assert world.ctx.ledger.tallies("b") == {"finished": 1}
