"""Serving the app with uvicorn: on its own (`wan-batch serve`) or beside a run (`wan-batch run --serve`).

The listening socket is bound before anything else starts, so a port in use
or a host that is not this machine's is said at once (exit 2), and port 0
picks a free port whose URL is printed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette

from jobs.errors import UsageError

_START_TIMEOUT_S = 15.0


def parse_listen(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`[HOST:]PORT` (an IPv6 host in brackets) as (host, port); raises UsageError."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--serve {value!r}: not [HOST:]PORT (e.g. 8000, or 0.0.0.0:8000)")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port; raises UsageError naming them when it cannot."""
    try:
        # With its protocol named (TCP), asyncio turns Nagle off on each connection: else a response waits ~40 ms.
        family, kind, proto = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:3]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot serve on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else shown}:{port}"


def serve_forever(app: Starlette, sock: socket.socket, access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn handles them, finishing the requests under way)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=access_log, lifespan="off"))
    server.run(sockets=[sock])


@contextmanager
def serving_in_background(app: Starlette, sock: socket.socket) -> Iterator[str]:
    """Serve from a thread while the block runs; yields the app's URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="wan-batch-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)  # uvicorn says when it listens by a flag only
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=_START_TIMEOUT_S)
        sock.close()
