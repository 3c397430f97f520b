"""The fal queue simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from PIL import Image

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.outputs import ModelOutput
from runner.simulator import (
    ECHO_APP,
    LARGE_RESULT_BYTES,
    FaultRates,
    ManualClock,
    RunningSimulator,
    SimConfig,
    run_simulator,
)
from runner.simulator.requests import Outcome, Retention, Submission
from runner.simulator.state import RequestStore

KEY = "test-id:test-secret"
AUTH = {"Authorization": f"Key {KEY}"}
ECHO = f"{ECHO_APP}/anything"


def png_data_uri(size: tuple[int, int] = (300, 200), color: tuple[int, int, int] = (220, 20, 20)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def wan22_body(**extra: Any) -> dict[str, Any]:
    return {"image_url": png_data_uri(), "prompt": "a red square at dusk", **extra}


def wan25_body(**extra: Any) -> dict[str, Any]:
    return {"image_urls": [png_data_uri()], "prompt": "a red square at dawn", "seed": 7, **extra}


@contextmanager
def serve(clock: ManualClock | None = None, **overrides: Any) -> Iterator[tuple[RunningSimulator, httpx.Client]]:
    """A simulator (fast runs by default; on `clock` if given) and a client authenticated against it."""
    settings: dict[str, Any] = {"run_time": "fixed:0.1", "concurrency": 2, "seed": 1, **overrides}
    with run_simulator(SimConfig(**settings), clock) as sim, httpx.Client(headers=AUTH, timeout=10) as client:
        yield sim, client


def submit(client: httpx.Client, sim: RunningSimulator, endpoint: str, body: Any,
           headers: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    response = client.post(f"{sim.base_url}/{endpoint}", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    submitted: dict[str, Any] = response.json()
    return submitted


def wait_completed(client: httpx.Client, submitted: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(submitted["status_url"])
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            assert body["status"] == "COMPLETED"
            return body
        assert response.status_code == 202, response.text
        time.sleep(0.02)
    raise AssertionError("request did not complete in time")


def finished_result(client: httpx.Client, submitted: dict[str, Any]) -> httpx.Response:
    wait_completed(client, submitted)
    return client.get(submitted["response_url"])


def phase(client: httpx.Client, submitted: dict[str, Any]) -> str:
    """The status now: with a ManualClock, nothing moves between two calls."""
    status: str = client.get(submitted["status_url"]).json()["status"]
    return status


# --- the four queue calls ---------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "app", "keys"),
    [
        (WAN22_I2I, wan22_body(), "fal-ai/wan", {"image", "seed", "prompt"}),
        (WAN25_I2I, wan25_body(), "fal-ai/wan-25-preview", {"images", "seeds", "actual_prompt"}),
        (ECHO, {"anything": [1, 2]}, ECHO_APP, {"echo", "images"}),
    ],
)
def test_submit_status_result_round_trip(endpoint: str, body: dict[str, Any], app: str, keys: set[str]) -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:0.2") as (sim, client):
        response = client.post(f"{sim.base_url}/{endpoint}", json=body)
        submitted = response.json()
        request_id = submitted["request_id"]
        assert response.status_code == 200
        assert uuid.UUID(request_id).version == 4
        assert response.headers["x-fal-request-id"] == request_id
        assert submitted["status"] == "IN_QUEUE" and submitted["queue_position"] == 0
        assert submitted["logs"] is None and submitted["metrics"] == {}
        base = f"{sim.base_url}/{app}/requests/{request_id}"
        assert (submitted["response_url"], submitted["status_url"], submitted["cancel_url"]) == (
            base, f"{base}/status", f"{base}/cancel")  # fmt: skip

        early = client.get(submitted["response_url"])
        assert (early.status_code, early.json()["status"]) == (202, "IN_PROGRESS")
        clock.advance(0.2)
        status = client.get(submitted["status_url"])
        assert status.status_code == 200
        assert status.json()["metrics"]["inference_time"] == pytest.approx(0.2)
        assert "error" not in status.json()

        result = client.get(submitted["response_url"])
        assert result.status_code == 200 and result.headers["x-fal-request-id"] == request_id
        assert set(result.json()) == keys
        assert ModelOutput.model_validate(result.json()).images[0].url.startswith(f"{sim.base_url}/files/")


def test_echo_returns_its_input_and_a_small_png() -> None:
    with serve() as (sim, client):
        body = {"nested": {"a": [1, "two"]}, "flag": True}
        result = finished_result(client, submit(client, sim, ECHO, body)).json()
        assert result["echo"] == body
        image = client.get(result["images"][0]["url"])
        assert Image.open(io.BytesIO(image.content)).format == "PNG"


@pytest.mark.parametrize(
    ("method", "path", "status", "payload"),
    [
        ("POST", "fal-ai/flux/dev", 404, {"detail": "Application 'fal-ai/flux/dev' not found"}),
        ("GET", "fal-ai/wan/requests/{unknown}/status", 404, {"detail": "Request not found"}),
        ("GET", "fal-ai/wan/requests/{unknown}", 404, {"detail": "Request not found"}),
        ("PUT", "fal-ai/wan/requests/{unknown}/cancel", 404, {"status": "NOT_FOUND"}),
        ("GET", "fal-ai/wan-25-preview/requests/{known}/status", 404, {"detail": "Request not found"}),
        ("DELETE", "fal-ai/wan/requests/{known}", 405, {"detail": "Method Not Allowed"}),
    ],
)
def test_unknown_apps_and_requests_answer_json_errors(method: str, path: str, status: int, payload: Any) -> None:
    with serve() as (sim, client):
        known = submit(client, sim, WAN22_I2I, wan22_body())["request_id"]
        unknown = str(uuid.uuid4())
        url = f"{sim.base_url}/{path.format(unknown=unknown, known=known)}"
        response = client.request(method, url, json={} if method == "POST" else None)
        assert (response.status_code, response.json()) == (status, payload)
        # A 404 names a fresh request id of its own, never the id it was asked about.
        assert uuid.UUID(response.headers["x-fal-request-id"]).version == 4
        if status == 404:
            assert response.headers["x-fal-request-id"] not in (unknown, known)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_submit_of_a_non_object_body_is_a_bad_request(body: bytes) -> None:
    with serve() as (sim, client):
        response = client.post(f"{sim.base_url}/{WAN22_I2I}", content=body)
        assert response.status_code == 400
        assert response.json()["error_type"] == "bad_request"
        assert sim.stats()["submits"] == 0


def test_submit_accepts_a_webhook_and_query_logs_flags() -> None:
    with serve(run_time="fixed:0.05") as (sim, client):
        response = client.post(f"{sim.base_url}/{ECHO}", params={"fal_webhook": "https://example.com/hook"}, json={})
        submitted = response.json()
        wait_completed(client, submitted)
        for flag in ("1", "true"):
            logs = client.get(submitted["status_url"], params={"logs": flag}).json()["logs"]
            assert logs and set(logs[0]) == {"message", "level", "source", "timestamp"}
        assert client.get(submitted["status_url"], params={"logs": "false"}).json()["logs"] is None
        assert client.get(submitted["status_url"]).json()["logs"] is None


# --- auth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "token", "header", "status"),
    [
        (None, None, "Key anything", 200),
        (None, None, "Bearer anything", 200),
        (None, None, None, 401),
        (None, None, "Key", 401),
        (None, None, "Basic dXNlcjpwYXNz", 401),
        ("sim-key", None, "Key sim-key", 200),
        ("sim-key", None, "Key wrong-key", 401),
        ("sim-key", None, "Bearer sim-key", 401),
        (None, "sim-token", "Bearer sim-token", 200),
        (None, "sim-token", "Key sim-token", 401),
        ("sim-key", "sim-token", "Bearer sim-token", 200),
        ("sim-key", "sim-token", "Key sim-key", 200),
    ],
)
def test_auth(key: str | None, token: str | None, header: str | None, status: int) -> None:
    with run_simulator(SimConfig(key=key, token=token)) as sim, httpx.Client() as client:
        headers = {"Authorization": header} if header is not None else {}
        response = client.post(f"{sim.base_url}/{ECHO}", json={}, headers=headers)
        assert response.status_code == status
        if status == 401:
            assert "detail" in response.json()
            sent = (header or "").partition(" ")[2]
            assert not sent or sent not in response.text
        assert sim.stats()["submits"] == (1 if status == 200 else 0)


def test_files_and_stats_need_no_auth() -> None:
    with serve() as (sim, client):
        url = finished_result(client, submit(client, sim, ECHO, {})).json()["images"][0]["url"]
        with httpx.Client() as anonymous:
            assert anonymous.get(url).status_code == 200
            assert anonymous.get(f"{sim.base_url}/_stats").status_code == 200


# --- queue and scheduling ---------------------------------------------------


def test_queue_positions_and_concurrency_limit() -> None:
    clock = ManualClock()
    with serve(clock, concurrency=2, run_time="fixed:0.3") as (sim, client):
        submitted = [submit(client, sim, ECHO, {"n": n}) for n in range(5)]
        assert [s["queue_position"] for s in submitted] == [0, 0, 0, 1, 2]
        statuses = [client.get(s["status_url"]).json() for s in submitted]
        assert [s["status"] for s in statuses] == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3
        assert [s.get("queue_position") for s in statuses[2:]] == [0, 1, 2]
        clock.advance(0.3)
        assert [phase(client, s) for s in submitted] == ["COMPLETED"] * 2 + ["IN_PROGRESS"] * 2 + ["IN_QUEUE"]
        clock.advance(0.6)
        assert [phase(client, s) for s in submitted] == ["COMPLETED"] * 5
        stats = sim.stats()
        timings = [stats["requests"][s["request_id"]] for s in submitted]
        assert stats["max_in_progress"] == 2
        # A queued request starts exactly when a slot frees, whatever the polling.
        assert timings[2]["started_at"] == pytest.approx(timings[0]["completed_at"], abs=1e-6)
        assert timings[4]["started_at"] == pytest.approx(timings[2]["completed_at"], abs=1e-6)
        assert all(t["run_s"] == pytest.approx(0.3) for t in timings)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_max_in_progress_never_exceeds_concurrency(concurrency: int) -> None:
    clock = ManualClock()
    with serve(clock, concurrency=concurrency, run_time="uniform:0.08,0.15", seed=5) as (sim, client):
        submitted = [submit(client, sim, ECHO, {"n": n}) for n in range(6)]
        clock.advance(1.0)  # the events in between are replayed in time order
        assert [phase(client, s) for s in submitted] == ["COMPLETED"] * 6
        stats = sim.stats()
        intervals = [(t["started_at"], t["completed_at"]) for t in stats["requests"].values()]
        most_at_once = max(sum(start <= at < end for start, end in intervals) for at, _ in intervals)
        assert stats["max_in_progress"] == most_at_once == concurrency
        assert (stats["queued"], stats["in_progress"]) == (0, 0)


def test_low_priority_waits_behind_normal() -> None:
    clock = ManualClock()
    with serve(clock, concurrency=1, run_time="fixed:0.3") as (sim, client):
        blocker = submit(client, sim, ECHO, {"n": 0})
        low = submit(client, sim, ECHO, {"n": 1}, {"X-Fal-Queue-Priority": "low"})
        normal = submit(client, sim, ECHO, {"n": 2})
        assert (low["queue_position"], normal["queue_position"]) == (0, 0)
        assert client.get(low["status_url"]).json()["queue_position"] == 1
        clock.advance(0.9)
        assert [phase(client, s) for s in (blocker, low, normal)] == ["COMPLETED"] * 3
        timings = sim.stats()["requests"]
        assert timings[normal["request_id"]]["started_at"] < timings[low["request_id"]]["started_at"]


def test_request_timeout_ends_a_request_that_did_not_start() -> None:
    clock = ManualClock()
    with serve(clock, concurrency=1, run_time="fixed:0.5") as (sim, client):
        submit(client, sim, ECHO, {"n": 0})
        late = submit(client, sim, ECHO, {"n": 1}, {"X-Fal-Request-Timeout": "0.15"})
        patient = submit(client, sim, ECHO, {"n": 2}, {"X-Fal-Request-Timeout": "30"})
        clock.advance(0.1)
        assert phase(client, late) == "IN_QUEUE"
        clock.advance(0.1)
        status = client.get(late["status_url"]).json()
        assert (status["status"], status["error_type"], status["metrics"]) == ("COMPLETED", "request_timeout", {})
        result = client.get(late["response_url"])
        assert result.status_code == 504 and result.json()["error_type"] == "request_timeout"
        assert result.headers["X-Fal-Error-Type"] == "request_timeout"
        assert result.headers["X-Fal-Request-Timeout-Type"] == "user"
        assert "x-fal-request-id" in result.headers
        clock.advance(0.8)  # the blocker ends at 0.5, then the patient one runs
        assert client.get(patient["response_url"]).status_code == 200
        timings = sim.stats()["requests"]
        assert timings[late["request_id"]]["started_at"] is None
        assert timings[late["request_id"]]["queue_s"] == pytest.approx(0.15)


@pytest.mark.parametrize("running", [True, False])
def test_cancel(running: bool) -> None:
    with serve(ManualClock(), concurrency=1, run_time="fixed:5") as (sim, client):
        first = submit(client, sim, ECHO, {"n": 0})
        second = submit(client, sim, ECHO, {"n": 1})
        target = first if running else second
        response = client.put(target["cancel_url"])
        assert (response.status_code, response.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        status = client.get(target["status_url"])
        assert (status.status_code, status.json()["error_type"]) == (200, "client_cancelled")
        result = client.get(target["response_url"])
        assert (result.status_code, result.json()["error_type"]) == (499, "client_cancelled")
        again = client.put(target["cancel_url"])
        assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
        if running:  # the freed slot goes to the next request at once
            assert client.get(second["status_url"]).json()["status"] == "IN_PROGRESS"
        assert sim.stats()["cancels"] == 2


def test_result_expires_after_retention() -> None:
    clock = ManualClock()
    with serve(clock, retention_s=60, run_time="fixed:1") as (sim, client):
        submitted = submit(client, sim, ECHO, {})
        clock.advance(1)
        assert client.get(submitted["response_url"]).status_code == 200
        clock.advance(60)  # the last instant of retention
        assert client.get(submitted["response_url"]).status_code == 200
        clock.advance(0.5)
        result = client.get(submitted["response_url"])
        assert (result.status_code, result.json()["detail"]) == (404, "Request not found")
        assert client.get(submitted["status_url"]).status_code == 404
        assert client.put(submitted["cancel_url"]).json() == {"status": "NOT_FOUND"}


def test_a_large_result_is_kept_for_less() -> None:
    """fal keeps a result 1 hour, or 6 minutes when it is 10 KB or more."""
    clock = ManualClock()
    with serve(clock, run_time="fixed:1") as (sim, client):
        large = submit(client, sim, ECHO, {"blob": "x" * LARGE_RESULT_BYTES})  # the echo holds the input
        small = submit(client, sim, ECHO, {"blob": "x"})
        failed = submit(client, sim, WAN22_I2I, {"blob": "x" * LARGE_RESULT_BYTES})  # 422: a small error body
        clock.advance(1)
        assert [client.get(s["response_url"]).status_code for s in (large, small, failed)] == [200, 200, 422]
        clock.advance(360)
        assert client.get(large["status_url"]).status_code == 200
        clock.advance(0.5)
        assert [client.get(s["status_url"]).status_code for s in (large, small, failed)] == [404, 200, 200]
        clock.advance(3600 - 360)
        assert [client.get(s["status_url"]).status_code for s in (small, failed)] == [404, 404]


def test_retention_purges_the_input_result_and_files() -> None:
    clock = ManualClock()
    with serve(clock, retention_s=60, run_time="fixed:1") as (sim, client):
        early = submit(client, sim, WAN22_I2I, wan22_body())
        clock.advance(10)
        late = submit(client, sim, WAN22_I2I, wan22_body(prompt="another"))
        clock.advance(1)
        url = client.get(early["response_url"]).json()["image"]["url"]
        client.get(late["response_url"])
        assert (sim.stats()["held_inputs"], sim.stats()["held_results"]) == (2, 2)
        clock.advance(60)  # past the retention of `early` only
        assert client.get(early["response_url"]).status_code == 404
        assert client.get(url).status_code == 404
        assert client.get(late["response_url"]).status_code == 200
        assert (sim.stats()["held_inputs"], sim.stats()["held_results"]) == (1, 1)
        clock.advance(10)
        stats = sim.stats()
        assert (stats["held_inputs"], stats["held_results"]) == (0, 0)
        timing = stats["requests"][early["request_id"]]  # what /_stats needs stays
        assert (timing["endpoint"], timing["outcome"], timing["run_s"]) == (WAN22_I2I, "ok", pytest.approx(1))


def test_a_purged_request_keeps_no_input() -> None:
    clock = ManualClock()
    store = RequestStore(1, Retention(default_s=5, large_s=5), lambda request: Outcome.OK, clock=clock)
    body = {"image_url": png_data_uri(), "prompt": "p"}
    store.submit("r1", Submission(WAN22_I2I, "fal-ai/wan", body), lambda: (1.0, 7))
    clock.advance(6)
    assert store.view("r1", "fal-ai/wan") is not None
    request = store.find("r1")
    assert request is not None and request.submission.body == body and not request.purged
    clock.advance(0.5)
    assert store.view("r1", "fal-ai/wan") is None
    assert request.purged and request.submission.body == {}
    assert store.snapshot()["requests"]["r1"]["outcome"] == "ok"


def test_output_files_expire_by_lifecycle_preference() -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:0.05") as (sim, client):
        lifecycle = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 30})}
        short = submit(client, sim, ECHO, {"n": 0}, lifecycle)
        kept = submit(client, sim, ECHO, {"n": 1})
        clock.advance(0.05)
        short_url = client.get(short["response_url"]).json()["images"][0]["url"]
        kept_url = client.get(kept["response_url"]).json()["images"][0]["url"]
        clock.advance(30)
        assert client.get(short_url).status_code == 200
        clock.advance(0.5)
        assert client.get(short_url).status_code == 404
        assert client.get(kept_url).status_code == 200
        assert client.get(short["response_url"]).status_code == 200  # the result itself lives on


# --- the model: validation and outputs --------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "loc"),
    [
        (WAN22_I2I, {"image_url": "https://example.com/a.png"}, ["body", "prompt"]),
        (WAN22_I2I, wan22_body(strength=3), ["body", "strength"]),
        (WAN25_I2I, wan25_body(image_size={"width": 100, "height": 600}), ["body", "image_size", "width"]),
        (WAN25_I2I, wan25_body(image_urls=[]), ["body", "image_urls"]),
        (WAN25_I2I, wan25_body(colour="red"), ["body", "colour"]),
    ],
)
def test_invalid_input_completes_with_error_and_result_422(endpoint: str, body: dict[str, Any], loc: list[Any]) -> None:
    with serve() as (sim, client):
        submitted = submit(client, sim, endpoint, body)
        status = wait_completed(client, submitted)
        assert status["error"]
        result = client.get(submitted["response_url"])
        assert result.status_code == 422
        detail = result.json()["detail"]
        assert [d["loc"] for d in detail] == [loc]
        assert detail[0]["msg"] and detail[0]["type"]
        assert sim.stats()["requests"][submitted["request_id"]]["outcome"] == "invalid_input"


@pytest.mark.parametrize(
    ("endpoint", "body", "fmt", "sizes"),
    [
        (WAN25_I2I, wan25_body(), "PNG", [(512, 512)]),
        (WAN25_I2I, wan25_body(image_size="square_hd"), "PNG", [(1024, 1024)]),
        (WAN25_I2I, wan25_body(image_size="portrait_16_9", num_images=2), "PNG", [(576, 1024)] * 2),
        (WAN25_I2I, wan25_body(image_size="landscape_4_3"), "PNG", [(1024, 768)]),
        (WAN25_I2I, wan25_body(image_size={"width": 640, "height": 400}), "PNG", [(640, 400)]),
        (WAN22_I2I, wan22_body(), "JPEG", [(1024, 683)]),
        (WAN22_I2I, wan22_body(aspect_ratio="16:9", image_format="png"), "PNG", [(1024, 576)]),
        (WAN22_I2I, {"image_url": "https://example.com/x.png", "prompt": "p"}, "JPEG", [(1024, 1024)]),
    ],
)
def test_outputs_are_real_images_of_the_requested_size(endpoint: str, body: dict[str, Any], fmt: str,
                                                       sizes: list[tuple[int, int]]) -> None:  # fmt: skip
    with serve() as (sim, client):
        output = ModelOutput.model_validate(finished_result(client, submit(client, sim, endpoint, body)).json())
        assert [(image.width, image.height) for image in output.images] == sizes
        for image in output.images:
            download = client.get(image.url)
            assert download.headers["Content-Type"] == image.content_type == f"image/{fmt.lower()}"
            assert int(download.headers["Content-Length"]) == len(download.content) == image.file_size
            with Image.open(io.BytesIO(download.content)) as decoded:
                assert (decoded.format, decoded.size) == (fmt, (image.width, image.height))
        if endpoint == WAN25_I2I:
            assert output.seeds == [7 + n for n in range(len(sizes))]


def _first_file(client: httpx.Client, sim: RunningSimulator, endpoint: str, body: dict[str, Any]) -> bytes:
    output = ModelOutput.model_validate(finished_result(client, submit(client, sim, endpoint, body)).json())
    return client.get(output.images[0].url).content


@pytest.mark.parametrize(("endpoint", "body"), [(WAN22_I2I, wan22_body()), (WAN25_I2I, wan25_body())])
def test_same_input_and_seed_give_the_same_bytes(endpoint: str, body: dict[str, Any]) -> None:
    runs = []
    for _ in range(2):  # Wan 2.2 takes no seed: it is drawn from the simulator's seeded RNG
        with serve(seed=11) as (sim, client):
            runs.append(_first_file(client, sim, endpoint, body))
    assert runs[0] == runs[1]
    with serve(seed=12) as (sim, client):
        other_seed = _first_file(client, sim, WAN25_I2I, {**wan25_body(), "seed": 8})
        assert other_seed != _first_file(client, sim, WAN25_I2I, wan25_body())


def test_output_derives_from_the_input_image() -> None:
    with serve() as (sim, client):
        red = _first_file(client, sim, WAN25_I2I, wan25_body())
        blue = _first_file(client, sim, WAN25_I2I, wan25_body(image_urls=[png_data_uri(color=(20, 20, 220))]))
        means = [Image.open(io.BytesIO(data)).convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
                 for data in (red, blue)]  # fmt: skip
        assert means[0][0] > means[0][2] and means[1][2] > means[1][0]
        # An output of the simulator is itself a readable input.
        first = finished_result(client, submit(client, sim, WAN25_I2I, wan25_body())).json()["images"][0]["url"]
        chained = _first_file(client, sim, WAN22_I2I, {"image_url": first, "prompt": "again", "aspect_ratio": "auto"})
        assert Image.open(io.BytesIO(chained)).size == (1024, 1024)


# --- faults -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["proxy_5xx", "rate_limit_429", "drop_connection"])
def test_queue_call_faults_strike_then_stop_at_the_limit(kind: str) -> None:
    faults = FaultRates(**{kind: 1.0})
    with serve(faults=faults, fault_limit=2, retry_after_s=2.0) as (sim, client):
        for _ in range(2):
            if kind == "drop_connection":
                with pytest.raises(httpx.TransportError):
                    client.post(f"{sim.base_url}/{ECHO}", json={})
                continue
            response = client.post(f"{sim.base_url}/{ECHO}", json={})
            assert "x-fal-request-id" not in response.headers
            if kind == "proxy_5xx":
                assert response.status_code in (502, 503, 504) and "nginx" in response.text
            else:
                assert (response.status_code, response.headers["Retry-After"]) == (429, "2")
        assert sim.stats()["submits"] == 0  # a faulted submit creates nothing
        wait_completed(client, submit(client, sim, ECHO, {}))
        assert sim.stats()["faults"][kind] == 2


def test_faults_are_seeded() -> None:
    patterns = []
    for _ in range(2):
        with serve(faults=FaultRates(rate_limit_429=0.5), seed=3) as (sim, client):
            codes = [client.get(f"{sim.base_url}/fal-ai/wan/requests/{uuid.uuid4()}/status").status_code
                     for _ in range(20)]  # fmt: skip
            patterns.append(codes)
    assert patterns[0] == patterns[1] and {429, 404} == set(patterns[0])


def test_lost_submit_response_creates_the_request() -> None:
    with serve(faults=FaultRates(lost_submit_response=1.0), fault_limit=1) as (sim, client):
        with pytest.raises(httpx.TransportError):
            client.post(f"{sim.base_url}/{ECHO}", json={"job": 1})
        stats = sim.stats()
        assert stats["submits"] == 1 and len(stats["requests"]) == 1
        submit(client, sim, ECHO, {"job": 1})  # the blind resubmit a runner must avoid
        stats = sim.stats()
        assert (stats["submits"], stats["duplicate_submits"]) == (2, 1)
        assert stats["faults"]["lost_submit_response"] == 1


def test_a_slow_submit_answer_comes_after_the_request_exists() -> None:
    with serve(submit_latency_s=2.0) as (sim, client):
        seen_while_waiting: list[int] = []
        waiting = threading.Thread(target=lambda: seen_while_waiting.append(
            client.post(f"{sim.base_url}/{ECHO}", json={"job": 1}).status_code))  # fmt: skip
        started = time.monotonic()
        waiting.start()
        deadline = started + 10
        while sim.stats()["submits"] == 0:  # the request is created before its answer goes out
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not seen_while_waiting, "the answer is still on its way"
        waiting.join(timeout=10)
        assert seen_while_waiting == [200] and time.monotonic() - started >= 2.0


def test_model_error_fails_the_result_with_a_retryable_500() -> None:
    with serve(faults=FaultRates(model_error=1.0), fault_limit=1) as (sim, client):
        failed = submit(client, sim, WAN25_I2I, wan25_body())
        status = wait_completed(client, failed)
        assert status["error_type"] == "runner_server_error" and status["error"]
        result = client.get(failed["response_url"])
        assert (result.status_code, result.json()["error_type"]) == (500, "runner_server_error")
        assert result.headers["X-Fal-Error-Type"] == "runner_server_error"
        assert result.headers["X-Fal-Retryable"] == "true"
        assert finished_result(client, submit(client, sim, WAN25_I2I, wan25_body())).status_code == 200
        assert sim.stats()["faults"]["model_error"] == 1


def test_expired_result_fault_answers_404_from_then_on() -> None:
    with serve(faults=FaultRates(expired_result=1.0), fault_limit=1) as (sim, client):
        submitted = submit(client, sim, ECHO, {})
        result = finished_result(client, submitted)
        assert (result.status_code, result.json()["detail"]) == (404, "Request not found")
        assert client.get(submitted["response_url"]).status_code == 404
        assert client.get(submitted["status_url"]).status_code == 404
        assert sim.stats()["faults"]["expired_result"] == 1


def test_truncated_download_sends_less_than_its_content_length() -> None:
    with serve(faults=FaultRates(truncated_download=1.0), fault_limit=1) as (sim, client):
        image = finished_result(client, submit(client, sim, WAN25_I2I, wan25_body())).json()["images"][0]
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", image["url"]) as response:
            assert int(response.headers["Content-Length"]) == image["file_size"]
            for chunk in response.iter_raw():
                received += chunk
        assert 0 < len(received) < image["file_size"]
        assert len(client.get(image["url"]).content) == image["file_size"]
        assert sim.stats()["faults"]["truncated_download"] == 1


def test_slow_download_dribbles_the_whole_file() -> None:
    clock = ManualClock()  # its sleep moves the clock on at once: the pauses are counted, not waited
    config = {"faults": FaultRates(slow_download=1.0), "fault_limit": 1, "slow_download_s": 40.0}
    with serve(clock, run_time="fixed:1", **config) as (sim, client):
        submitted = submit(client, sim, WAN25_I2I, wan25_body())
        clock.advance(1)
        image = client.get(submitted["response_url"]).json()["images"][0]
        before = clock()
        slow = client.get(image["url"]).content
        assert clock() - before == pytest.approx(40.0)  # nine pauses between ten chunks
        assert slow == client.get(image["url"]).content and len(slow) == image["file_size"]
        assert clock() - before == pytest.approx(40.0)  # the limit reached: the second one is not slowed
        stats = sim.stats()
        assert (stats["faults"]["slow_download"], stats["downloads"]) == (1, 2)


# --- /_stats --------------------------------------------------------------------


def test_stats_count_calls_and_reset() -> None:
    with serve(run_time="fixed:0.05") as (sim, client):
        body = {"same": "input"}
        submitted = [submit(client, sim, ECHO, body) for _ in range(2)]
        other = submit(client, sim, ECHO, {"other": "input"})
        for s in [*submitted, other]:
            wait_completed(client, s)
        polls_before = sim.stats()["status_polls"]
        client.get(submitted[0]["status_url"])
        url = client.get(submitted[0]["response_url"]).json()["images"][0]["url"]
        client.get(url)
        client.put(submitted[1]["cancel_url"])
        stats = client.get(f"{sim.base_url}/_stats").json()
        assert sorted(stats["submits_per_input"].values()) == [1, 2] and stats["duplicate_submits"] == 1
        assert (stats["submits"], stats["status_polls"], stats["result_fetches"]) == (3, polls_before + 1, 1)
        assert (stats["downloads"], stats["cancels"]) == (1, 1)
        timing = stats["requests"][submitted[0]["request_id"]]
        assert timing["endpoint"] == ECHO and timing["run_s"] == pytest.approx(0.05)
        assert timing["submitted_at"] <= timing["started_at"] <= timing["completed_at"]
        reset = client.post(f"{sim.base_url}/_stats/reset").json()
        assert (reset["submits"], reset["requests"], reset["faults"]["proxy_5xx"]) == (0, {}, 0)
        assert sim.stats() == client.get(f"{sim.base_url}/_stats").json()
