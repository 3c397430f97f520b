"""The job steps, run one timer at a time against the simulator (on a manual clock) and a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs.decisions import Limits
from jobs.endpoints import WAN25_I2I
from jobs.errors import PermanentQueueError, TransientQueueError
from jobs.lifecycle import Move
from jobs.status import JobStatus
from runner.fal.queue_api import QueueClient, QueueOptions
from runner.ledger.batch_info import BatchInfo
from runner.ledger.timers import Timer, worker_mark
from runner.settings import WorkerSettings
from runner.simulator import FaultRates
from runner.steps import pipeline
from tests.sim_world import EVERYTHING_DUE, FIVE_CENTS, priced, replace_calls, run_until_quiet

S = JobStatus


def test_a_job_goes_from_waiting_to_succeeded_with_its_files(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2)
    assert world.ctx.ledger.admit("b") == ["j0", "j1"]
    assert [t.item for t in world.due()] == ["j0", "j1"], "their submits are due"
    world.step("j0")
    record = world.job("j0")
    assert record.status is S.QUEUED and record.request_id and record.attempts == 1
    assert world.ctx.ledger.job_for_request(record.request_id) == ("b", "j0")
    run_until_quiet(world)
    for job_id in ("j0", "j1", "j2"):
        done = world.job(job_id)
        assert done.status is S.SUCCEEDED, (job_id, done.error_message)
        assert (world.folder / done.outputs[0].path).is_file()
        assert (world.folder / "jobs" / f"{job_id}.json").is_file()
        assert done.started_at is not None and done.submitted_at <= done.started_at <= done.completed_at  # type: ignore[operator]
    assert world.ctx.ledger.in_flight("b") == 0 and world.due() == []
    assert world.stats()["submits"] == 3 and world.stats()["duplicate_submits"] == 0
    assert world.ctx.ledger.batch("b").state == "done"  # type: ignore[union-attr]


def test_queue_position_and_logs_reach_the_ledger(world_factory: Any) -> None:
    world = world_factory(jobs=2, concurrency=1, run_time="fixed:10")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    world.clock.advance(1.0)
    world.step("j0")
    world.step("j1")
    first, second = world.job("j0"), world.job("j1")
    assert first.status is S.RUNNING and first.last_log
    assert second.status is S.QUEUED and second.queue_position == 0 and second.last_queued_at is not None
    counts = world.ctx.ledger.counts("b")
    assert (counts[S.RUNNING], counts[S.QUEUED]) == (1, 1), "what fal said last"


def test_a_request_fal_queues_again_shows_as_queued(world_factory: Any) -> None:
    """fal may requeue a request it retries on its side: the ledger follows what fal says last."""
    world = world_factory(jobs=1, run_time="fixed:10")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.clock.advance(1.0)
    world.step("j0")
    assert world.job("j0").status is S.RUNNING
    record = world.force("j0", Move.SEEN_QUEUED, queue_position=3)
    assert record.status is S.QUEUED and world.ctx.ledger.counts("b")[S.QUEUED] == 1


def test_a_stale_message_does_nothing(world_factory: Any) -> None:
    """A message for a timer not due (redelivered late, or sent twice) is dropped at `begin`."""
    world = world_factory(jobs=1)
    world.ctx.ledger.admit("b")
    world.step("j0")
    polls_before = world.stats()["status_polls"]
    timer = Timer.step("b", "j0")
    assert world.ctx.timers.begin(timer, worker_mark(), world.ctx.clock(), 15.0) == "early"
    assert world.stats()["status_polls"] == polls_before
    world.ctx.timers.claim_due(EVERYTHING_DUE, 30.0, 10)
    mark = worker_mark()
    assert world.ctx.timers.begin(timer, mark, world.ctx.clock(), 15.0) == "ok"
    assert world.ctx.timers.begin(timer, worker_mark(), world.ctx.clock(), 15.0) == "busy", "one worker at a time"


def test_status_that_keeps_failing_never_resubmits_and_cancels_at_fal(world_factory: Any) -> None:
    settings = WorkerSettings(limits=Limits(unreachable_calls=2))
    world = world_factory(jobs=1, settings=settings, run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    # the same classified error the client raises for a proxy's 502
    proxy_502 = TransientQueueError("status: HTTP 502 (proxy)", status_code=502)
    world.ctx.queue_client = _status_raising(world.ctx.queue_client, proxy_502)
    for _ in range(3):
        world.step("j0")
    record = world.job("j0")
    assert record.status is S.FAILED and record.error_type == "status_unreachable"
    assert "not submitted again" in (record.error_message or "")
    assert world.stats()["submits"] == 1
    assert world.stats()["cancels"] == 1, "given up, it is cancelled at fal rather than left running"


def _status_raising(make_client: Any, error: Exception) -> Any:
    """Queue clients whose every status call raises `error`; their other calls go to fal."""

    def client_for(batch: BatchInfo) -> Any:
        client = make_client(batch)

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(client, name)

            def status(self, url: str, with_logs: bool = True) -> Any:
                raise error

        return Failing()

    return client_for


def test_a_request_fal_lost_runs_again_with_its_history(world_factory: Any) -> None:
    world = world_factory(jobs=1, faults=FaultRates(expired_result=1.0), fault_limit=1)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    record = world.job("j0")
    assert record.status is S.SUCCEEDED, record.error_message
    assert record.attempts == 2
    # Its result answered 404 (expired): fal no longer has it, so it ran again.
    assert [a.error_type for a in record.history] == ["result_lost"]
    assert record.history[0].request_id not in (None, record.request_id)
    assert world.ctx.ledger.job_for_request(record.history[0].request_id or "") == ("b", "j0"), "old attempts too"
    assert world.stats()["submits"] == 2


def test_retryable_model_errors_use_up_attempts_then_fail(world_factory: Any) -> None:
    world = world_factory(jobs=1, max_attempts=3, faults=FaultRates(model_error=1.0))
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    record = world.job("j0")
    assert (record.status, record.attempts, record.error_type) == (S.FAILED, 3, "runner_server_error")
    assert len(record.history) == 2
    assert world.stats()["submits"] == 3
    assert world.ctx.ledger.in_flight("b") == 0
    assert world.ctx.ledger.failures_by_type("b") == {"runner_server_error": 1}


def test_a_worker_that_died_mid_collect_is_taken_over(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.clock.advance(2.0)
    # The worker died right after marking it COLLECTING: the ledger says so, a half file is on disk.
    world.force("j0", Move.COMPLETE, completed_at=1.0)
    (world.folder / "images").mkdir(parents=True, exist_ok=True)
    leftover = world.folder / "images" / ".j0_0.png.0123abcd.part"
    leftover.write_bytes(b"half")
    world.step("j0")
    assert world.job("j0").status is S.SUCCEEDED
    assert not leftover.exists()


def test_a_request_that_lands_as_its_batch_is_cancelled_is_cancelled_at_fal_by_its_next_step(
    world_factory: Any,
) -> None:
    world = world_factory(jobs=1, run_time="fixed:30")
    world.ctx.ledger.admit("b")

    def submit(client: QueueClient, endpoint: str, body: dict[str, Any], webhook_url: str | None = None) -> Any:
        submission = client.submit(endpoint, body, webhook_url)
        world.ctx.ledger.set_batch_state("b", "cancelled")  # `wan-batch cancel` while the call was out
        return submission

    replace_calls(world, submit=submit)
    world.step("j0")
    landed = world.job("j0")
    assert landed.status is S.QUEUED and landed.request_id, "a request fal accepted is stored, never lost"
    world.step("j0")
    record = world.job("j0")
    assert world.stats()["cancels"] == 1 and world.stats()["submits"] == 1
    assert record.status is S.CANCELLED and record.request_id == landed.request_id
    assert "fal cancelled its request" in (record.error_message or "")
    assert world.ctx.ledger.tallies("b") == {"cancelled_at_fal": 1}


def _exploding_after_the_send(world: Any) -> None:
    def submit(client: QueueClient, endpoint: str, body: dict[str, Any], webhook_url: str | None = None) -> Any:
        client.submit(endpoint, body, webhook_url)  # it reached fal...
        raise RuntimeError("...and then something broke")

    replace_calls(world, submit=submit)


def test_an_unexpected_error_from_the_submit_call_is_never_sent_again_without_a_history(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    _exploding_after_the_send(world)
    world.ctx.history_client = lambda _batch: None  # a gateway, or --api-url none
    world.ctx.ledger.admit("b")
    world.step("j0")
    record = world.job("j0")
    assert (record.status, record.error_type) == (S.FAILED, "submit_unconfirmed")
    assert "check fal's dashboard" in (record.error_message or "")
    assert world.stats()["submits"] == 1
    assert world.ctx.ledger.in_flight("b") == 0


def test_an_unexpected_error_from_the_submit_call_is_looked_up_and_adopted(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    _exploding_after_the_send(world)
    world.ctx.ledger.admit("b")
    world.step("j0")
    record = world.job("j0")
    assert record.status is S.UNCONFIRMED and record.request_id is None
    assert world.ctx.ledger.in_flight("b") == 0, "it leaves its slot while it is looked for"
    run_until_quiet(world)
    done = world.job("j0")
    assert done.status is S.SUCCEEDED, done.error_message
    assert [(r.outcome, r.attempt) for r in done.reconciled] == [("adopted", 1)]
    assert world.stats()["submits"] == 1 and done.attempts == 1


def test_a_worker_that_died_mid_submit_is_looked_for_never_resent_blind(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    world.ctx.ledger.admit("b")
    # Its worker marked it sent, then died before the call left: fal never had it.
    world.force("j0", Move.SEND, attempts=1, sent_at=world.ctx.clock(), sent_digest="0" * 32)
    world.step("j0")
    record = world.job("j0")
    assert record.status is S.UNCONFIRMED and world.stats()["submits"] == 0


def test_a_job_fal_did_not_start_in_time_runs_again(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=2, concurrency=1, run_time="fixed:5")
    client = QueueClient(world.http, world.provider, QueueOptions(start_timeout_s=2))
    world.ctx.queue_client = lambda _batch: client
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    world.clock.advance(3.0)  # j1 waited behind j0 past its 2 s start deadline
    world.step("j0")
    world.step("j1")
    record = world.job("j1")
    assert record.status is S.ADMITTED and record.error_type == "request_timeout"
    assert [a.error_type for a in record.history] == ["request_timeout"]
    assert Timer.step("b", "j1") in world.due(), "its new submit is due"
    assert world.job("j0").status is S.RUNNING


@pytest.mark.parametrize("crashes", [1, 3])
def test_a_step_that_blows_up_runs_again_on_its_own_budget(world_factory: Any, crashes: int) -> None:
    """Regression: a poll with 8 transient failures behind it survives an unexpected error."""
    world = world_factory(jobs=1, settings=WorkerSettings(limits=Limits(step_errors=2)), run_time="fixed:30")
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.force("j0", Move.RETRY, call_failures=8)
    make_client = world.ctx.queue_client
    world.ctx.queue_client = _status_raising(make_client, ConnectionError("Redis blinked"))  # what no step expects
    for _ in range(crashes):
        world.step("j0")
    record = world.job("j0")
    if crashes <= 2:
        assert (record.status, record.step_errors, record.call_failures) == (S.QUEUED, crashes, 8)
        world.ctx.queue_client = make_client
        world.step("j0")
        assert world.job("j0").step_errors == 0, "progress starts the count again"
    else:
        assert (record.status, record.error_type) == (S.FAILED, "internal_error")
        assert "failed 3 times: ConnectionError: Redis blinked" in (record.error_message or "")
        assert world.stats()["cancels"] == 1, "its request is cancelled, not left running billed"


def test_a_slot_freed_by_a_step_admits_the_next_job(world_factory: Any) -> None:
    world = world_factory(jobs=2, max_in_flight=1, faults=FaultRates(model_error=1.0))
    world.ctx.ledger.admit("b")
    world.ctx.settings = WorkerSettings(limits=Limits())
    run_until_quiet(world)
    assert {world.job("j0").status, world.job("j1").status} == {S.FAILED}
    assert world.stats()["max_in_progress"] == 1


def test_run_job_step_on_a_job_that_is_gone_does_nothing(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    assert pipeline.run_job_step(world.ctx, "b", "nope", worker_mark()) == []
    assert pipeline.run_job_step(world.ctx, "gone", "j0", worker_mark()) == []


def test_the_first_poll_of_a_submit_to_wan25_uses_its_queue(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    world.ctx.ledger.admit("b")
    world.step("j0")
    assert world.job("j0").status_url.startswith(world.sim.base_url)  # type: ignore[union-attr]
    assert WAN25_I2I.startswith("fal-ai/wan-25-preview")


def test_a_result_not_ready_after_completed_is_fetched_again_on_its_budget(world_factory: Any) -> None:
    from jobs.errors import ResultNotReadyError

    world = world_factory(jobs=1, settings=WorkerSettings(limits=Limits(unreachable_calls=3)))
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.clock.advance(2.0)

    def result(client: QueueClient, url: str) -> Any:
        raise ResultNotReadyError("result: HTTP 202 (still IN_PROGRESS)", status_code=202)

    replace_calls(world, result=result)
    world.step("j0")  # COMPLETED: the result is fetched at once, and is not ready
    due = []
    for _ in range(3):
        record = world.job("j0")
        assert record.status is S.COLLECTING
        due.append(world.ctx.timers.due_at(Timer.step("b", "j0")) - record.updated_at)  # type: ignore[operator]
        world.step("j0")
    record = world.job("j0")
    assert (record.status, record.error_type) == (S.FAILED, "result_unreachable"), "its budget ran out"
    assert due == pytest.approx([0.1, 0.2, 0.4], abs=0.01), "each wait longer than the last"
    assert world.stats()["submits"] == 1


def test_a_job_is_final_only_once_its_sidecar_is_on_disk(world_factory: Any) -> None:
    """The race a SIGKILL between the two found: the ledger said succeeded, the sidecar was never written."""
    world = world_factory(jobs=1)
    world.ctx.ledger.admit("b")
    ledger = world.ctx.ledger
    real_apply = ledger.apply
    seen: list[bool] = []

    def apply_checking_the_sidecar(batch_id: str, plan: Any, *args: Any, **kwargs: Any) -> Any:
        if plan.target.is_final:
            seen.append((world.folder / "jobs" / "j0.json").is_file())
        return real_apply(batch_id, plan, *args, **kwargs)

    ledger.apply = apply_checking_the_sidecar  # type: ignore[method-assign]
    run_until_quiet(world)
    assert world.job("j0").status is S.SUCCEEDED and seen == [True]


def test_the_report_writes_a_sidecar_a_final_job_lacks(world_factory: Any) -> None:
    from runner.batches.intake import write_report

    world = world_factory(jobs=2)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    sidecar = world.folder / "jobs" / "j1.json"
    sidecar.unlink()  # as a run killed at the wrong moment by an older version left it
    write_report(world.ctx.ledger, world.ctx.ledger.batch("b"), None, {})  # type: ignore[arg-type]
    assert json.loads(sidecar.read_text())["status"] == "succeeded"


def test_after_fal_says_it_has_no_such_app_the_other_jobs_of_it_are_not_sent(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=3)
    for job_id in ("j0", "j1", "j2"):  # a mistyped endpoint: fal answers 404 Application not found
        ledger = world.ctx.ledger
        stored = json.loads(ledger.redis.hget(ledger.keys.side("b", "job"), job_id))
        ledger.redis.hset(ledger.keys.side("b", "job"), job_id,
                          json.dumps({**stored, "endpoint": "fal-ai/wan-26-preview/image-to-image"}))  # fmt: skip
    sent: list[str] = []

    def submit(client: QueueClient, endpoint: str, body: dict[str, Any], webhook_url: str | None = None) -> Any:
        sent.append(endpoint)
        return client.submit(endpoint, body, webhook_url)

    replace_calls(world, submit=submit)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    records = [world.job(j) for j in ("j0", "j1", "j2")]
    assert {(r.status, r.error_type) for r in records} == {(S.FAILED, "unknown_endpoint")}
    assert len(sent) == 1, "one 404 is enough"
    assert all("fal-ai/wan-26-preview/image-to-image" in (r.error_message or "") for r in records)
    from runner.batches import operations  # a retry asks fal again: the app may exist by now

    assert len(operations.retry_jobs(world.ctx, "b", error_types=["unknown_endpoint"])) == 3
    run_until_quiet(world)
    assert len(sent) == 2


# --- cost: each attempt fal may bill is charged, one it never had or refused is not -------------------------------


def test_attempts_fal_failed_itself_are_given_back_as_they_end(world_factory: Any) -> None:
    """A 500 of fal's runner is not billed: each attempt is charged while it runs, and given back when it ends."""
    world = world_factory(jobs=1, max_attempts=3, faults=FaultRates(model_error=1.0))
    priced(world)
    world.ctx.ledger.admit("b")
    world.step("j0")
    assert world.ctx.ledger.spent_nusd("b") == FIVE_CENTS, "sent: fal may bill it"
    run_until_quiet(world)
    record = world.job("j0")
    assert (record.status, record.attempts, record.error_type) == (S.FAILED, 3, "runner_server_error")
    assert (record.charged_nusd, world.ctx.ledger.spent_nusd("b"), world.stats()["submits"]) == (0, 0, 3)


