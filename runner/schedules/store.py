"""What a schedule is and what became of its firings, as kept in Redis beside the batches.

`ScheduleSpec` is what a schedule fires (with the manifest's content as it was
when it was added); `Firing` is one firing and its outcome; `ScheduleStore`
reads and writes both, and holds each schedule's overlap state (the firing
whose batch runs, the one that waits) with atomic transitions.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import redis
from pydantic import BaseModel, Field
from redis.client import Pipeline

from jobs.errors import UsageError
from jobs.schedule import When
from runner.batches.request import WINDOW_CAP, RunRequest
from runner.batches.uploads import DEFAULT_UPLOAD_TTL_S
from runner.ledger.keys import Keys

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A firing this long after its slot is shown as late.
LATE_AFTER_S = 60.0
#: A firing still being set up after this long was cut off (its worker died).
STARTING_STALE_S = 600.0
#: How long a slot stays claimed (far longer than any two schedulers could disagree).
SLOT_CLAIM_S = 90 * 86400
#: Firings kept per schedule, newest first.
KEEP_FIRINGS = 200

Trigger = Literal["schedule", "run-now", "waited"]
Decision = Literal["go", "wait", "skip"]
#: A decision, the firing it is held behind, a firing that waited and starts now.
Begun = tuple[Decision, str | None, str | None]
R = TypeVar("R")
Outcome = Literal["starting", "running", "done", "skipped", "waiting", "error"]


class ScheduleSpec(BaseModel):
    """What a schedule fires, as stored with it."""

    name: str = Field(pattern=NAME_PATTERN)
    #: `When.to_dict()`: a cron or a one-off time, in a time zone.
    when: dict[str, str]
    #: The manifest's absolute path; local images in it are relative to its folder.
    manifest: str
    #: Read the manifest at fire time instead of the content stored when it was scheduled.
    follow_file: bool = False
    #: Output root: a firing's batch goes to OUT/<name>/<date-time>.
    out: str
    priority: Literal["normal", "low"] = "low"
    overlap: Literal["skip", "queue"] = "skip"
    notify: str | None = None
    base_url: str | None = None
    #: fal's Platform API for its batches' lost submits (None: the default of the credential).
    api_url: str | None = None
    start_timeout_s: float | None = None
    endpoint: str | None = None
    allowed_endpoints: tuple[str, ...] = ()
    skip_invalid: bool = False
    max_in_flight: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    window_cap: int = Field(default=WINDOW_CAP, gt=0)
    max_attempts: int = Field(default=3, gt=0)
    max_image_mb: float = Field(default=10.0, gt=0)
    #: How its batches send local images (`--images`); None: by the credential.
    images: Literal["upload", "inline"] | None = None
    storage_url: str | None = None
    upload_ttl_s: float = Field(default=DEFAULT_UPLOAD_TTL_S, ge=3600)
    #: Where fal POSTs as each request ends (`--webhook-url`); None: polled.
    webhook_url: str | None = None
    #: `--price` values over fal's prices (`runner.batches.costs`), and each firing's cost cap in USD.
    prices: tuple[str, ...] = ()
    max_cost: Decimal | None = Field(default=None, ge=0)
    created_at: float
    paused: bool = False

    @property
    def schedule(self) -> When:
        return When.from_dict(self.when)

    def request(self, batch_id: str) -> RunRequest:
        """The run request of one firing's batch."""
        return RunRequest(
            manifest=Path(self.manifest), out=Path(self.out) / self.name, batch_id=batch_id,
            endpoint=self.endpoint, allowed_endpoints=self.allowed_endpoints, skip_invalid=self.skip_invalid,
            base_url=self.base_url,
            max_in_flight=self.max_in_flight, window_cap=self.window_cap, max_attempts=self.max_attempts,
            max_image_mb=self.max_image_mb,
            priority=self.priority, api_url=self.api_url, start_timeout_s=self.start_timeout_s,
            images=self.images, storage_url=self.storage_url, upload_ttl_s=self.upload_ttl_s,
            webhook_url=self.webhook_url, prices=self.prices, max_cost=self.max_cost,
        )  # fmt: skip


class Firing(BaseModel):
    """One firing of a schedule and what became of it."""

    #: Also the id of the batch it makes.
    id: str
    #: When it was due (epoch seconds): the slot of the schedule, or when run-now was asked.
    slot: float
    #: When a worker took it.
    fired_at: float
    trigger: Trigger
    outcome: Outcome
    #: When the scheduler sent it (scheduled firings).
    sent_at: float | None = None
    #: Earlier slots missed while no scheduler ran (only the latest one fires).
    missed: int = 0
    #: When its batch began to be set up (after waiting, if it waited).
    started_at: float | None = None
    folder: str | None = None
    #: Why it was skipped, waits, or failed to start.
    message: str | None = None
    #: When its batch ended: counts, failures by error type, report paths.
    summary: dict[str, Any] | None = None
    ended_at: float | None = None
    #: What the notify URL answered.
    notified: str | None = None

    @property
    def late_s(self) -> float:
        """How long after its slot the scheduler sent it (0 for run-now and firings that waited)."""
        if self.trigger != "schedule":
            return 0.0
        return (self.sent_at if self.sent_at is not None else self.fired_at) - self.slot

    @property
    def batch_id(self) -> str | None:
        return self.id if self.outcome in ("starting", "running", "done") else None


