"""The simulator reads a request's input images as fal does, and fails it with a 422 when it cannot.

Images are served over real HTTP by a stdlib server on 127.0.0.1 (`ImageServer`, which
`tests/test_urlcheck.py` uses too).
"""

from __future__ import annotations

import base64
import io
import random
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from runner.cli import main
from runner.simulator import ManualClock, RunningSimulator
from tests.test_sim_cli import sim_process
from tests.test_simulator import ECHO, png_data_uri, serve, submit, wait_completed
from tests.test_simulator_history import PAST_LAG_S, listed

#: Long enough for any test here; the slow path is released at teardown, so it is never waited out.
_HELD_S = 10.0


def png_bytes(size: tuple[int, int] = (48, 32), noise: bool = False) -> bytes:
    image = Image.new("RGB", size, (30, 160, 90))
    if noise:  # incompressible: a file of known bulk
        rng = random.Random(1)
        image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size[0] * size[1])])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()
#: (status, content type, body, other headers)
Answer = tuple[int, str, bytes, dict[str, str]]
ANSWERS: dict[str, Answer] = {
    "/ok.png": (200, "image/png", PNG, {}),
    "/slow.png": (200, "image/png", PNG, {}),
    "/big.png": (200, "image/png", png_bytes((64, 64), noise=True), {}),
    "/untyped.png": (200, "application/octet-stream", PNG, {}),
    "/page.html": (200, "text/html; charset=utf-8", b"<html><body>not an image</body></html>", {}),
    "/redirect.png": (302, "text/plain", b"", {"Location": "/ok.png"}),
    "/no-head.png": (206, "image/png", PNG[:1], {"Content-Range": f"bytes 0-0/{len(PNG)}"}),
}


