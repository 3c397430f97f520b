"""fal's webhooks: the simulator delivers them signed; `wan-batch serve` checks and takes them, and a job whose
webhook never came is still ended by a safety poll. Real HTTP both ways, a real Redis, real Ed25519 keys."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jobs.errors import WebhookRejected
from jobs.polling import PollPolicy, PollState, next_poll_delay_s
from jobs.status import JobStatus as S
from jobs.webhooks import signed_message, timestamp_problem
from runner.fal.webhooks import WebhookVerifier
from runner.schedules.store import ScheduleSpec
from runner.simulator import FaultRates
from runner.simulator.webhooks import JWKS_PATH, SIM_USER_ID
from runner.web.access import Access
from runner.web.app import create_app
from runner.web.serving import bind, serving_in_background
from runner.web.source import LedgerSource
from tests.sim_world import World, replace_calls

JOBS = ("j0", "j1")


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def hooked(world_factory: Any) -> Iterator[Callable[..., tuple[World, str, httpx.Client]]]:
    """A world whose batch has fal POST its webhooks to an app served for real (keys from the simulator)."""
    clients: list[httpx.Client] = []
    served: list[Any] = []

    def make(**sim: Any) -> tuple[World, str, httpx.Client]:
        world: World = world_factory(jobs=len(JOBS), max_in_flight=2, run_time="fixed:5", **sim)
        http = httpx.Client(timeout=30)
        clients.append(http)
        verifier = WebhookVerifier(http, f"{world.sim.base_url}{JWKS_PATH}")
        app = create_app(LedgerSource(world.ctx.ledger, "tests"), Access.for_host("127.0.0.1", None, False), verifier)
        serving = serving_in_background(app, bind("127.0.0.1", 0))
        url = serving.__enter__()
        served.append(serving)
        info = world.ctx.ledger.batch("b")
        assert info is not None
        world.ctx.ledger.save_batch(info.model_copy(update={"webhook_url": f"{url}/fal/webhook"}))
        world.ctx.ledger.admit("b")
        for job_id in JOBS:
            world.step(job_id)  # submitted, with fal_webhook
        return world, url, http

    yield make
    for serving in served:
        serving.__exit__(None, None, None)
    for http in clients:
        http.close()


def statuses(world: World) -> list[S]:
    return [world.job(job_id).status for job_id in JOBS]


def test_a_batch_with_webhooks_finishes_without_a_status_call(hooked: Any) -> None:
    world, _url, _http = hooked()
    assert statuses(world) == [S.QUEUED, S.QUEUED]
    world.clock.advance(6)  # both ran: fal delivers their webhooks
    wait_for(lambda: statuses(world) == [S.COLLECTING, S.COLLECTING])
    for job_id in JOBS:
        world.step(job_id)
    assert statuses(world) == [S.SUCCEEDED, S.SUCCEEDED]
    stats = world.stats()
    assert stats["status_polls"] == 0 and stats["result_fetches"] == 2 and stats["webhooks_sent"] == 2


def test_a_duplicate_delivery_changes_nothing(hooked: Any) -> None:
    world, _url, _http = hooked(faults=FaultRates(webhook_duplicate=1.0))
    world.clock.advance(6)
    wait_for(lambda: world.stats()["webhooks_sent"] >= 4)
    assert world.stats()["webhooks_sent"] == 4 and statuses(world) == [S.COLLECTING, S.COLLECTING]
    for job_id in JOBS:
        world.step(job_id)
    assert statuses(world) == [S.SUCCEEDED, S.SUCCEEDED] and world.stats()["result_fetches"] == 2
    outcomes = {labels["outcome"]: n for name, labels, n in world.ctx.metrics.counters() if name == "webhooks"}
    assert outcomes == {"collect_now": 2, "already_handled": 2}


def test_a_dropped_webhook_is_caught_by_the_safety_poll(hooked: Any) -> None:
    world, _url, _http = hooked(faults=FaultRates(webhook_drop=1.0))
    world.clock.advance(6)
    for job_id in JOBS:  # its safety poll comes due (when: the policy's table below): run as a worker would then
        world.step(job_id)
    assert statuses(world) == [S.SUCCEEDED, S.SUCCEEDED]
    stats = world.stats()
    assert stats["webhooks_sent"] == 0 and stats["status_polls"] == 2
    world.ctx.metrics.flush()
    missed = [n for name, labels, n in world.ctx.metrics.counters() if name == "webhooks" and labels["outcome"] == "missed"]
    assert missed == [2], "a webhook the safety poll had to make up for is counted"


def test_a_receiver_that_was_down_gets_the_deliveries_again(world_factory: Any) -> None:
    world: World = world_factory(jobs=len(JOBS), max_in_flight=2, run_time="fixed:5", webhook_retry_s=0.2)
    with httpx.Client(timeout=30) as http:
        verifier = WebhookVerifier(http, f"{world.sim.base_url}{JWKS_PATH}")
        app = create_app(LedgerSource(world.ctx.ledger, "tests"), Access.for_host("127.0.0.1", None, False), verifier)
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        with serving_in_background(app, sock) as url:
            info = world.ctx.ledger.batch("b")
            assert info is not None
            world.ctx.ledger.save_batch(info.model_copy(update={"webhook_url": f"{url}/fal/webhook"}))
            world.ctx.ledger.admit("b")
            for job_id in JOBS:
                world.step(job_id)
        world.clock.advance(6)  # the jobs end while the receiver is down: deliveries fail, and are tried again
        wait_for(lambda: world.stats()["webhooks_sent"] >= 4)
        assert statuses(world) == [S.QUEUED, S.QUEUED]
        with serving_in_background(app, bind("127.0.0.1", port)):  # back, at the same address
            wait_for(lambda: statuses(world) == [S.COLLECTING, S.COLLECTING])
    for job_id in JOBS:
        world.step(job_id)
    assert statuses(world) == [S.SUCCEEDED, S.SUCCEEDED] and world.stats()["status_polls"] == 0


def test_a_webhook_in_a_cancelled_batch_leaves_the_job_to_its_cancel(hooked: Any) -> None:
    world, _url, _http = hooked()
    world.ctx.ledger.set_batch_state("b", "cancelled")  # `wan-batch cancel` while both run at fal
    world.clock.advance(6)  # they ended at fal before the cancel reached it
    wait_for(lambda: world.stats()["webhooks_sent"] >= 2)  # counted once the receiver answered
    outcomes = {labels["outcome"]: n for name, labels, n in world.ctx.metrics.counters() if name == "webhooks"}
    assert outcomes == {"step_now": 2} and statuses(world) == [S.QUEUED, S.QUEUED], "not collected: its step decides"
    for job_id in JOBS:
        world.step(job_id)  # the cancel finds fal done: the job is collected (paid for)
        world.step(job_id)
    assert statuses(world) == [S.SUCCEEDED, S.SUCCEEDED]
    assert world.ctx.ledger.tallies("b") == {"finished": 2}


def test_a_webhook_before_its_submit_is_stored_makes_the_step_due_once_it_is(hooked: Any) -> None:
    world, url, http = hooked()
    signer = world.sim.service.webhooks
    body = json.dumps({"request_id": "r-early"}).encode()
    answer = delivered(http, url, body, signer.signed_headers("r-early", body))
    assert answer.json() == {"outcome": "unknown_request"}
    assert world.ctx.ledger.redis.exists(world.ctx.ledger.keys.early_webhook("r-early"))


def test_a_webhook_that_came_before_its_submit_was_stored_is_taken_when_it_is(world_factory: Any) -> None:
    world: World = world_factory(jobs=1, run_time="fixed:5")
    info = world.ctx.ledger.batch("b")
    assert info is not None
    world.ctx.ledger.save_batch(info.model_copy(update={"webhook_url": "http://127.0.0.1:9/fal/webhook"}))
    early: list[str] = []

    def submit(client: Any, endpoint: str, body: dict[str, Any], webhook_url: str | None = None) -> Any:
        submission = client.submit(endpoint, body, webhook_url)
        key = world.ctx.ledger.keys.early_webhook(submission.request_id)
        world.ctx.ledger.redis.set(key, "1", ex=60)  # fal called back while the answer was on its way
        early.append(key)
        return submission

    replace_calls(world, submit=submit)
    world.ctx.ledger.admit("b")
    world.step("j0")
    assert world.job("j0").status is S.QUEUED and not world.ctx.ledger.redis.exists(early[0]), "taken when stored"


def delivered(http: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http.post(f"{url}/fal/webhook", content=body, headers=headers)


def test_forged_replayed_and_tampered_deliveries_are_refused_and_change_nothing(hooked: Any) -> None:
    world, url, http = hooked()
    request_id = world.job("j0").request_id
    assert request_id is not None
    signer = world.sim.service.webhooks
    body = json.dumps({"request_id": request_id, "status": "OK", "payload": {"images": []}}).encode()
    forger = Ed25519PrivateKey.generate()
    forged = {**signer.signed_headers(request_id, body),
              "X-Fal-Webhook-Signature": forger.sign(b"anything").hex()}  # fmt: skip
    stamp = str(int(time.time()))
    forged_well = {**signer.signed_headers(request_id, body),
                   "X-Fal-Webhook-Signature": forger.sign(signed_message(request_id, SIM_USER_ID, stamp, body)).hex(),
                   "X-Fal-Webhook-Timestamp": stamp}  # fmt: skip
    replayed = signer.signed_headers(request_id, body, timestamp=int(time.time()) - 3600)
    tampered_body = body.replace(b'"OK"', b'"ERROR"')
    cases = [(body, forged, 401), (body, forged_well, 401), (body, replayed, 401),
             (tampered_body, signer.signed_headers(request_id, body), 401),
             (body, {"Content-Type": "application/json"}, 400),
             (json.dumps({"request_id": "other"}).encode(),
              signer.signed_headers(request_id, json.dumps({"request_id": "other"}).encode()), 400)]  # fmt: skip
    for sent, headers, code in cases:
        assert delivered(http, url, sent, headers).status_code == code, headers
    assert statuses(world) == [S.QUEUED, S.QUEUED], "nothing moved"
    unknown = json.dumps({"request_id": "not-ours"}).encode()
    answer = delivered(http, url, unknown, signer.signed_headers("not-ours", unknown))
    assert answer.status_code == 200 and answer.json() == {"outcome": "unknown_request"}
    good = delivered(http, url, body, signer.signed_headers(request_id, body))
    assert good.json() == {"outcome": "collect_now", "job_id": "j0"}, "the genuine one is taken"
    assert world.job("j0").status is S.COLLECTING and world.job("j1").status is S.QUEUED


def test_keys_that_cannot_be_fetched_ask_fal_to_deliver_again(world_factory: Any) -> None:
    with httpx.Client() as http:
        verifier = WebhookVerifier(http, "http://127.0.0.1:9/jwks.json")
        with pytest.raises(WebhookRejected) as refused:
            verifier.verify({"x-fal-webhook-request-id": "r", "x-fal-webhook-user-id": "u",
                             "x-fal-webhook-timestamp": str(int(time.time())), "x-fal-webhook-signature": "00"},
                            b"{}")  # fmt: skip
    assert refused.value.status_code == 503


@pytest.mark.parametrize(("stamp", "refused"), [
    ("1000", False), ("1299", False), ("701", False), ("1301", True), ("699", True), ("soon", True), ("", True),
])  # fmt: skip
def test_a_timestamp_is_fresh_within_300_s(stamp: str, refused: bool) -> None:
    assert (timestamp_problem(stamp, now=1000.0) is not None) is refused


def test_the_signature_covers_the_request_the_user_the_time_and_the_body() -> None:
    assert signed_message("r", "u", "7", b"{}") == \
        b"r\nu\n7\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # fmt: skip


@pytest.mark.parametrize(("state", "expected_s"), [
    (PollState(0, 0.0, None, webhooks=True), 30.0),  # nothing learned yet: the grace alone
    (PollState(0, 0.0, 10.0, webhooks=True), 50.0),  # a 10 s job: twice its run, plus the grace
    (PollState(0, 0.0, 10.0, queue_position=4, concurrency=2, webhooks=True), 90.0),  # its queue counts too
    (PollState(3, 100.0, 10.0, webhooks=True), 230.0),  # overdue: twice the time waited, plus the grace
    (PollState(9, 5000.0, 10.0, webhooks=True), 600.0),  # never longer than 10 minutes
    (PollState(0, 0.0, 10.0), 10.05),  # without webhooks, as before: at the expected end
])  # fmt: skip
def test_with_webhooks_a_poll_is_only_a_safety_net(state: PollState, expected_s: float) -> None:
    assert next_poll_delay_s(state, PollPolicy(), rand=0.0) == pytest.approx(expected_s)


def test_a_schedule_s_firings_carry_its_webhook_url() -> None:
    spec = ScheduleSpec(name="night", when={"kind": "cron", "cron": "0 2 * * *", "tz": "UTC"}, manifest="/m.csv",
                        out="/out", created_at=0.0, webhook_url="https://batch.example.com/fal/webhook")  # fmt: skip
    assert spec.request("night-1").webhook_url == "https://batch.example.com/fal/webhook"


class _Jwks(BaseHTTPRequestHandler):
    """Serves `keys` as a JWKS and counts its fetches."""

    keys: ClassVar[list[Ed25519PrivateKey]] = []
    fetches: ClassVar[list[float]] = []

    def do_GET(self) -> None:
        type(self).fetches.append(time.time())
        raw = [k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for k in type(self).keys]
        body = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519",
                                     "x": base64.urlsafe_b64encode(r).rstrip(b"=").decode()} for r in raw]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def signed_by(key: Ed25519PrivateKey, request_id: str, body: bytes, stamp: int) -> dict[str, str]:
    message = signed_message(request_id, "u", str(stamp), body)
    return {"x-fal-webhook-request-id": request_id, "x-fal-webhook-user-id": "u",
            "x-fal-webhook-timestamp": str(stamp), "x-fal-webhook-signature": key.sign(message).hex()}  # fmt: skip


def test_keys_are_kept_a_day_and_fetched_again_when_fal_rotates_them_at_most_once_a_minute() -> None:
    old, new, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    handler = type("Jwks", (_Jwks,), {"keys": [old], "fetches": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = [time.time()]
    try:
        with httpx.Client() as http:
            verifier = WebhookVerifier(http, f"http://127.0.0.1:{server.server_port}/jwks.json", lambda: now[0])
            stamp = int(now[0])
            assert verifier.verify(signed_by(old, "r1", b"{}", stamp), b"{}") == "r1"
            assert verifier.verify(signed_by(old, "r2", b"{}", stamp), b"{}") == "r2"
            assert len(handler.fetches) == 1, "kept"
            handler.keys = [new]  # fal rotates its key
            now[0] += 61
            assert verifier.verify(signed_by(new, "r3", b"{}", stamp + 61), b"{}") == "r3"
            assert len(handler.fetches) == 2, "fetched again for a key it did not know"
            for n in range(5):  # forgeries do not make it fetch again and again
                with pytest.raises(WebhookRejected):
                    verifier.verify(signed_by(forger, f"f{n}", b"{}", stamp + 61), b"{}")
            assert len(handler.fetches) == 2
            now[0] += 24 * 3600 + 1
            assert verifier.verify(signed_by(new, "r4", b"{}", int(now[0])), b"{}") == "r4"
            assert len(handler.fetches) == 3, "and again after a day"
    finally:
        server.shutdown()
        server.server_close()


def test_each_job_is_polled_as_its_own_submit_asked_whatever_a_rerun_says_later(world_factory: Any) -> None:
    world: World = world_factory(jobs=2, max_in_flight=1, run_time="fixed:5")
    world.ctx.ledger.admit("b")
    world.step("j0")  # sent without a webhook
    info = world.ctx.ledger.batch("b")
    assert info is not None
    world.ctx.ledger.save_batch(info.model_copy(update={"webhook_url": "http://127.0.0.1:9/fal/webhook",
                                                        "max_in_flight": 2}))  # a rerun with --webhook-url
    world.ctx.ledger.admit("b")
    world.step("j1")
    first, second = world.job("j0"), world.job("j1")
    assert (first.sent_webhook, second.sent_webhook) == (False, True)
    asked = {request_id: world.sim.service._store.find(request_id).submission.webhook_url
             for request_id in (first.request_id, second.request_id)}  # fmt: skip
    assert asked == {first.request_id: None, second.request_id: "http://127.0.0.1:9/fal/webhook"}
