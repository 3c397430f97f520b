"""An automatic batch's window in Redis (`--max-in-flight auto`): moved by whichever worker learns something.

The window is the batch's `max_in_flight`, which the admission script reads; `jobs.window` says where it goes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from runner.ledger.store import Ledger


def adjust_window(ledger: Ledger, batch_id: str, step: Callable[[int, int], int],
                  tries: int = 3) -> tuple[int, int] | None:  # fmt: skip
    """Move an automatic batch's window to `step(window, cap)`, atomically with what it is now (other workers
    move it too): `(was, now)`, or None for a batch whose window is fixed (or a change lost to others)."""
    key = ledger.keys.batch(batch_id)
    for _ in range(tries):
        with ledger.redis.pipeline() as pipe:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                auto, window, cap = (json.loads(v) if v else None
                                     for v in pipe.hmget(key, ["window_auto", "max_in_flight", "window_cap"]))
                if not auto or not isinstance(window, int):
                    return None
                now = step(window, cap if isinstance(cap, int) else window)
                if now != window:
                    pipe.multi()
                    pipe.hset(key, "max_in_flight", json.dumps(now))
                    pipe.execute()
                return window, now
            except redis.WatchError:
                continue
    return None