class ImageServer:
    """A real HTTP server of test images; records each call as (method, path, Range header).

    Paths: /ok.png, /missing.png (404), /page.html (text/html), /big.png (noise, ~12 KB),
    /untyped.png (application/octet-stream), /redirect.png (302 to /ok.png), /no-head.png
    (405 to HEAD), /slow.png (answers only when `release` is set: at teardown at the latest),
    /held/N (answers once `concurrency` calls were in flight together, see `max_in_flight`).
    """

    def __init__(self, host: str = "127.0.0.1", concurrency: int = 2) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.slow_started = threading.Event()
        self.release = threading.Event()
        self.concurrency = concurrency
        self.in_flight = 0
        self.max_in_flight = 0
        self._changed = threading.Condition()
        self._server = _QuietServer((host, 0), _handler_of(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self.base_url = f"http://{host}:{self._server.server_port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def hits(self, path: str | None = None) -> int:
        """Calls of any method to `path` (to any path when None)."""
        return sum(1 for _, called, _ in self.calls if path is None or called == path)

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def answer(self, method: str, path: str) -> Answer:
        """What a call gets, once the slow and held paths have waited."""
        if path == "/slow.png":
            self.slow_started.set()
            self.release.wait(_HELD_S)
        elif path.startswith("/held/"):
            self.hold()
            path = "/ok.png"
        elif path == "/no-head.png" and method == "HEAD":
            return 405, "text/plain", b"", {"Allow": "GET"}
        return ANSWERS.get(path, (404, "text/plain", b"not found", {}))

    def hold(self) -> None:
        """Wait until `concurrency` calls of /held/ were in flight at once (or a safety timeout)."""
        with self._changed:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.max_in_flight >= self.concurrency, timeout=_HELD_S)
            self.in_flight -= 1


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that timed out has gone before the slow path answers."""


def _handler_of(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def log_message(self, *_args: Any) -> None:
            pass

        def _answer(self, with_body: bool) -> None:
            server.calls.append((self.command, self.path, self.headers.get("Range")))
            status, content_type, body, headers = server.answer(self.command, self.path)
            self.send_response(status)
            for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

    return Handler


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


def body_of(endpoint: str, *refs: str) -> dict[str, Any]:
    if endpoint == WAN25_I2I:
        return {"prompt": "p", "image_urls": list(refs)}
    return {"prompt": "p", "image_url": refs[0]}


def run_one(sim: RunningSimulator, client: httpx.Client, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    """Submit and, on a ManualClock with fixed:0 run times, read the result at once."""
    submitted = submit(client, sim, endpoint, body)
    status = client.get(submitted["status_url"])
    assert (status.status_code, status.json()["status"]) == (200, "COMPLETED"), status.text
    return client.get(submitted["response_url"])


def detail_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    return detail


# --- what fails, and how ------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "paths", "loc"),
    [
        (WAN25_I2I, ["/missing.png"], ["body", "image_urls", 0]),
        (WAN25_I2I, ["/ok.png", "/missing.png"], ["body", "image_urls", 1]),
        (WAN22_I2I, ["/missing.png"], ["body", "image_url"]),
        (ECHO, ["/missing.png"], ["body", "image_url"]),
    ],
)
def test_an_image_that_404s_fails_the_request_with_422(images: ImageServer, endpoint: str, paths: list[str],
                                                       loc: list[Any]) -> None:  # fmt: skip
    clock = ManualClock()
    with serve(clock, run_time="fixed:0") as (sim, client):
        body = body_of(endpoint, *[images.url(path) for path in paths])
        submitted = submit(client, sim, endpoint, body)
        status = wait_completed(client, submitted)
        assert status["error"] and status["metrics"] == {"inference_time": 0.0}
        detail = detail_of(client.get(submitted["response_url"]))
        assert [(d["loc"], d["type"], d["input"]) for d in detail] == [(loc, "file_download_error",
                                                                       images.url("/missing.png"))]  # fmt: skip
        assert "Failed to download the file (HTTP 404)" in detail[0]["msg"]
        assert sim.stats()["requests"][submitted["request_id"]]["outcome"] == "invalid_input"
        clock.advance(PAST_LAG_S)
        [item] = listed(client, sim, endpoint_id=endpoint)
        assert (item["request_id"], item["status_code"], item["duration"]) == (submitted["request_id"], 422, 0.0)


@pytest.mark.parametrize("path", ["/ok.png", "/redirect.png", "/untyped.png"])
@pytest.mark.parametrize("endpoint", [WAN22_I2I, WAN25_I2I, ECHO])
def test_an_image_that_loads_runs(images: ImageServer, endpoint: str, path: str) -> None:
    with serve(ManualClock(), run_time="fixed:0") as (sim, client):
        result = run_one(sim, client, endpoint, body_of(endpoint, images.url(path)))
        assert result.status_code == 200, result.text
        assert images.hits(path) == 1, "fetched once, at submit"


@pytest.mark.parametrize(
    ("path", "overrides", "error_type", "message"),
    [
        ("/page.html", {}, "image_load_error", "Failed to load the image (not a readable image)"),
        ("/big.png", {"fetch_max_mb": 4 / 1024}, "file_too_large", "maximum allowed size of 4096 bytes"),
        ("/slow.png", {"fetch_timeout_s": 0.2}, "file_download_error", "(timed out after 0.2 s)"),
        ("/missing.png", {}, "file_download_error", "(HTTP 404)"),
    ],
)
def test_why_an_image_cannot_be_read(images: ImageServer, path: str, overrides: dict[str, Any], error_type: str,
                                     message: str) -> None:  # fmt: skip
    with serve(ManualClock(), run_time="fixed:0", **overrides) as (sim, client):
        [entry] = detail_of(run_one(sim, client, WAN25_I2I, body_of(WAN25_I2I, images.url(path))))
        assert (entry["type"], entry["loc"]) == (error_type, ["body", "image_urls", 0])
        assert message in entry["msg"]


def test_an_unreachable_host_fails_the_request() -> None:
    with serve(ManualClock(), run_time="fixed:0") as (sim, client):
        url = "http://127.0.0.1:9/a.png"  # nothing listens on the discard port
        [entry] = detail_of(run_one(sim, client, WAN22_I2I, body_of(WAN22_I2I, url)))
        assert entry["type"] == "file_download_error" and "ConnectError" in entry["msg"]


def test_a_schema_error_comes_before_any_fetch(images: ImageServer) -> None:
    with serve(ManualClock(), run_time="fixed:0") as (sim, client):
        body = {**body_of(WAN25_I2I, images.url("/missing.png")), "num_images": 9}
        detail = detail_of(run_one(sim, client, WAN25_I2I, body))
        assert [d["loc"] for d in detail] == [["body", "num_images"]]
        assert images.hits() == 0


# --- data URIs, other hosts, and the flag ----------------------------------------


@pytest.mark.parametrize(
    ("ref", "error_type"),
    [
        (png_data_uri(), None),
        ("data:image/png," + quote_from_bytes(PNG), None),
        ("data:image/png;base64,@@@notbase64", "image_load_error"),
        ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "image_load_error"),
        ("data:image/png;base64", "image_load_error"),
        ("in/a.png", "file_download_error"),
        ("ftp://127.0.0.1/a.png", "file_download_error"),
    ],
)
@pytest.mark.parametrize("fetch_inputs", ["local", "none"])
def test_data_uris_are_decoded_whatever_the_flag(ref: str, error_type: str | None, fetch_inputs: str) -> None:
    with serve(ManualClock(), run_time="fixed:0", fetch_inputs=fetch_inputs) as (sim, client):
        result = run_one(sim, client, WAN22_I2I, body_of(WAN22_I2I, ref))
        if error_type is None:
            assert result.status_code == 200, result.text
        else:
            [entry] = detail_of(result)
            assert (entry["type"], entry["loc"]) == (error_type, ["body", "image_url"])
            assert len(entry["input"]) < 40, "a data URI is not repeated whole"


def test_fetch_inputs_none_never_fetches(images: ImageServer) -> None:
    with serve(ManualClock(), run_time="fixed:0", fetch_inputs="none") as (sim, client):
        for path in ("/missing.png", "/page.html", "/ok.png"):
            assert run_one(sim, client, WAN25_I2I, body_of(WAN25_I2I, images.url(path))).status_code == 200
    assert images.hits() == 0


def test_hosts_other_than_localhost_are_fetched_only_with_all() -> None:
    other = ImageServer(host="127.0.0.2")  # loopback too (Linux routes 127/8 to lo), but not a host "local" fetches
    try:
        body = body_of(WAN25_I2I, other.url("/missing.png"))
        with serve(ManualClock(), run_time="fixed:0") as (sim, client):
            assert run_one(sim, client, WAN25_I2I, body).status_code == 200
            assert (
                run_one(sim, client, WAN25_I2I, body_of(WAN25_I2I, "https://cdn.example.test/a.png")).status_code == 200
            )
        assert other.hits() == 0
        with serve(ManualClock(), run_time="fixed:0", fetch_inputs="all", fetch_timeout_s=1) as (sim, client):
            detail = detail_of(run_one(sim, client, WAN25_I2I, body))
        assert detail[0]["loc"] == ["body", "image_urls", 0] and other.hits("/missing.png") == 1
    finally:
        other.close()


def test_an_output_of_the_simulator_is_read_without_a_download() -> None:
    with serve(ManualClock(), run_time="fixed:0") as (sim, client):
        first = run_one(sim, client, WAN25_I2I, {"prompt": "p", "image_urls": [png_data_uri()]})
        url = first.json()["images"][0]["url"]
        assert run_one(sim, client, WAN22_I2I, body_of(WAN22_I2I, url)).status_code == 200
        assert sim.stats()["downloads"] == 0


# --- the store is never held by a fetch ------------------------------------------


def test_a_slow_fetch_holds_no_other_call(images: ImageServer) -> None:
    with serve(ManualClock(), run_time="fixed:0") as (sim, client):
        earlier = submit(client, sim, WAN25_I2I, body_of(WAN25_I2I, images.url("/ok.png")))
        answers: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answers.append(
            client.post(f"{sim.base_url}/{WAN25_I2I}", json=body_of(WAN25_I2I, images.url("/slow.png")))))  # fmt: skip
        slow.start()
        assert images.slow_started.wait(_HELD_S)
        # The slow submit is fetching: the queue still answers everything else.
        assert client.get(earlier["status_url"]).json()["status"] == "COMPLETED"
        assert client.get(f"{sim.base_url}/_stats").json()["submits"] == 1
        assert slow.is_alive() and not answers
        images.release.set()
        slow.join(_HELD_S)
        assert answers and answers[0].status_code == 200
        assert client.get(answers[0].json()["response_url"]).status_code == 200


# --- the command ----------------------------------------------------------------


def test_sim_command_takes_fetch_inputs(images: ImageServer) -> None:
    refused = CliRunner().invoke(main, ["sim", "--fetch-inputs", "some"])
    assert refused.exit_code == 2 and "'some' is not one of 'local', 'all', 'none'" in refused.output
    body = body_of(WAN22_I2I, images.url("/missing.png"))
    for flag, expected in (("none", 200), ("local", 422)):
        with (
            sim_process(["--fetch-inputs", flag, "--run-time", "fixed:0"]) as served,
            httpx.Client(headers={"Authorization": "Key any"}, timeout=10) as client,
        ):
            submitted = client.post(f"{served.base_url}/{WAN22_I2I}", json=body).json()
            wait_completed(client, submitted)
            assert client.get(submitted["response_url"]).status_code == expected, flag
        assert f"input images fetched: {flag}" in served.output
    assert Counter(path for _, path, _ in images.calls) == {"/missing.png": 1}
