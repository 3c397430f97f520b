"""The simulator's time: the real monotonic clock, or a clock a test moves by hand."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds when called, and a way to wait on them."""

    def __call__(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """`time.monotonic` and `time.sleep`."""

    def __call__(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ManualClock:
    """Time that moves only when told: runs end, deadlines pass and results expire on `advance`.

    `sleep` returns at once, having moved the clock on, so a slow download
    takes no real time. Thread-safe: the server's threads read it while a
    test moves it.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now_s

    def advance(self, seconds: float) -> None:
        """Move the clock on; raises ValueError for a negative step."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: {seconds}")
        with self._lock:
            self._now_s += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
