"""`wan-batch serve`'s app over a real ledger, with jobs run against the simulator: its JSON, files, access rules
and `/metrics`, served by uvicorn over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from jobs.errors import UsageError
from jobs.lifecycle import Move
from runner.ledger.metrics import Metrics
from runner.ledger.store import Ledger
from runner.simulator import FaultRates
from runner.steps.context import counted_calls, queue_clients
from runner.web.access import COOKIE, Access, is_loopback
from runner.web.app import create_app
from runner.web.serving import bind, serving_in_background
from runner.web.source import LedgerSource
from tests.sim_world import FIVE_CENTS, KEY, World, priced, run_until_quiet

TOKEN = "serve-T0KEN-for-tests"


@pytest.fixture
def world(world_factory: Any) -> World:
    """Three jobs run to their end, each call to fal counted as a worker counts it."""
    made: World = world_factory(jobs=3, max_in_flight=2)
    made.ctx.queue_client = queue_clients(made.http, lambda _scheme: KEY, counted_calls(made.ctx.metrics))
    made.ctx.ledger.admit("b")
    run_until_quiet(made)
    return made


def client_for(world: World, access: Access) -> Iterator[httpx.Client]:
    app = create_app(LedgerSource(world.ctx.ledger, "tests"), access)
    with serving_in_background(app, bind("127.0.0.1", 0)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture
def reader(world: World) -> Iterator[httpx.Client]:
    yield from client_for(world, Access.for_host("127.0.0.1", None, allow_actions=False))


@pytest.fixture
def waiting(world_factory: Any) -> World:
    """Three jobs not sent yet."""
    made: World = world_factory(jobs=3, max_in_flight=2)
    return made


@pytest.fixture
def actor(waiting: World) -> Iterator[httpx.Client]:
    yield from client_for(waiting, Access.for_host("0.0.0.0", TOKEN, allow_actions=True))


def test_the_api_lists_batches_and_shows_a_batch_with_its_outputs(reader: httpx.Client) -> None:
    [row] = reader.get("/api/batches").json()
    assert (row["batch_id"], row["state"], row["jobs"], row["ended"], row["eta_s"]) == ("b", "done", 3, 3, None)
    batch = reader.get("/api/batches/b").json()
    assert batch["counts"]["succeeded"] == 3 and batch["in_flight"] == 0 and batch["in_flight_jobs"] == []
    assert sorted(job["job_id"] for job in batch["gallery"]) == ["j0", "j1", "j2"]
    output = batch["gallery"][0]["outputs"][0]
    image, thumb = reader.get(output["href"]), reader.get(output["thumb"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    page = reader.get("/batches/b")
    assert page.status_code == 200 and output["thumb"] in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script


def test_every_batch_is_listed_newest_first_and_measured(reader: httpx.Client, world: World) -> None:
    ledger = world.ctx.ledger
    info = ledger.batch("b")
    assert info is not None
    ledger.save_batch(info.model_copy(update={"id": "later", "created_at": info.created_at + 60, "state": "open"}))
    assert [row["batch_id"] for row in reader.get("/api/batches").json()] == ["later", "b"]
    found = samples(reader.get("/metrics").text)
    assert found[("wan_batch_batches", (("state", "open"),))] == 1 and found[("wan_batch_batches", (("state", "done"),))] == 1
    assert found[("wan_batch_jobs", (("batch", "later"), ("status", "waiting")))] == 0


@pytest.fixture
def capped(world_factory: Any) -> Iterator[httpx.Client]:
    """Three jobs against a cap of two jobs' worth, run to their end (one ends budget_exceeded), beside a batch with
    prices and no cap, and one with neither."""
    made: World = world_factory(jobs=3, max_in_flight=3)
    priced(made, max_cost_nusd=2 * FIVE_CENTS)
    made.ctx.ledger.admit("b")
    run_until_quiet(made)
    info = made.ctx.ledger.batch("b")
    assert info is not None
    made.ctx.ledger.save_batch(info.model_copy(update={"id": "uncapped", "max_cost_nusd": None}))
    made.ctx.ledger.save_batch(info.model_copy(update={"id": "free", "max_cost_nusd": None, "prices": {}}))
    yield from client_for(made, Access.for_host("127.0.0.1", None, allow_actions=False))


def test_the_cost_so_far_and_the_cap_are_listed_shown_and_measured(capped: httpx.Client) -> None:
    rows = {row["batch_id"]: row for row in capped.get("/api/batches").json()}
    shown = {batch_id: (row["estimated_cost_usd"], row["cost_cap_usd"], row["cost_shown"])
             for batch_id, row in rows.items()}  # fmt: skip
    assert shown == {"b": (0.1, 0.1, "$0.10 of a $0.10 cap"), "uncapped": (0.0, None, "$0.00"),
                     "free": (None, None, None)}  # fmt: skip
    batch = capped.get("/api/batches/b").json()
    assert (batch["estimated_cost_usd"], batch["cost_cap_usd"]) == (0.1, 0.1)
    assert batch["cost"]["budget_exceeded"] == batch["errors"]["budget_exceeded"]["count"] == 1
    assert "$0.10 of a $0.10 cap" in capped.get("/batches/b").text
    assert 'id="cost-line" hidden' in capped.get("/batches/free").text, "no price, no cap: no cost"
    listed = capped.get("/").text
    assert "$0.10 of a $0.10 cap" in listed and '<td class="cost">—</td>' in listed
    found = samples(capped.get("/metrics").text)
    costs = {(name, dict(labels)["batch"]): value for (name, labels), value in found.items() if "cost" in name}
    assert costs == {("wan_batch_batch_estimated_cost_usd", "b"): 0.1, ("wan_batch_batch_cost_cap_usd", "b"): 0.1,
                     ("wan_batch_batch_estimated_cost_usd", "uncapped"): 0.0}  # fmt: skip


def test_an_unknown_batch_and_files_outside_its_images_are_not_found(reader: httpx.Client, world: World) -> None:
    assert reader.get("/api/batches/nope").status_code == 404
    assert reader.get("/batches/nope").status_code == 404
    for path in ("jobs/j0.json", "images/../jobs/j0.json", "images/%2e%2e/jobs/j0.json", "../../m.jsonl",
                 "images/missing.png"):  # fmt: skip
        assert reader.get(f"/batches/b/files/{path}").status_code == 404, path
        assert reader.get(f"/batches/b/thumbs/{path}").status_code == 404, path


def test_an_open_app_answers_only_to_a_loopback_name(reader: httpx.Client) -> None:
    """A site elsewhere that points its own name at 127.0.0.1 (DNS rebinding) reads nothing."""
    assert reader.get("/api/batches", headers={"Host": "localhost"}).status_code == 200
    for host in ("evil.example", "evil.example:80", "192.168.1.5"):
        assert reader.get("/api/batches", headers={"Host": host}).status_code == 401, host


def test_odd_requests_are_refused_without_a_traceback(reader: httpx.Client, actor: httpx.Client) -> None:
    assert reader.get("/batches/b/files/images/a%00.png").status_code == 404
    assert reader.get("/batches/b/thumbs/%00").status_code == 404
    assert actor.get("/api/batches", headers={"Cookie": "wan_batch_session=\u00e9t\u00e9".encode()}).status_code == 401
    assert actor.get("/api/batches", headers={"Authorization": "Bearer \u00e9t\u00e9".encode()}).status_code == 401
    assert actor.post("/login", content=b"token=" + b"x" * 10_000).status_code == 413
    with pytest.raises(UsageError, match="shorter than 16"):
        Access.for_host("0.0.0.0", "short", allow_actions=False)


def test_a_loopback_app_without_a_token_is_read_only(reader: httpx.Client) -> None:
    answer = reader.post("/api/batches/b/cancel", json={})
    assert answer.status_code == 403 and "--allow-actions" in answer.json()["error"]
    assert "Cancel batch" not in reader.get("/batches/b").text


@pytest.mark.parametrize(("host", "token", "actions", "needs"), [
    ("0.0.0.0", None, False, "beyond this machine"),
    ("192.168.1.5", None, False, "beyond this machine"),
    ("127.0.0.1", None, True, "--allow-actions"),
    ("::", None, False, "beyond this machine"),
])  # fmt: skip
def test_nothing_opens_beyond_this_machine_or_for_actions_without_a_token(
    host: str, token: str | None, actions: bool, needs: str
) -> None:
    with pytest.raises(UsageError, match="WAN_BATCH_SERVE_TOKEN") as refused:
        Access.for_host(host, token, actions)
    assert needs in str(refused.value)


def test_loopback_hosts() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.1.2.3")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com")] == [False] * 4


def test_beyond_loopback_every_page_needs_the_token_and_a_login_never_stores_it(actor: httpx.Client) -> None:
    assert actor.get("/api/batches").status_code == 401
    assert actor.get("/metrics").status_code == 401
    assert actor.get("/healthz").json() == {"redis": True}
    bounced = actor.get("/batches/b", follow_redirects=False)
    assert bounced.status_code == 303 and bounced.headers["location"] == "/login?next=/batches/b"
    assert actor.get("/api/batches", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert actor.get("/api/batches", headers={"Authorization": "Bearer wrong"}).status_code == 401
    wrong = actor.post("/login", data={"token": "guess", "next": "/batches/b"}, follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    evil = actor.post("/login", data={"token": TOKEN, "next": "//evil.example/x"}, follow_redirects=False)
    assert evil.headers["location"] == "/", "never sent elsewhere after a login"
    good = actor.post("/login", data={"token": TOKEN, "next": "/batches/b"}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/batches/b"
    cookie = good.headers["set-cookie"]
    assert TOKEN not in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    page = actor.get("/batches/b")
    assert page.status_code == 200 and "Cancel batch" in page.text and TOKEN not in page.text
    assert TOKEN not in actor.get("/api/batches/b").text


def test_actions_need_the_token_a_json_post_and_this_origin(actor: httpx.Client, waiting: World) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert actor.post("/api/batches/b/retry", json={}).status_code == 401, "no token: not even read"
    assert actor.post("/api/batches/b/retry", data={"x": "1"}, headers=bearer).status_code == 403, "a form post"
    for foreign in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": str(actor.base_url).rstrip("/")}):  # fmt: skip
        assert actor.post("/api/batches/b/retry", json={}, headers={**bearer, **foreign}).status_code == 403, foreign
    waiting.force("j1", Move.FAIL, error_type="runner_server_error", error_message="boom")
    retried = actor.post("/api/batches/b/retry", json={"error_types": ["other"]}, headers=bearer)
    assert retried.json() == {"requeued": 0}
    retried = actor.post("/api/batches/b/retry", json={"error_types": ["runner_server_error"]},
                         headers={**bearer, "Origin": str(actor.base_url).rstrip("/")})  # fmt: skip
    assert retried.status_code == 200 and retried.json() == {"requeued": 1}
    cancelled = actor.post("/api/batches/b/cancel", json={}, headers=bearer)
    assert cancelled.status_code == 200 and "cancel" in cancelled.json()
    assert actor.get("/api/batches/b", headers=bearer).json()["state"] == "cancelled"
    assert actor.post("/api/batches/nope/cancel", json={}, headers=bearer).status_code == 404


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_metrics_count_what_fal_saw(reader: httpx.Client, world: World) -> None:
    answer = reader.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found, stats = samples(answer.text), world.stats()
    assert found[("wan_batch_jobs", (("batch", "b"), ("status", "succeeded")))] == 3
    assert found[("wan_batch_window", (("batch", "b"),))] == 2
    endpoint = ("endpoint", "fal-ai/wan-25-preview/image-to-image")
    assert found[("wan_batch_submits_total", (("attempt", "first"), endpoint))] == stats["submits"] == 3
    calls = {labels: n for (name, labels), n in found.items() if name == "wan_batch_fal_calls_total"}
    assert sum(n for labels, n in calls.items() if ("call", "status") in labels) == stats["status_polls"]
    assert sum(n for labels, n in calls.items() if ("call", "result") in labels) == stats["result_fetches"] == 3
    assert found[("wan_batch_outputs_total", (endpoint,))] == stats["downloads"] == 3
    assert found[("wan_batch_run_seconds_count", (endpoint,))] == 3
    assert found[("wan_batch_run_seconds_bucket", (endpoint, ("le", "+Inf")))] == 3
    assert found[("wan_batch_download_bytes_total", (endpoint,))] == sum(
        path.stat().st_size for path in (world.folder / "images").iterdir())


def test_submits_count_the_requests_fal_has_through_faults_before_and_after_sending(world_factory: Any) -> None:
    made: World = world_factory(jobs=4, max_in_flight=2, faults=FaultRates(proxy_5xx=0.3, lost_submit_response=0.3),
                                fault_limit=4)  # fmt: skip
    made.ctx.queue_client = queue_clients(made.http, lambda _scheme: KEY, counted_calls(made.ctx.metrics))
    made.ctx.ledger.admit("b")
    run_until_quiet(made)
    stats = made.stats()
    assert stats["faults"]["proxy_5xx"] and stats["faults"]["lost_submit_response"], "both faults struck"
    made.ctx.metrics.flush()
    counted = list(made.ctx.metrics.counters())
    submits = {labels["attempt"]: n for name, labels, n in counted if name == "submits"}
    assert submits == {"first": 4} and stats["submits"] == 4, "a 502 before sending is no submit; a lost answer found is"
    proxy = sum(n for name, labels, n in counted if name == "fal_calls" and labels["code"] in ("502", "503", "504"))
    assert proxy == stats["faults"]["proxy_5xx"], "every call is counted, answered or not"


def test_a_histogram_is_cumulative_and_a_counter_is_lost_rather_than_a_step(redis_client: redis.Redis) -> None:
    metrics = Metrics(redis_client)
    for value in (0.2, 0.7, 3.0, 5000.0):
        metrics.observe("run_seconds", {"endpoint": "e"}, value)
    [histogram] = metrics.histograms().values()
    cumulative = dict(histogram.cumulative())
    assert (cumulative["0.5"], cumulative["1.0"], cumulative["5.0"], cumulative["3600.0"], cumulative["+Inf"]) == \
        (1, 2, 3, 3, 4)  # fmt: skip
    assert histogram.count == 4 and histogram.sum == pytest.approx(5003.9)
    gone = Metrics(redis.Redis(unix_socket_path="/nonexistent/redis.sock"))
    gone.count("submits", {"endpoint": "e"})  # logged, never raised


def test_a_redis_that_does_not_answer_is_a_503_within_seconds(tmp_path: Any) -> None:
    gone = redis.Redis(unix_socket_path=str(tmp_path / "none.sock"), socket_connect_timeout=1)
    app = create_app(LedgerSource(Ledger(gone), "tests"), Access.for_host("127.0.0.1", None, allow_actions=False))
    with serving_in_background(app, bind("127.0.0.1", 0)) as url, httpx.Client(base_url=url, timeout=30) as http:
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json() == {"redis": False}
        for path in ("/api/batches", "/", "/metrics"):
            answer = http.get(path)
            assert answer.status_code == 503 and "Redis does not answer" in answer.text, path