class ScheduleStore:
    """Schedules, their stored manifests and their firings, in the ledger's Redis."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()

    def add(self, spec: ScheduleSpec, manifest: bytes, replace: bool = False) -> None:
        """Store a schedule with the manifest's content; raises UsageError if the name is taken."""
        key = self.keys.schedule(spec.name)
        if not replace and self.redis.exists(key):
            raise UsageError(f"there is already a schedule {spec.name!r}; remove it first, or pass --replace")
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"spec": spec.model_dump_json(), "manifest": manifest})
            pipe.sadd(self.keys.schedules, spec.name)
            pipe.execute()

    def save(self, spec: ScheduleSpec) -> None:
        self.redis.hset(self.keys.schedule(spec.name), "spec", spec.model_dump_json())

    def spec(self, name: str) -> ScheduleSpec | None:
        raw = self.redis.hget(self.keys.schedule(name), "spec")
        return ScheduleSpec.model_validate_json(raw) if raw else None

    def get(self, name: str) -> ScheduleSpec:
        """The schedule `name`; raises UsageError if there is none."""
        spec = self.spec(name)
        if spec is None:
            raise UsageError(f"no schedule {name!r}; `wan-batch schedule list` lists them")
        return spec

    def manifest(self, name: str) -> bytes | None:
        """The manifest's content as it was when the schedule was added."""
        data = self.redis.hget(self.keys.schedule(name), "manifest")
        return data.encode() if isinstance(data, str) else data

    def names(self) -> list[str]:
        return sorted(_text(n) for n in self.redis.smembers(self.keys.schedules))

    def remove(self, name: str) -> None:
        """Forget the schedule and its firings (their batches stay)."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.schedule(name), self.keys.firings(name), self.keys.firing_order(name))
            pipe.srem(self.keys.schedules, name)
            pipe.execute()

    # --- firings -------------------------------------------------------------

    def claim_slot(self, name: str, slot: float, token: str) -> bool:
        """True for the first claimant of the slot, and again for the same `token` (a redelivered message)."""
        key = self.keys.slot(name, slot)
        if self.redis.set(key, token, nx=True, ex=SLOT_CLAIM_S):
            return True
        holder = self.redis.get(key)
        return holder is not None and _text(holder) == token

    def save_firing(self, name: str, firing: Firing) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.firings(name), firing.id, firing.model_dump_json())
            pipe.zadd(self.keys.firing_order(name), {firing.id: firing.fired_at}, nx=True)
            pipe.execute()
        self._trim(name)

    def firing(self, name: str, firing_id: str) -> Firing | None:
        raw = self.redis.hget(self.keys.firings(name), firing_id)
        return Firing.model_validate_json(raw) if raw else None

    def firings(self, name: str, limit: int = 20) -> list[Firing]:
        """The latest firings, newest first."""
        ids = [_text(i) for i in cast(list[bytes], self.redis.zrevrange(self.keys.firing_order(name), 0, limit - 1))]
        raws = self.redis.hmget(self.keys.firings(name), ids) if ids else []
        return [Firing.model_validate_json(raw) for raw in raws if raw]

    def _trim(self, name: str) -> None:
        old = self.redis.zrange(self.keys.firing_order(name), 0, -KEEP_FIRINGS - 1)
        if old:
            with self.redis.pipeline() as pipe:
                pipe.hdel(self.keys.firings(name), *old)
                pipe.zrem(self.keys.firing_order(name), *old)
                pipe.execute()

    # --- overlap ---------------------------------------------------------------

    def begin(
        self, name: str, firing_id: str, overlap: Literal["skip", "queue"], running: Callable[[str], bool]
    ) -> Begun:
        """Whether a firing starts now, waits for the running one, or is skipped; atomically.

        Returns the decision, the firing it is held behind, and a firing that
        waited and must start now (its predecessor ended without a word).
        """
        key = self.keys.schedule(name)

        def attempt(
            pipe: Pipeline, current: str | None, waiting: str | None
        ) -> tuple[Decision, str | None, str | None]:
            if current == firing_id:  # a redelivered message of the firing that holds the schedule
                return "go", None, None
            if waiting == firing_id:  # ... or of the one that waits
                return "wait", current, None
            promoted = None
            if current is None or not running(current):
                current, promoted, waiting = waiting, waiting, None
            if current is None:
                pipe.hset(key, "current", firing_id)
                pipe.hdel(key, "waiting")
                return "go", None, promoted
            pipe.hset(key, "current", current)
            if overlap == "queue" and waiting is None:
                pipe.hset(key, "waiting", firing_id)
                return "wait", current, promoted
            if waiting is None:
                pipe.hdel(key, "waiting")
            return "skip", current, promoted

        return self._transaction(key, attempt)

    def end(self, name: str, firing_id: str) -> str | None:
        """The firing's batch ended (or never started): the firing that waited for it, now current."""
        key = self.keys.schedule(name)

        def attempt(pipe: Pipeline, current: str | None, waiting: str | None) -> str | None:
            if current != firing_id:
                return None
            if waiting is None:
                pipe.hdel(key, "current")
                return None
            pipe.hset(key, "current", waiting)
            pipe.hdel(key, "waiting")
            return waiting

        return self._transaction(key, attempt)

    def _transaction(self, key: str, attempt: Callable[[Pipeline, str | None, str | None], R]) -> R:
        """Run `attempt` on the schedule's `current` and `waiting` firings; its writes land only if neither moved."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    current, waiting = (_text(v) if v else None for v in pipe.hmget(key, "current", "waiting"))
                    pipe.multi()
                    result = attempt(pipe, current, waiting)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
