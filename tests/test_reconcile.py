"""Lost submits: what matches in fal's request history, and the reconcile step against the simulator's history."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest

from jobs.errors import PermanentQueueError
from jobs.lifecycle import Move
from jobs.reconcile import (
    DEFAULT_START_TIMEOUT_S,
    Absent,
    Adopt,
    HistoryItem,
    LookAgain,
    ReconcilePolicy,
    Unsettled,
    absent_after,
    input_digest,
    next_look_s,
    pick,
    settle,
    start_timeout_s,
)
from jobs.status import JobStatus
from runner.batches import operations
from runner.fal.history import FAL_API_URL, NO_API, HistoryClient, api_url_for
from runner.fal.providers import Provider
from runner.fal.queue_api import QueueClient
from runner.settings import WorkerSettings
from runner.simulator import FaultRates
from runner.steps import pipeline
from tests.sim_world import FIVE_CENTS, KEY, World, priced, replace_calls, run_until_quiet

S = JobStatus
POLICY = ReconcilePolicy(history_lag_s=2.0, clock_skew_s=1.0, unknown_run_s=5.0, first_look_s=0.5,
                         most_between_looks_s=2.0)  # fmt: skip


# --- what matches, and when absence is proven (pure) -------------------------------------------------------------


def test_the_digest_ignores_key_order_spacing_and_whole_floats() -> None:
    assert input_digest({"a": 1.0, "b": [2, {"c": "x"}]}) == input_digest({"b": [2.0, {"c": "x"}], "a": 1})
    assert input_digest({"a": 1.5}) != input_digest({"a": 1})
    assert input_digest({"prompt": "cat"}) != input_digest({"prompt": "cat "})
    assert len(input_digest({})) == 32


def item(request_id: str, digest: str | None, sent_at: float | None) -> HistoryItem:
    return HistoryItem(request_id, "fal-ai/x/y", digest, sent_at)


@pytest.mark.parametrize(
    ("items", "taken", "found"),
    [
        ([item("r1", "d", 100.0)], set(), "r1"),
        ([item("r1", "other", 100.0)], set(), None),  # another input
        ([item("r1", "d", 98.5)], set(), None),  # sent before the job's submit (beyond the skew)
        ([item("r1", "d", 99.5)], set(), "r1"),  # ... within the skew
        ([item("r1", "d", None)], set(), "r1"),  # the history did not say when
        ([item("r1", "d", 100.0)], {"r1"}, None),  # held by a job: an earlier attempt, or another job
        ([item("r2", "d", 105.0), item("r1", "d", 101.0)], set(), "r1"),  # the earliest sent
        ([item("r2", "d", 105.0), item("r1", "d", 101.0)], {"r1"}, "r2"),  # two jobs of the same input
    ],
)
def test_pick(items: list[HistoryItem], taken: set[str], found: str | None) -> None:
    chosen = pick(items, "d", 100.0, lambda request_id: request_id in taken, skew_s=1.0)
    assert (chosen.request_id if chosen else None) == found


def test_absence_is_proven_after_the_start_deadline_the_longest_run_and_the_lag() -> None:
    assert absent_after(1000.0, 60.0, 10.0, POLICY) == 1000.0 + 60.0 + 15.0 + 2.0 + 1.0
    assert absent_after(1000.0, 60.0, None, POLICY) == 1000.0 + 60.0 + 7.5 + 2.0 + 1.0  # no run seen yet
    assert start_timeout_s("low", None) == DEFAULT_START_TIMEOUT_S["low"] > start_timeout_s(None, None)
    assert start_timeout_s("low", 42.0) == 42.0


@pytest.mark.parametrize(
    ("found", "complete", "blind", "looked_at", "inconclusive", "expected"),
    [
        ("r1", False, 0, 100.0, 0, Adopt("r1")),  # found is found, whenever
        (None, True, 0, 150.0, 0, LookAgain(2.0)),  # before the deadline nothing proves absence
        (None, True, 3, 150.0, 0, LookAgain(2.0)),
        (None, True, 0, 200.0, 0, Absent()),  # a full look that began at the deadline
        (None, False, 0, 200.0, 0, LookAgain(2.0, inconclusive=True)),  # ... cut short: counted
        (None, False, 0, 200.0, 4, Unsettled("fal's request history lists more requests than 4 looks could read")),
        (None, True, 2, 200.0, 0,
         Unsettled("fal's request history lists 2 request(s) without the input they were sent (payloads not stored),"
                   " so it cannot tell")),
    ],
)  # fmt: skip
def test_settle(found: str | None, complete: bool, blind: int, looked_at: float, inconclusive: int,
                expected: object) -> None:  # fmt: skip
    policy = POLICY.model_copy(update={"inconclusive_looks": 4})
    assert settle(found, complete, blind, looked_at, 100.0, 200.0, inconclusive, policy) == expected


def test_looks_grow_sparser_and_never_pass_the_deadline() -> None:
    assert next_look_s(now=100.0, sent_at=100.0, deadline=200.0, policy=POLICY) == 0.5
    assert next_look_s(now=104.0, sent_at=100.0, deadline=200.0, policy=POLICY) == 1.0
    assert next_look_s(now=150.0, sent_at=100.0, deadline=200.0, policy=POLICY) == 2.0
    assert next_look_s(now=199.5, sent_at=100.0, deadline=200.0, policy=POLICY) == 0.5


@pytest.mark.parametrize(
    ("stored", "scheme", "fallback", "expected"),
    [
        (None, "Key", None, FAL_API_URL),  # a fal key: fal's own Platform API
        (None, "Bearer", None, None),  # a gateway names its own, or has none
        ("http://127.0.0.1:9/v1/", "Bearer", None, "http://127.0.0.1:9/v1"),
        (NO_API, "Key", None, None),
        (None, "Key", "http://10.0.0.1/v1", "http://10.0.0.1/v1"),  # the worker's, for a batch that stored none
        ("http://a/v1", "Key", "http://b/v1", "http://a/v1"),  # what the batch stored wins
        (None, "Key", NO_API, None),
        (None, "Bearer", "http://10.0.0.1/v1", None),  # a gateway's token never goes to the worker's fal API
    ],
)
def test_where_the_history_is(stored: str | None, scheme: Any, fallback: str | None, expected: str | None) -> None:
    assert api_url_for(stored, scheme, fallback) == expected


# --- the reconcile step, against the simulator's history ------------------------------------------------------------


def reconciling_world(world_factory: Any, **sim: Any) -> World:
    """A world whose worker's clock is the simulator's (deadlines pass as the test moves it) and whose
    batch carries a 5 s start deadline."""
    world: World = world_factory(settings=WorkerSettings(reconcile=POLICY), **sim)
    offset = time.time() - world.clock()
    world.ctx.clock = lambda: offset + world.clock()
    info = world.ctx.ledger.batch("b")
    assert info is not None
    world.ctx.ledger.save_batch(info.model_copy(update={"start_timeout_s": 5.0}))
    return world


def test_a_lost_answer_of_a_request_fal_created_is_adopted_never_sent_again(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=2, faults=FaultRates(lost_submit_response=1.0), fault_limit=1)
    world.ctx.ledger.admit("b")
    world.step("j0")
    lost = world.job("j0")
    assert lost.status is S.UNCONFIRMED and lost.request_id is None and lost.sent_digest
    in_flight = world.ctx.ledger.redis.smembers(world.ctx.ledger.keys.in_flight("b"))
    assert in_flight == {b"j1"}, "it leaves its slot while it is looked for"
    run_until_quiet(world)
    done = world.job("j0")
    assert done.status is S.SUCCEEDED, done.error_message
    assert [(r.outcome, r.attempt) for r in done.reconciled] == [("adopted", 1)]
    assert done.reconciled[0].request_id == done.request_id and done.attempts == 1 and not done.history
    assert world.ctx.ledger.job_for_request(done.request_id or "") == ("b", "j0")
    stats = world.stats()
    assert (stats["submits"], stats["duplicate_submits"]) == (2, 0)
    assert stats["history_calls"] >= 1


def test_a_lost_submit_fal_never_had_is_sent_again_only_after_its_deadline(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=1, faults=FaultRates(drop_connection=1.0), fault_limit=1)
    priced(world)
    world.ctx.ledger.admit("b")
    world.step("j0")  # the connection drops before the submit does anything: fal never has it
    lost = world.job("j0")
    assert lost.status is S.UNCONFIRMED and world.stats()["submits"] == 0
    assert lost.charged_nusd == FIVE_CENTS == world.ctx.ledger.spent_nusd("b"), "fal may have it: charged"
    assert lost.sent_at is not None and lost.reached_by is not None and lost.sent_start_timeout_s == 5.0
    assert lost.sent_at <= lost.reached_by < lost.sent_at + 1, "it can have reached fal only until its call failed"
    deadline = absent_after(lost.reached_by, 5.0, None, POLICY)
    while world.ctx.clock() < deadline - 1.0:  # looks until then find nothing, and send nothing
        world.clock.advance(1.0)
        world.step("j0")
        assert world.job("j0").status is S.UNCONFIRMED and world.stats()["submits"] == 0
    run_until_quiet(world)
    done = world.job("j0")
    assert done.status is S.SUCCEEDED, done.error_message
    assert [(r.outcome, r.request_id) for r in done.reconciled] == [("absent", None)]
    assert done.reconciled[0].resolved_at >= deadline
    assert [(a.number, a.error_type) for a in done.history] == [(1, "submit_lost")]
    assert done.attempts == 2 and world.stats()["submits"] == 1, "one request at fal in the end"
    assert done.charged_nusd == FIVE_CENTS == world.ctx.ledger.spent_nusd("b"), "the absent attempt was given back"
    submitted_at = [r["submitted_at"] for r in world.stats()["requests"].values()]
    assert len(submitted_at) == 1 and submitted_at[0] >= deadline - 0.01


def test_two_lost_submits_of_the_same_input_adopt_one_request_each(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=2, faults=FaultRates(lost_submit_response=1.0), fault_limit=2)
    twin = replace(world.job("j1").job, input=world.job("j0").job.input, fingerprint="f1")
    world.ctx.ledger.sync_jobs("b", [twin], now=world.ctx.clock())  # j1 now asks exactly what j0 asks
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.step("j1")
    assert {world.job(j).status for j in ("j0", "j1")} == {S.UNCONFIRMED}
    assert world.job("j0").sent_digest == world.job("j1").sent_digest
    run_until_quiet(world)
    adopted = {world.job(j).request_id for j in ("j0", "j1")}
    assert {world.job(j).status for j in ("j0", "j1")} == {S.SUCCEEDED}
    assert len(adopted) == 2 and None not in adopted, "never both on one request"
    assert world.stats()["submits"] == 2


def test_a_history_that_refuses_the_credential_leaves_the_job_to_a_person(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=1, faults=FaultRates(lost_submit_response=1.0), fault_limit=1)
    bearer = HistoryClient(world.http, Provider.gateway(f"{world.sim.base_url}/v1", KEY))  # a gateway's token
    world.ctx.history_client = lambda _batch: bearer
    world.ctx.ledger.admit("b")
    world.step("j0")
    world.clock.advance(3.0)
    world.step("j0")
    record = world.job("j0")
    assert (record.status, record.error_type) == (S.FAILED, "submit_unconfirmed")
    assert "request history cannot be searched" in (record.error_message or "")
    assert "check fal's dashboard" in (record.error_message or "")
    assert KEY not in (record.error_message or "")
    assert world.stats()["submits"] == 1


def test_a_look_cut_short_proves_nothing_and_too_many_leave_the_job_to_a_person(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=3, max_in_flight=3, concurrency=3)
    world.ctx.ledger.admit("b")
    run_until_quiet(world)  # three finished requests in the history, none of them the lost one
    lost = replace(world.job("j0").job, id="lost", input={"prompt": "never sent"}, fingerprint="ff")
    world.ctx.ledger.sync_jobs("b", [lost], now=world.ctx.clock())
    world.ctx.ledger.admit("b")
    world.force("lost", Move.SEND, attempts=1, sent_at=world.ctx.clock(),
                sent_digest=input_digest({"prompt": "never sent"}))  # fmt: skip
    world.step("lost")
    assert world.job("lost").status is S.UNCONFIRMED
    # A history of pages of one request, of which a look reads two: never all of it.
    short = POLICY.model_copy(update={"page_size": 1, "pages_per_look": 2, "inconclusive_looks": 2})
    world.ctx.settings = WorkerSettings(reconcile=short)
    world.clock.advance(60.0)  # far past its deadline
    for _ in range(2):
        world.step("lost")
        assert world.job("lost").status is S.UNCONFIRMED, "a look that did not read every page proves nothing"
    world.step("lost")
    record = world.job("lost")
    assert (record.status, record.error_type) == (S.FAILED, "submit_unconfirmed")
    assert "more requests than 2 looks could read" in (record.error_message or "")
    assert world.stats()["submits"] == 3


def test_absence_is_trusted_only_from_a_history_that_lists_inputs_as_sent(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=2, faults=FaultRates(drop_connection=1.0), fault_limit=1)
    world.ctx.ledger.admit("b")
    world.step("j0")  # dropped before anything was created
    for _ in range(4):  # j1 runs and succeeds: a request of the batch whose input is known
        world.step("j1")
        world.clock.advance(1.5)
    assert world.job("j1").status is S.SUCCEEDED and world.job("j0").status is S.UNCONFIRMED
    j1 = world.job("j1")
    # As if fal listed that input rewritten (its image URL swapped for a CDN copy, say).
    world.ctx.ledger.redis.hset(world.ctx.ledger.keys.job("b", "j1"), "sent_digest", json.dumps("0" * 32))
    assert j1.sent_digest != "0" * 32
    world.clock.advance(60.0)
    world.step("j0")
    record = world.job("j0")
    assert (record.status, record.error_type) == (S.FAILED, "submit_unconfirmed")
    assert "otherwise than they were sent" in (record.error_message or "")
    assert world.stats()["submits"] == 1, "never sent again on a proof it cannot trust"


def test_a_submit_of_an_older_version_without_its_digest_is_left_to_a_person(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=1)
    world.ctx.ledger.admit("b")
    world.force("j0", Move.SEND, attempts=1)  # recorded before digests were kept
    world.step("j0")
    world.step("j0")
    record = world.job("j0")
    assert (record.status, record.error_type) == (S.FAILED, "submit_unconfirmed")


def test_in_a_cancelled_batch_a_lost_submit_is_cancelled_once_proven_absent_or_collected_if_it_ran(
    world_factory: Any,
) -> None:
    world = reconciling_world(world_factory, jobs=2, max_in_flight=2,
                              faults=FaultRates(lost_submit_response=1.0), fault_limit=1)  # fmt: skip
    priced(world)
    world.ctx.ledger.admit("b")
    world.step("j0")  # created at fal, answer lost
    world.force("j1", Move.SEND, attempts=1, sent_at=world.ctx.clock(), sent_digest="0" * 32,
                sent_cost_nusd=FIVE_CENTS)  # fmt: skip
    world.step("j1")  # cut off before it left: fal never had it
    assert {world.job(j).status for j in ("j0", "j1")} == {S.UNCONFIRMED}
    summary = operations.cancel_batch(world.ctx, "b", call_fal=True)
    assert summary["not_reached_yet"] == 2
    run_until_quiet(world)
    ran, never = world.job("j0"), world.job("j1")
    assert ran.status is S.SUCCEEDED and ran.reconciled[0].outcome == "adopted", "paid for: collected"
    assert never.status is S.CANCELLED and never.reconciled[0].outcome == "absent"
    assert world.stats()["submits"] == 1
    assert (ran.charged_nusd, never.charged_nusd, world.ctx.ledger.spent_nusd("b")) == (FIVE_CENTS, 0, FIVE_CENTS)
    tallies = world.ctx.ledger.tallies("b")
    assert (tallies.get("finished"), tallies.get("never_sent")) == (1, 1)


def test_an_answer_that_comes_after_another_worker_took_over_is_adopted(world_factory: Any) -> None:
    world = reconciling_world(world_factory, jobs=1)
    world.ctx.ledger.admit("b")

    def submit(client: QueueClient, endpoint: str, body: dict[str, Any], webhook_url: str | None = None) -> Any:
        submission = client.submit(endpoint, body, webhook_url)
        # The lease lapsed: another worker found the job mid-submit and began looking for it.
        world.ctx.queue_client = make_client
        pipeline.run_job_step(world.ctx, "b", "j0", "")
        assert world.job("j0").status is S.UNCONFIRMED
        return submission

    make_client = replace_calls(world, submit=submit)
    world.step("j0")
    record = world.job("j0")
    assert record.status is S.QUEUED and record.request_id
    assert [r.outcome for r in record.reconciled] == ["adopted"]
    run_until_quiet(world)
    assert world.job("j0").status is S.SUCCEEDED and world.stats()["submits"] == 1


def answering(*pages: dict[str, Any]) -> tuple[HistoryClient, list[httpx.Request]]:
    """A history client whose API answers `pages` in turn (what the simulator never does)."""
    seen: list[httpx.Request] = []
    answers = list(pages)

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answers.pop(0))

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return HistoryClient(http, Provider.fal(KEY, base_url="https://api.example/v1")), seen


@pytest.mark.parametrize(
    "pages",
    [
        [{"items": [], "has_more": True}],  # more pages, and no way to them
        [{"items": [], "has_more": True, "next_cursor": "c1"}, {"items": [], "has_more": True, "next_cursor": "c1"}],
        [{"items": {"request_id": "r"}, "has_more": False}],
    ],
    ids=["no-cursor", "same-cursor", "no-list"],
)
def test_a_history_that_cannot_be_read_to_its_end_is_an_error_not_a_proof(pages: list[dict[str, Any]]) -> None:
    client, _ = answering(*pages)
    with pytest.raises(PermanentQueueError, match="history: ") as caught:
        client.find("fal-ai/x/y", "d" * 32, 100.0, 200.0, lambda _r: False, POLICY)
    assert caught.value.error_type == "invalid_response"


def test_a_look_asks_for_the_window_the_request_can_be_in_and_reads_every_page() -> None:
    wanted = {"prompt": "p"}
    client, seen = answering(
        {"items": [{"request_id": "r1", "json_input": {"prompt": "other"}}], "has_more": True, "next_cursor": "c1"},
        {"items": [{"request_id": "r2", "json_input": "not an object"}, {"request_id": "r3"}], "has_more": False},
    )
    search = client.find("fal-ai/x/y", input_digest(wanted), 100.0, 200.0, lambda _r: False, POLICY)
    assert (search.found, search.complete, search.blind, search.pages) == (None, True, 2, 2)
    first = dict(seen[0].url.params)
    assert first["start"] == "1970-01-01T00:01:39Z" and first["end"] == "1970-01-01T00:03:20Z"
    assert (first["expand"], first["endpoint_id"], seen[1].url.params["cursor"]) == ("payloads", "fal-ai/x/y", "c1")
    assert seen[0].headers["authorization"] == f"Key {KEY}"
