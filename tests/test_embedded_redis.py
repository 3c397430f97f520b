import os
import signal
from pathlib import Path

import redis

from runner.embedded_redis import EmbeddedRedis, find_redis_server


def client_of(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(unix_socket_path=server.socket_path)


def test_data_survives_a_restart_through_the_append_only_file(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r") as server:
        client_of(server).set("request_id", "abc")
    assert (tmp_path / "r" / "appendonly.aof").exists()
    assert not Path(server.socket_path).exists()
    with EmbeddedRedis(tmp_path / "r") as again:
        assert client_of(again).get("request_id") == b"abc"


def test_a_server_left_by_a_killed_run_is_adopted(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "r")
    first.start()
    client_of(first).set("k", "v")
    pid = int((tmp_path / "r" / "redis.pid").read_text())
    second = EmbeddedRedis(tmp_path / "r")  # as a rerun after SIGKILL would: the old server still runs
    second.start()
    assert client_of(second).get("k") == b"v"
    assert int((tmp_path / "r" / "redis.pid").read_text()) == pid, "no second server was started"
    second.stop()
    first.stop()


def test_a_crashed_server_loses_no_acknowledged_write(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r")
    server.start()
    client_of(server).hset("job", "request_id", "r-1")
    os.kill(int((tmp_path / "r" / "redis.pid").read_text()), signal.SIGKILL)  # no shutdown, no flush
    server.stop()
    with EmbeddedRedis(tmp_path / "r") as again:
        assert client_of(again).hget("job", "request_id") == b"r-1"


def test_deep_folders_get_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep)
    assert len(server.socket_path) <= 100
    assert server.socket_path == EmbeddedRedis(deep).socket_path, "a rerun finds the same socket"
    with server:
        assert client_of(server).ping()
    assert server.broker_url == f"redis+socket://{server.socket_path}"


def test_the_shipped_binary_is_found() -> None:
    assert Path(find_redis_server()).name == "redis-server"