def test_a_model_error_after_inference_stays_charged(world_factory: Any) -> None:
    """A 422 from the model (here: an input image it could not read) may be billed for the GPU time spent."""
    world = world_factory(jobs=1)
    priced(world)
    ledger = world.ctx.ledger
    stored = json.loads(ledger.redis.hget(ledger.keys.side("b", "job"), "j0"))
    stored["input"]["image_urls"] = ["http://127.0.0.1:9/gone.png"]  # the simulator reads local images, as fal does
    ledger.redis.hset(ledger.keys.side("b", "job"), "j0", json.dumps(stored))
    ledger.admit("b")
    run_until_quiet(world)
    record = world.job("j0")
    assert (record.status, record.attempts, record.charged_nusd) == (S.FAILED, 1, FIVE_CENTS), record.error_message
    assert ledger.spent_nusd("b") == FIVE_CENTS


def test_a_submit_a_proxy_turned_away_is_not_charged_and_its_retry_is(world_factory: Any) -> None:
    """A proxy's 5xx before fal: nothing reached fal; the same submit again is charged once."""
    world = world_factory(jobs=1, faults=FaultRates(proxy_5xx=1.0), fault_limit=1)
    priced(world)
    world.ctx.ledger.admit("b")
    world.step("j0")
    turned_away = world.job("j0")
    assert (turned_away.status, turned_away.charged_nusd, world.ctx.ledger.spent_nusd("b")) == (S.ADMITTED, 0, 0)
    run_until_quiet(world)
    assert (world.job("j0").status, world.job("j0").charged_nusd) == (S.SUCCEEDED, FIVE_CENTS)
    assert world.ctx.ledger.spent_nusd("b") == FIVE_CENTS


