"""Timers become Celery messages: each worker runs a dispatcher that sends the due ones and keeps its leases.

The dispatcher is a thread in every worker process (a bootstep of the
Celery worker, `runner.tasks`). It claims due timers and sends each as a
`wan_batch.timer` message; it sleeps until the earliest timer is due (at
most `tick_s`), and wakes at once when a step of its own worker sets one
sooner. It renews the leases of the timers its worker runs, so they stay
held while they run and come back for another worker when this one dies.
It takes over a timer from a worker whose lease lapsed only a whole lease
later, and only once it has itself been connected for a whole lease (a
look at Redis that took long counts as an outage too): after an outage,
live workers renew theirs first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from jobs.backoff import Backoff, backoff_delay_s
from runner.ledger.timers import Timer, Timers
from runner.settings import TimerSettings

log = logging.getLogger(__name__)

QUEUE = "wan-batch"
TIMER_TASK = "wan_batch.timer"
#: Between looks at a Redis that does not answer.
_OUTAGE_BACKOFF = Backoff(base_s=0.2, cap_s=5.0, jitter=0.0)


def send_timer(app: Celery, timer: Timer) -> None:
    app.send_task(TIMER_TASK, args=[timer.kind.value, timer.owner, timer.item], queue=QUEUE)


class Dispatcher:
    """Sends due timers as messages and renews the leases of the timers its worker holds."""

    def __init__(
        self, app: Celery, timers: Timers, settings: TimerSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._app = app
        self._timers = timers
        self._settings = settings
        self._clock = clock
        self._held: dict[Timer, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._wake_at = float("inf")
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        #: Since when Redis has answered without a break (None: it does not answer now).
        self._connected_since: float | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wan-batch-dispatcher", daemon=True)
        self._thread.start()
        self._listener = threading.Thread(target=self._listen, name="wan-batch-dispatcher-nudges", daemon=True)
        self._listener.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._listener):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._listener = None

    def hold(self, timer: Timer, mark: str) -> None:
        """This worker runs `timer` now (as `mark`): keep its lease until `release`."""
        with self._lock:
            self._held[timer] = mark

    def release(self, timer: Timer) -> None:
        with self._lock:
            self._held.pop(timer, None)

    def wake_at(self, due_at: float) -> None:
        """A step of this worker set a timer due at `due_at`: look then, if sooner than planned."""
        with self._lock:
            if due_at < self._wake_at:
                self._wake_at = due_at
                self._wake.set()

    def wake(self) -> None:
        """Look for due timers now (a step admitted jobs whose submits are due)."""
        self.wake_at(self._clock())

    def _run(self) -> None:
        failures = 0
        next_renew = 0.0
        while not self._stop.is_set():
            try:
                now = self._clock()
                if now >= next_renew:
                    self._renew(now)
                    next_renew = now + self._settings.lease_s / 3
                next_due = self._dispatch(now)
                failures = 0
                if self._clock() - now > self._settings.lease_s / 3:  # Redis was slow or away: as an outage
                    self._connected_since = self._clock()
            except (redis.ConnectionError, redis.TimeoutError, OperationalError, OSError) as exc:
                self._connected_since = None
                failures += 1
                delay_s = backoff_delay_s(failures, _OUTAGE_BACKOFF, 0.0)
                log.warning("dispatcher: Redis does not answer (%s); again in %.1f s", type(exc).__name__, delay_s)
                self._stop.wait(delay_s)
                continue
            except Exception:
                log.exception("dispatcher: unexpected error; carrying on")
                self._stop.wait(self._settings.tick_s)
                continue
            self._sleep_until(min(next_due, next_renew))

    def _listen(self) -> None:
        """Wake for the nudges of processes that set timers due now and run no dispatcher (webhooks)."""
        failures = 0
        while not self._stop.is_set():
            try:
                self._timers.listen(self._stop, self.wake)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                failures += 1  # the dispatcher says Redis is away; its ticks go on meanwhile
                self._stop.wait(backoff_delay_s(failures, _OUTAGE_BACKOFF, 0.0))
            except Exception:
                log.exception("dispatcher: listening for nudges failed; carrying on")
                self._stop.wait(self._settings.tick_s)
            else:
                failures = 0

    def _renew(self, now: float) -> None:
        with self._lock:
            held = dict(self._held)
        self._timers.renew(held, now, self._settings.lease_s)
        if self._connected_since is None:
            self._connected_since = now

    def _dispatch(self, now: float) -> float:
        """Send the timers due now; when to look next."""
        since, lease_s = self._connected_since, self._settings.lease_s
        take_over_before = now - lease_s if since is not None and now - since >= lease_s else None
        with self._lock:
            self._wake_at = float("inf")
            self._wake.clear()
        while True:
            claimed = self._timers.claim_due(now, self._settings.claim_s, self._settings.batch_size, take_over_before)
            for timer in claimed:
                send_timer(self._app, timer)
            if len(claimed) < self._settings.batch_size:
                break
        next_due = self._timers.next_due()
        if next_due is None or next_due <= now:  # none, or only ones this dispatcher may not take yet
            return now + self._settings.tick_s
        return min(next_due, now + self._settings.tick_s)

    def _sleep_until(self, when: float) -> None:
        with self._lock:
            when = min(when, self._wake_at)
        timeout = when - self._clock()
        if timeout > 0:
            self._wake.wait(timeout)
