import os
import signal
from pathlib import Path

import redis

from runner.embedded.server import EmbeddedRedis, find_redis_server


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


def test_the_server_ignores_the_terminals_ctrl_c_and_dies_with_its_run(tmp_path: Path) -> None:
    """Ctrl-C goes to the run's process group; the run stops Redis itself, last."""
    import subprocess
    import sys
    import time

    script = (
        "import sys, time, pathlib\n"
        "from runner.embedded.server import EmbeddedRedis\n"
        "EmbeddedRedis(pathlib.Path(sys.argv[1])).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "r")], stdout=subprocess.PIPE,
                           start_new_session=True, text=True)  # fmt: skip
    assert run.stdout is not None and run.stdout.readline() == "up\n"
    pid = int((tmp_path / "r" / "redis.pid").read_text())
    assert os.getpgid(pid) != os.getpgid(run.pid), "not in the run's process group"
    os.kill(run.pid, signal.SIGKILL)  # the run dies without stopping Redis
    run.wait()
    run.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "redis-server outlived its run"
