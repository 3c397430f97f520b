"""Where `wan-batch serve` reads batches: a shared Redis, or the private Redis of an output folder.

An output folder's Redis belongs to whichever `wan-batch run` holds the folder:
the app adopts it while a run serves it, and when no run does (the run ended
and stopped it) starts it again; a run started then adopts it in turn
(`EmbeddedRedis.start` has the processes take turns). The app never takes the
run's folder lock but for a moment when it stops, so it never keeps a run out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobs.errors import FolderInUseError, UsageError
from runner.batches.run import hold_folder
from runner.embedded.server import EmbeddedRedis
from runner.ledger.connection import redis_client
from runner.ledger.store import Ledger

T = TypeVar("T")


class LedgerSource:
    """The ledger a request reads; `read(fn)` runs `fn(ledger)`, starting the folder's Redis again if it stopped."""

    def __init__(
        self, ledger: Ledger, where: str, server: EmbeddedRedis | None = None, out: Path | None = None
    ) -> None:
        """`server` (with `out`, the folder it serves): the output folder's Redis, started again when it stopped;
        without, a Redis whose owner keeps it (a shared one, or that of the `wan-batch run` this serves)."""
        self.ledger = ledger
        self.where = where
        self._server = server
        self._out = out
        self._lock = threading.Lock()

    @classmethod
    def open(cls, redis_url: str | None, out: Path) -> LedgerSource:
        """The shared Redis at `redis_url`, else the Redis of the output folder `out` (started if it is not up)."""
        if redis_url is not None:
            return cls(Ledger(redis_client(redis_url, patient=False)), "a shared Redis")
        redis_dir = out / ".wan-batch" / "redis"
        if not redis_dir.is_dir():
            raise UsageError(f"{out} holds no batches of wan-batch run (no {out / '.wan-batch'}); pass --out or"
                             " --redis")  # fmt: skip
        server = EmbeddedRedis(redis_dir, tied_to_parent=False)  # a run may adopt it
        # No retries: a server its run stopped is started again at once rather than waited for.
        client = redis.Redis(unix_socket_path=server.socket_path, socket_timeout=3, socket_connect_timeout=2,
                             retry=Retry(NoBackoff(), 0))  # fmt: skip
        source = cls(Ledger(client), f"the batches of {out}", server, out)
        source._revive()
        return source

    def read(self, fn: Callable[[Ledger], T]) -> T:
        try:
            return fn(self.ledger)
        except (redis.ConnectionError, FileNotFoundError):
            if self._server is None:
                raise
        self._revive()
        return fn(self.ledger)

    def close(self) -> None:
        """Stop the folder's Redis unless a run holds the folder (the run stops it when it ends)."""
        if self._server is None or self._out is None:
            return  # a shared Redis, or one its owner stops
        with suppress(FolderInUseError), hold_folder(self._out):
            self._server.stop()
        self.ledger.redis.close()

    def _revive(self) -> None:
        assert self._server is not None
        with self._lock:
            self._server.start()  # adopts the server of a run that serves the folder, else starts it