def test_a_submit_fal_refused_is_not_charged(world_factory: Any) -> None:
    world = world_factory(jobs=1)
    priced(world)

    def refuse(client: QueueClient, endpoint: str, body: dict[str, Any], webhook_url: str | None = None) -> Any:
        raise PermanentQueueError("submit: HTTP 422: bad input", status_code=422, error_type="validation")

    replace_calls(world, submit=refuse)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    record = world.job("j0")
    assert (record.status, record.error_type, record.attempts, record.charged_nusd) == (S.FAILED, "validation", 1, 0)
    assert world.ctx.ledger.spent_nusd("b") == 0


def test_jobs_past_the_cap_end_budget_exceeded_and_a_higher_cap_lets_a_retry_send_them(world_factory: Any) -> None:
    world = world_factory(jobs=5, max_in_flight=5)
    priced(world, max_cost_nusd=2 * FIVE_CENTS)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)
    records = [world.job(f"j{n}") for n in range(5)]
    assert sorted(r.status.value for r in records) == ["failed"] * 3 + ["succeeded"] * 2
    assert world.stats()["submits"] == 2 and world.ctx.ledger.spent_nusd("b") == 2 * FIVE_CENTS
    over = next(r for r in records if r.status is S.FAILED)
    assert (over.error_type, over.attempts, over.charged_nusd) == ("budget_exceeded", 0, 0)
    assert "$0.05" in (over.error_message or "") and "cost cap of $0.10" in (over.error_message or "")
    assert (over.error_message or "").endswith("raise the cap (--max-cost) and retry it")
    priced(world, max_cost_nusd=5 * FIVE_CENTS)
    from runner.batches import operations

    assert len(operations.retry_jobs(world.ctx, "b", error_types=["budget_exceeded"])) == 3
    run_until_quiet(world)
    assert all(world.job(f"j{n}").status is S.SUCCEEDED for n in range(5))
    assert world.stats()["submits"] == 5 and world.ctx.ledger.spent_nusd("b") == 5 * FIVE_CENTS
