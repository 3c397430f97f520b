"""The simulator's requests and their scheduling.

Transitions are computed from timestamps, not from polls: every call first
replays, in time order, the events due by now (a run ends, a slot frees and
the next queued request starts at that instant, a start deadline passes).
So a request starts at max(its submit time, the time a slot freed), whatever
the clients' polling, and `max_in_progress` and the timings are exact.

A completed request is purged once past its retention: its input, errors
and (through `on_purge`) its result go, its timings stay for /_stats. What
fal's request history needs (the input, the timings, the outcome) is kept
apart, in a FinishedRequest that outlives the purge: fal keeps payloads 30 days.
"""

from __future__ import annotations

import bisect
import heapq
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from runner.simulator.requests import (
    CancelResult,
    FinishedRequest,
    Outcome,
    Phase,
    RequestView,
    Retention,
    SimRequest,
    Submission,
)

#: Called when a request starts: decides its outcome, may record input errors.
StartHook = Callable[[SimRequest], Outcome]
#: Called, under the store's lock, when a request is purged: drop what else is held for it.
PurgeHook = Callable[[SimRequest], None]


def _ignore_purge(request: SimRequest) -> None:
    """The default PurgeHook: the store holds nothing else."""


class RequestStore:
    """Requests by id, the queue, the running slots and the counters they imply."""

    def __init__(
        self,
        concurrency: int,
        retention: Retention,
        on_start: StartHook,
        on_purge: PurgeHook = _ignore_purge,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._concurrency = concurrency
        self._retention = retention
        self._on_start = on_start
        self._on_purge = on_purge
        self._clock = clock
        self._wall_offset = time.time() - clock()
        self._lock = threading.Lock()
        self._requests: dict[str, SimRequest] = {}
        self._queue_keys: list[tuple[int, int]] = []
        self._queued: dict[tuple[int, int], SimRequest] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        #: (end of retention, seq, id) of completed requests not yet purged.
        self._expiries: list[tuple[float, int, str]] = []
        self._running: dict[str, SimRequest] = {}
        #: Completed requests in completion order, never purged (the history reads them).
        self._finished: list[FinishedRequest] = []
        self._seq = 0
        self._stats_from_seq = 0
        self._max_in_progress = 0

    def submit(self, request_id: str, submission: Submission, draw: Callable[[], tuple[float, int]]) -> RequestView:
        """Queue a new request; `draw` gives its (run time, seed), called under the lock."""
        with self._lock:
            now = self._advance()
            run_s, seed = draw()
            request = SimRequest(request_id, self._seq, submission, now, run_s, seed)
            self._seq += 1
            self._requests[request_id] = request
            key = self._queue_key(request)
            bisect.insort(self._queue_keys, key)
            self._queued[key] = request
            if submission.start_timeout_s is not None:
                deadline = now + submission.start_timeout_s
                heapq.heappush(self._deadlines, (deadline, request.seq, request_id))
            self._fill_slots(now)
            return self._view(request, now)

    def view(self, request_id: str, app: str) -> RequestView | None:
        """The request now, or None if unknown, expired or of another app."""
        with self._lock:
            now = self._advance()
            request = self._live(request_id, app)
            return None if request is None else self._view(request, now)

    def cancel(self, request_id: str, app: str) -> CancelResult:
        """Cancel a queued or running request; it completes at once, cancelled (fal: best effort)."""
        with self._lock:
            now = self._advance()
            request = self._live(request_id, app)
            if request is None:
                return CancelResult.NOT_FOUND
            if request.phase is Phase.COMPLETED:
                return CancelResult.ALREADY_COMPLETED
            if request.phase is Phase.IN_QUEUE:
                self._dequeue(request)
            else:
                del self._running[request.id]
                request.run_s = now - self._started(request)
            self._complete(request, now, Outcome.CANCELLED)
            self._fill_slots(now)
            return CancelResult.CANCELLATION_REQUESTED

    def expire(self, request_id: str) -> None:
        """Make a request answer 404 from now on (the expired_result fault)."""
        with self._lock:
            if request_id in self._requests:
                self._requests[request_id].expired = True

    def find(self, request_id: str) -> SimRequest | None:
        """Any request ever submitted, expired or purged (check `purged` before reading its input)."""
        with self._lock:
            return self._requests.get(request_id)

    def finished(self, lag_s: float) -> tuple[list[FinishedRequest], float]:
        """Requests that completed `lag_s` or more ago, in completion order, and now (monotonic)."""
        with self._lock:
            now = self._advance()
            count = bisect.bisect_right(self._finished, now - lag_s, key=lambda done: done.completed_at)
            return self._finished[:count], now

    def finished_from(self, index: int) -> tuple[list[FinishedRequest], int]:
        """Requests that completed since the first `index` of them, and the index to ask from next."""
        with self._lock:
            self._advance()
            return self._finished[index:], len(self._finished)

    def wall_time(self, monotonic_s: float) -> float:
        """A monotonic instant of this store as Unix time."""
        return monotonic_s + self._wall_offset

    def snapshot(self) -> dict[str, Any]:
        """Queue counters and per-request timings (since the last reset) for /_stats."""
        with self._lock:
            self._advance()
            timings = {
                request.id: self._timing(request)
                for request in self._requests.values()
                if request.seq >= self._stats_from_seq
            }
            return {
                "max_in_progress": self._max_in_progress,
                "queued": len(self._queued),
                "in_progress": len(self._running),
                "held_inputs": sum(not request.purged for request in self._requests.values()),
                "requests": timings,
            }

    def reset_stats(self) -> None:
        """Forget timings of earlier requests; max_in_progress restarts from now."""
        with self._lock:
            self._advance()
            self._stats_from_seq = self._seq
            self._max_in_progress = len(self._running)

    # --- the replay of events ---------------------------------------------

    def _advance(self) -> float:
        """Apply every event due by now, in time order, then purge what is past retention; return now."""
        now = self._clock()
        self._replay(now)
        while self._expiries and self._expiries[0][0] < now:
            _, _, request_id = heapq.heappop(self._expiries)
            self._purge(self._requests[request_id])
        return now

    def _replay(self, now: float) -> None:
        """Run ends, slot fills and start deadlines due by `now`, in time order."""
        while True:
            ending = min(self._running.values(), key=lambda r: r.end_at, default=None)
            deadline = self._next_deadline()
            end_at = ending.end_at if ending is not None else None
            if end_at is not None and end_at <= now and (deadline is None or end_at <= deadline[0]):
                assert ending is not None
                del self._running[ending.id]
                self._complete(ending, end_at, ending.outcome or Outcome.OK)
                self._fill_slots(end_at)
            elif deadline is not None and deadline[0] <= now:
                heapq.heappop(self._deadlines)
                request = deadline[1]
                self._dequeue(request)
                self._complete(request, deadline[0], Outcome.TIMED_OUT)
            else:
                return

    def _next_deadline(self) -> tuple[float, SimRequest] | None:
        """The earliest start deadline of a request still queued (stale entries dropped)."""
        while self._deadlines:
            deadline, _, request_id = self._deadlines[0]
            request = self._requests[request_id]
            if request.phase is Phase.IN_QUEUE:
                return deadline, request
            heapq.heappop(self._deadlines)
        return None

    def _fill_slots(self, at: float) -> None:
        while self._queue_keys and len(self._running) < self._concurrency:
            request = self._queued.pop(self._queue_keys.pop(0))
            request.started_at = at
            request.outcome = self._on_start(request)
            if request.outcome is not Outcome.OK and request.outcome is not Outcome.MODEL_ERROR:
                request.run_s = 0.0  # the model rejects a bad input at once
            self._running[request.id] = request
            self._max_in_progress = max(self._max_in_progress, len(self._running))

    def _complete(self, request: SimRequest, at: float, outcome: Outcome) -> None:
        request.completed_at = at
        request.outcome = outcome
        heapq.heappush(self._expiries, (at + self._retention.of(request), request.seq, request.id))
        # Events replay in time order and a cancel completes at now: `_finished` stays sorted, to bisect.
        assert not self._finished or self._finished[-1].completed_at <= at
        self._finished.append(_finished_request(request, at, outcome))

    def _purge(self, request: SimRequest) -> None:
        request.purged = True
        request.submission = replace(request.submission, body={}, image_errors=())
        request.input_errors = []
        self._on_purge(request)

    @staticmethod
    def _started(request: SimRequest) -> float:
        assert request.started_at is not None
        return request.started_at

    def _dequeue(self, request: SimRequest) -> None:
        key = self._queue_key(request)
        del self._queue_keys[bisect.bisect_left(self._queue_keys, key)]
        del self._queued[key]

    # --- reading ----------------------------------------------------------

    def _live(self, request_id: str, app: str) -> SimRequest | None:
        request = self._requests.get(request_id)
        if request is None or request.submission.app != app or request.expired or request.purged:
            return None
        return request

    def _view(self, request: SimRequest, now: float) -> RequestView:
        position = None
        if request.phase is Phase.IN_QUEUE:
            position = bisect.bisect_left(self._queue_keys, self._queue_key(request))
        return RequestView(request, request.phase, position, now)

    def _timing(self, request: SimRequest) -> dict[str, Any]:
        started, completed = request.started_at, request.completed_at
        waited_until = started if started is not None else completed
        return {
            "endpoint": request.submission.endpoint,
            "priority": "low" if request.submission.low_priority else "normal",
            "submitted_at": self.wall_time(request.submitted_at),
            "started_at": None if started is None else self.wall_time(started),
            "completed_at": None if completed is None else self.wall_time(completed),
            "queue_s": None if waited_until is None else waited_until - request.submitted_at,
            "run_s": request.run_s if started is not None and completed is not None else None,
            "outcome": None if completed is None else (request.outcome or Outcome.OK).value,
        }

    @staticmethod
    def _queue_key(request: SimRequest) -> tuple[int, int]:
        return (1 if request.submission.low_priority else 0, request.seq)


def _finished_request(request: SimRequest, at: float, outcome: Outcome) -> FinishedRequest:
    started = request.started_at
    return FinishedRequest(
        id=request.id,
        seq=request.seq,
        endpoint=request.submission.endpoint,
        outcome=outcome,
        submitted_at=request.submitted_at,
        started_at=started,
        completed_at=at,
        run_s=None if started is None else request.run_s,
        input_json=json.dumps(request.submission.body, separators=(",", ":")),
    )
