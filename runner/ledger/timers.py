"""What must happen later, kept in Redis so that any live worker does it when the one that promised it dies.

A timer is a member of one sorted set scored by when it is due (as arq keeps
deferred jobs). Dispatchers in every worker claim the due ones and send them
as Celery messages; a worker that begins one holds it under a lease that it
renews while it runs. A timer whose message died with a worker, or whose
worker died while running it, comes due again when its claim or lease lapses,
so a message held by a dead worker is never the only record of what comes next.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, cast

import redis

from runner.ledger import scripts
from runner.ledger.keys import Keys

#: A dispatcher listening for nudges looks at its stop flag this often.
_LISTEN_S = 1.0

#: The claim of a timer that a dispatcher sent; a worker's is "r:<token>".
DISPATCHED = "d"
_SEPARATOR = "\x00"  # no batch id, job id, schedule or firing name can hold it

Begun = Literal["ok", "busy", "early", "gone"]


class TimerKind(str, Enum):
    #: The next step of a job (submit, poll or collect), by batch and job id.
    STEP = "step"
    #: Writing the report of an unattended batch that ended, by batch id.
    END = "end"
    #: POSTing a scheduled batch's summary to its notify URL, by schedule and firing id.
    NOTIFY = "notify"
    #: Starting a firing that waited for the one before it, by schedule and firing id.
    START = "start"
    #: POSTing an unattended batch's summary to its own notify URL (`submit --notify`), by batch id.
    BATCH_NOTIFY = "batch-notify"


@dataclass(frozen=True)
class Timer:
    kind: TimerKind
    #: The batch id (STEP, END, BATCH_NOTIFY) or the schedule's name (NOTIFY, START).
    owner: str
    #: The job id (STEP) or the firing id (NOTIFY, START); "" for END and BATCH_NOTIFY.
    item: str = ""

    @property
    def member(self) -> str:
        return _SEPARATOR.join((self.kind.value, self.owner, self.item))

    @classmethod
    def from_member(cls, member: str | bytes) -> Timer:
        text = member.decode() if isinstance(member, bytes) else member
        kind, owner, item = text.split(_SEPARATOR)
        return cls(TimerKind(kind), owner, item)

    @staticmethod
    def step_prefix(batch_id: str) -> str:
        """The start of the member of every job step of a batch (the job id follows)."""
        return _SEPARATOR.join((TimerKind.STEP.value, batch_id, ""))

    @classmethod
    def step(cls, batch_id: str, job_id: str) -> Timer:
        return cls(TimerKind.STEP, batch_id, job_id)

    @classmethod
    def end(cls, batch_id: str) -> Timer:
        return cls(TimerKind.END, batch_id)

    @classmethod
    def batch_notify(cls, batch_id: str) -> Timer:
        return cls(TimerKind.BATCH_NOTIFY, batch_id)


def worker_mark() -> str:
    """A fresh claim mark for one run of a timer by a worker."""
    return f"r:{secrets.token_hex(8)}"


class Timers:
    """The timers of one Redis; every method is one round trip."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self._claim_due = client.register_script(scripts.CLAIM_DUE)
        self._begin = client.register_script(scripts.BEGIN)
        self._renew = client.register_script(scripts.RENEW)
        self._finish = client.register_script(scripts.FINISH)
        self._schedule = client.register_script(scripts.SCHEDULE)

    @property
    def _keys(self) -> list[str]:
        return [self.keys.timers, self.keys.timer_claims]

    def claim_due(self, now: float, claim_s: float, limit: int, take_over_before: float | None = None) -> list[Timer]:
        """Up to `limit` timers due by `now`, claimed for `claim_s` for a dispatcher to send.

        A timer a worker ran is taken over only if its lease lapsed before
        `take_over_before` (None: not at all); see `scripts.CLAIM_DUE`.
        """
        grace = "" if take_over_before is None else take_over_before
        args: list[str | float] = [now, now + claim_s, limit, DISPATCHED, grace]
        members = self._claim_due(keys=self._keys, args=args)
        return [Timer.from_member(m) for m in members]

    def begin(self, timer: Timer, mark: str, now: float, lease_s: float) -> Begun:
        """A worker takes the timer it got a message for, under a lease of `lease_s` (see `scripts.BEGIN`)."""
        answer = self._begin(keys=self._keys, args=[timer.member, mark, now, now + lease_s, DISPATCHED])
        return cast(Begun, answer.decode() if isinstance(answer, bytes) else answer)

    def renew(self, held: dict[Timer, str], now: float, lease_s: float) -> int:
        """Extend the leases of the timers this worker holds (timer -> its mark); how many it still held."""
        if not held:
            return 0
        args: list[str | float] = [now + lease_s]
        for timer, mark in held.items():
            args += [timer.member, mark]
        return int(self._renew(keys=self._keys, args=args))

    def finish(self, timer: Timer, mark: str, due_at: float | None, count_try: bool = True) -> bool:
        """Let go of a timer this worker holds: due again at `due_at` (one more try, if counted), or done (None)."""
        keys = [*self._keys, self.keys.timer_tries]
        args = [timer.member, mark, "" if due_at is None else due_at, "1" if count_try else ""]
        return bool(self._finish(keys=keys, args=args))

    def schedule(self, timers: list[Timer], due_at: float) -> int:
        """Make `timers` due at `due_at` (also "now"), unless a worker runs one under a live lease."""
        if not timers:
            return 0
        return int(self._schedule(keys=self._keys, args=[due_at, *(t.member for t in timers)]))

    def nudge(self) -> None:
        """Tell every dispatcher to look for due timers now (from a process that runs none)."""
        self.redis.publish(self.keys.timer_wake, "1")

    def listen(self, stop: threading.Event, on_nudge: Callable[[], None]) -> None:
        """Call `on_nudge` for each `nudge` until `stop` is set; raises redis' errors when Redis goes away."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.keys.timer_wake)
            while not stop.is_set():
                if pubsub.get_message(timeout=_LISTEN_S) is not None:
                    on_nudge()
        finally:
            pubsub.close()

    def due_at(self, timer: Timer) -> float | None:
        score = self.redis.zscore(self.keys.timers, timer.member)
        return None if score is None else float(score)

    def tries(self, timer: Timer) -> int:
        """How many times the timer came due again after a worker ran it."""
        return int(self.redis.hget(self.keys.timer_tries, timer.member) or 0)

    def next_due(self) -> float | None:
        """When the earliest timer is due (None: there is none)."""
        first = self.redis.zrange(self.keys.timers, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def forget(self, timers: list[Timer]) -> None:
        """Drop timers outright (their batch or schedule is gone)."""
        if not timers:
            return
        members = [t.member for t in timers]
        with self.redis.pipeline() as pipe:
            pipe.zrem(self.keys.timers, *members)
            pipe.hdel(self.keys.timer_claims, *members)
            pipe.hdel(self.keys.timer_tries, *members)
            pipe.execute()
