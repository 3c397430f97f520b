"""The simulator's HTTP server: a threaded stdlib server in a background thread."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from runner.simulator.clock import Clock, SystemClock
from runner.simulator.config import SimConfig
from runner.simulator.responses import Delivery, Reply, json_reply
from runner.simulator.service import Call, Service

logger = logging.getLogger(__name__)
_SLOW_CHUNKS = 10
_SIGNAL_CHECK_S = 0.2


class _Server(ThreadingHTTPServer):
    """Remembers its open connections so that stopping can close idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: Service, slow_download_s: float,
                 sleep: Callable[[float], None]) -> None:  # fmt: skip
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.service = service
        self.slow_download_s = slow_download_s
        self.sleep = sleep
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake the handler threads blocked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wan-batch-sim"
    #: Headers and body go out in separate writes; Nagle would hold the body for the peer's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the default logs every request to stderr."""

    def _serve(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        call = Call(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            base_url=f"http://{host}",
        )
        try:
            reply = self.server.service.handle(call)
        except Exception:
            logger.exception("simulator failed on %s %s", self.command, url.path)
            reply = json_reply(500, {"detail": "Simulator error", "error_type": "internal_error"})
        try:
            self._deliver(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _read_chunked(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():
            pass  # trailer fields, unused
        return b"".join(chunks)

    def _deliver(self, reply: Reply) -> None:
        if reply.delay_s:
            self.server.sleep(reply.delay_s)  # the fault itself: a slow link
        if reply.delivery is Delivery.DROP:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.delivery is Delivery.TRUNCATE:
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.close_connection = True
        elif reply.delivery is Delivery.SLOW:
            self._dribble(reply.body)
        else:
            self.wfile.write(reply.body)

    def _dribble(self, body: bytes) -> None:
        """Up to _SLOW_CHUNKS chunks, with pauses between them that add up to `slow_download_s`."""
        chunk_bytes = max(1, -(-len(body) // _SLOW_CHUNKS))
        offsets = range(0, len(body), chunk_bytes)
        pause_s = self.server.slow_download_s / max(1, len(offsets) - 1)
        for offset in offsets:
            if offset:
                self.server.sleep(pause_s)  # the fault itself: a slow link
            self.wfile.write(body[offset : offset + chunk_bytes])
            self.wfile.flush()


@dataclass(frozen=True)
class RunningSimulator:
    """A started simulator: where it listens, and its /_stats."""

    base_url: str
    service: Service

    def stats(self) -> dict[str, Any]:
        """The same JSON as `GET {base_url}/_stats`."""
        return self.service.stats()


@contextmanager
def run_simulator(config: SimConfig, clock: Clock | None = None) -> Iterator[RunningSimulator]:
    """Serve the simulated queue on `config.host:config.port` in a background thread.

    `clock` (default: the real one) times runs, deadlines, retention and the
    pauses of slow downloads; a `ManualClock` makes all of them move only when
    a test says. Stops the server and closes its connections on exit. Raises
    OSError when the address cannot be bound.
    """
    clock = clock or SystemClock()
    service = Service(config, clock)
    server = _Server((config.host, config.port), service, config.slow_download_s, clock.sleep)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fal-queue-simulator", daemon=True)  # fmt: skip
    thread.start()
    try:
        yield RunningSimulator(_base_url(config.host, server.server_address[1]), service)
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        service.close()


def serve_until_interrupted(config: SimConfig, announce: Callable[[str], None]) -> None:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM; `announce` gets the base URL."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        with run_simulator(config) as simulator, suppress(KeyboardInterrupt):
            announce(simulator.base_url)
            while True:
                # Wake now and then: a signal the kernel hands to a server thread only runs its
                # Python handler when the main thread returns to the interpreter.
                time.sleep(_SIGNAL_CHECK_S)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
