"""docker-compose.yml is checked without Docker: parsed, and each service's command started here (the web
service's for real, against a real Redis, with its healthcheck run against it)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
BIN = Path(sys.executable).parent
PROJECT_SERVICES = ["worker", "beat", "flower", "web"]
TOKEN = "s3rve-t0ken-for-the-compose-test"


def test_the_services_are_there() -> None:
    assert set(SERVICES) == {"redis", *PROJECT_SERVICES}


def test_redis_persists_to_a_volume_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    [volume] = redis["volumes"]
    assert volume.split(":")[0] in COMPOSE["volumes"] and volume.endswith(":/data")


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_the_project_services_build_this_project_and_share_redis_and_data(name: str) -> None:
    service = SERVICES[name]
    assert service["build"] == "."
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in service["depends_on"]
    assert {v.split(":")[1] for v in service["volumes"]} == {"/data/manifests", "/data/out"}


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name in PROJECT_SERVICES:
        environment = SERVICES[name]["environment"]
        for key in ("FAL_KEY", "WAN_BATCH_GATEWAY_TOKEN"):
            assert re.fullmatch(r"\$\{" + key + r":-\}", environment[key]), "taken from the environment or .env"
    # The dashboard's token too: without one, web refuses to start (exit 2) and the other services run.
    token = SERVICES["web"]["environment"]["WAN_BATCH_SERVE_TOKEN"]
    assert token == "${WAN_BATCH_SERVE_TOKEN:-}", "from the environment or .env (without it, web refuses to start)"
    assert not any("WAN_BATCH_SERVE_TOKEN" in SERVICES[name]["environment"] for name in ("worker", "beat", "flower"))


def test_the_dockerfile_installs_the_project_with_flower() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY jobs ./jobs" in text and "COPY runner ./runner" in text
    assert 'pip install ".[monitor]"' in text


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_each_command_starts_outside_docker(name: str) -> None:
    """The service's own command, from this environment's bin, asked for --help instead of running."""
    program, *rest = SERVICES[name]["command"]
    executable = BIN / program
    assert executable.exists() or shutil.which(program)
    options_at = next((i for i, word in enumerate(rest) if word.startswith("--")), len(rest))
    subcommand = rest[:options_at]  # e.g. ["worker"], or ["-A", "runner.tasks", "flower"]
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([str(executable), *subcommand, "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_the_web_service_serves_the_shared_redis_beyond_its_container_and_checks_its_health() -> None:
    web = SERVICES["web"]
    command = web["command"]
    assert command[:2] == ["wan-batch", "serve"] and "--allow-actions" not in command  # read-only
    assert command[command.index("--host") + 1] == "0.0.0.0"  # a container's port is reached from outside it
    port = command[command.index("--port") + 1]
    assert web["ports"] == [f"{port}:{port}"]
    check, python, dash_c, code = web["healthcheck"]["test"]
    assert (check, python, dash_c) == ("CMD", "python", "-c")  # the image has python, not curl
    assert f"http://127.0.0.1:{port}/healthz" in code


class _Output:
    """A process's output, read line by line by a thread: waiting for a line then has a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        self._stream = process.stdout
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines:
                if found := re.search(pattern, line):
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matches {pattern!r} in {timeout_s} s:\n{self.text()}")
            with contextlib.suppress(queue.Empty):
                self.lines.append(self._queue.get(timeout=left))

    def close(self) -> None:
        """Once the process has ended: read to the end and close the pipe."""
        self._reader.join(timeout=30)
        self._stream.close()

    def text(self) -> str:
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)


def _web_command(port: int) -> list[str]:
    """The web service's own command, from this environment's bin, on `port` (0: a free one)."""
    program, *rest = SERVICES["web"]["command"]
    rest[rest.index("--port") + 1] = str(port)
    return [str(BIN / program), *rest]


def _env(redis_url: str, **more: str) -> dict[str, str]:
    """This environment with the service's Redis, without a token or proxy of its own."""
    dropped = {"WAN_BATCH_SERVE_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    env = {key: value for key, value in os.environ.items() if key.upper() not in dropped}
    return {**env, "REDIS_URL": redis_url, **more}


def _healthcheck(base_url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The service's healthcheck, aimed at base_url instead of the container's port."""
    code = SERVICES["web"]["healthcheck"]["test"][3]
    port = SERVICES["web"]["command"][SERVICES["web"]["command"].index("--port") + 1]
    code = code.replace(f"http://127.0.0.1:{port}", base_url)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def web_service(redis_server: Any) -> Iterator[tuple[subprocess.Popen[str], _Output, str, dict[str, str]]]:
    """The web service's command, running with a token on the session's Redis: (process, output, URL, env)."""
    env = _env(redis_server.url, WAN_BATCH_SERVE_TOKEN=TOKEN)
    process = subprocess.Popen(_web_command(0), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    output = _Output(process)
    try:
        url = output.wait_for(r"serving a shared Redis at (http://127\.0\.0\.1:\d+)/")[1]
        yield process, output, url, env
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        output.close()


def test_the_web_service_runs_outside_docker(web_service: Any) -> None:
    """Started as compose starts it (0.0.0.0, REDIS_URL, the token): open /healthz, everything else behind the
    token, its healthcheck passes; SIGTERM (`docker stop`) shuts it down gracefully."""
    process, output, url, env = web_service
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as http:
        health = http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"redis": True})
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        metrics = http.get("/metrics", headers=bearer)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert "# TYPE wan_batch_batches gauge" in metrics.text
        assert http.get("/api/batches").status_code == 401
        batches = http.get("/api/batches", headers=bearer)
        assert batches.status_code == 200 and isinstance(batches.json(), list)
        page = http.get("/")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")

    healthy = _healthcheck(url, env)
    assert healthy.returncode == 0, healthy.stderr

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143, "stopped as `run` is by SIGTERM, once it has shut down"
    output.wait_for(r"Finished server process")
    assert "Traceback" not in output.text()
    down = _healthcheck(url, env)
    assert down.returncode != 0, "the healthcheck fails once nothing answers"


@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_the_web_service_refuses_to_start_without_a_token(redis_server: Any, token: str | None) -> None:
    env = _env(redis_server.url) if token is None else _env(redis_server.url, WAN_BATCH_SERVE_TOKEN=token)
    done = subprocess.run(_web_command(0), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "WAN_BATCH_SERVE_TOKEN" in done.stderr
    assert "http://" not in done.stderr  # it never listened
