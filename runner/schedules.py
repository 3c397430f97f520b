"""Schedules: a manifest that `wan-batch beat` fires on a cron or at a time, each firing a normal batch.

A schedule's settings and the manifest's content as it was when scheduled
live in Redis beside the batches (`ScheduleStore`); celery-redbeat keeps when
each fires next (`runner.beat`). A firing runs on a worker (`fire`): it
claims its slot, so two schedulers never make two batches of one slot;
applies the overlap policy; and enqueues the batch in OUT/<schedule>/<date-time>.
When the batch's last job ends (`batch_ended`), its summary is stored with the
firing, a firing that waited for it starts, and the summary can be POSTed to
the schedule's notify URL (`notify`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import httpx
import redis
from pydantic import BaseModel, Field
from redis.client import Pipeline

from jobs.errors import ManifestError, WanBatchError
from jobs.schedule import When, slot_label
from jobs.status import JobStatus
from runner.intake import RunRequest, Unattended, UsageError, enqueue_batch, load_batch, provider_for, write_report
from runner.keys import Keys
from runner.pipeline import Context, FollowUp

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A firing this long after its slot is shown as late.
LATE_AFTER_S = 60.0
#: A firing still being set up after this long was cut off (its worker died).
STARTING_STALE_S = 600.0
#: How long a slot stays claimed (far longer than any two schedulers could disagree).
SLOT_CLAIM_S = 90 * 86400
#: Firings kept per schedule, newest first.
KEEP_FIRINGS = 200
NOTIFY_TRIES = 5

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
    endpoint: str | None = None
    skip_invalid: bool = False
    max_in_flight: int = Field(default=10, gt=0)
    max_attempts: int = Field(default=3, gt=0)
    max_image_mb: float = Field(default=10.0, gt=0)
    created_at: float
    paused: bool = False

    @property
    def schedule(self) -> When:
        return When.from_dict(self.when)

    def request(self, batch_id: str) -> RunRequest:
        """The run request of one firing's batch."""
        return RunRequest(
            manifest=Path(self.manifest), out=Path(self.out) / self.name, batch_id=batch_id,
            endpoint=self.endpoint, skip_invalid=self.skip_invalid, base_url=self.base_url,
            max_in_flight=self.max_in_flight, max_attempts=self.max_attempts, max_image_mb=self.max_image_mb,
            priority=self.priority,
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


def shown_url(url: str) -> str:
    """A notify URL as it may be shown: scheme and host only (its path or query may hold a token)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}/…"


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

    def has_firing(self, name: str, firing_id: str) -> bool:
        return bool(self.redis.hexists(self.keys.firings(name), firing_id))

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


@dataclass
class Fired:
    """What a firing step leaves to send: the batch's first submits, a firing that waited, a notification."""

    schedule: str
    firing: Firing | None = None
    #: Follow-ups of the batch it enqueued, by batch id.
    follow: dict[str, list[FollowUp]] = field(default_factory=dict)
    #: Ids of firings that waited and start now.
    start: list[str] = field(default_factory=list)
    #: POST `firing` to the schedule's notify URL.
    notify: bool = False


def fire(
    ctx: Context, name: str, slot: float, trigger: Trigger, token: str, sent_at: float | None = None, missed: int = 0
) -> Fired:
    """Fire schedule `name` for `slot`: claim the slot, apply the overlap policy, enqueue the batch.

    `token` identifies the message (its redelivery may go on; another
    scheduler's copy of the same slot may not). `sent_at` is when the
    scheduler sent it, `missed` how many earlier slots it missed. A schedule
    that is gone, or paused (for scheduled firings), fires nothing.
    """
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    spec = store.spec(name)
    if spec is None:
        log.warning("schedule %s is gone; its firing for %s is dropped", name, _when(slot))
        return Fired(name)
    if trigger == "schedule" and spec.paused:
        log.info("schedule %s is paused; its firing for %s is dropped", name, _when(slot))
        return Fired(name)
    if not store.claim_slot(name, slot, token):
        log.info("schedule %s already fired for %s", name, _when(slot))
        return Fired(name)
    firing = _firing_for(ctx, store, spec, slot, trigger, sent_at, missed)
    if firing.outcome != "starting":  # a redelivered message whose firing got further
        return Fired(name, firing)
    store.save_firing(name, firing)
    decision, holder, promoted = store.begin(name, firing.id, spec.overlap, lambda f: _running(ctx, store, name, f))
    start = [promoted] if promoted else []
    if decision == "go":
        fired = start_firing(ctx, store, spec, firing)
        fired.start += start
        return fired
    if decision == "wait":
        message = f"waits for {holder} to end (overlap: queue)"
        firing = firing.model_copy(update={"outcome": "waiting", "message": message})
    else:
        policy = "one firing already waits" if spec.overlap == "queue" else "overlap: skip"
        message = f"skipped: {holder} was still running ({policy})"
        firing = firing.model_copy(update={"outcome": "skipped", "message": message})
    store.save_firing(name, firing)
    log.info("schedule %s: %s", name, message)
    return Fired(name, firing, start=start)


def start_firing(ctx: Context, store: ScheduleStore, spec: ScheduleSpec, firing: Firing) -> Fired:
    """Enqueue the firing's batch; a manifest that no longer validates ends the firing as an error."""
    request = spec.request(firing.id)
    folder = Path(spec.out) / spec.name / firing.id.removeprefix(f"{spec.name}-")
    follow: dict[str, list[FollowUp]] = {}
    try:
        batch = load_batch(request, None if spec.follow_file else store.manifest(spec.name))
        info, _ = enqueue_batch(ctx, request, batch, provider_for(request),
                                lambda batch_id, f: follow.setdefault(batch_id, []).extend(f),
                                Unattended(folder=folder, schedule=spec.name))  # fmt: skip
    except ManifestError as exc:
        shown = "; ".join(str(d) for d in exc.diagnostics[:5])
        more = f" (and {len(exc.diagnostics) - 5} more)" if len(exc.diagnostics) > 5 else ""
        return _failed(store, spec, firing, f"the manifest does not validate: {shown}{more}")
    except (WanBatchError, OSError) as exc:
        return _failed(store, spec, firing, f"could not start: {exc}")
    except Exception as exc:  # the schedule must not stay held by a firing that never started
        log.exception("schedule %s: firing %s could not start", spec.name, firing.id)
        return _failed(store, spec, firing, f"could not start: {type(exc).__name__}: {exc}")
    running = firing.model_copy(update={"outcome": "running", "folder": info.folder})
    store.save_firing(spec.name, running)
    log.info("schedule %s fired batch %s: %d job(s) in %s", spec.name, info.id, info.jobs, info.folder)
    return Fired(spec.name, running, follow=follow)


def batch_ended(ctx: Context, batch_id: str) -> Fired:
    """Write the ended batch's report; for a scheduled one, store its summary and start what waited."""
    info = ctx.ledger.batch(batch_id)
    if info is None or not info.report_when_done:
        return Fired("")
    result = write_report(ctx.ledger, info, ctx.clock() - info.created_at, {})
    if info.schedule is None:
        ctx.ledger.mark_reported(batch_id)
        return Fired("")
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    firing = store.firing(info.schedule, batch_id)
    spec = store.spec(info.schedule)
    if firing is None or spec is None:  # the schedule was removed meanwhile
        ctx.ledger.mark_reported(batch_id)
        return Fired(info.schedule)
    summary = {**result.summary, "report_csv": str(result.report_csv), "report_json": str(result.report_json)}
    ended = firing.model_copy(update={"outcome": "done", "summary": summary, "ended_at": ctx.clock()})
    store.save_firing(spec.name, ended)
    promoted = store.end(spec.name, batch_id)
    ctx.ledger.mark_reported(batch_id)
    return Fired(spec.name, ended, start=[promoted] if promoted else [], notify=spec.notify is not None)


def start_waiting(ctx: Context, name: str, firing_id: str) -> Fired:
    """Start a firing that waited for the one before it."""
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    spec, firing = store.spec(name), store.firing(name, firing_id)
    redelivered = firing is not None and firing.outcome == "starting" and firing.trigger == "waited"
    if spec is None or firing is None or not (firing.outcome == "waiting" or redelivered):
        return Fired(name)
    if spec.paused:
        return _skipped_waiting(store, spec, firing)
    started = firing.model_copy(update={"outcome": "starting", "trigger": "waited", "message": None,
                                        "started_at": firing.started_at if redelivered else ctx.clock()})  # fmt: skip
    store.save_firing(name, started)
    return start_firing(ctx, store, spec, started)


def _skipped_waiting(store: ScheduleStore, spec: ScheduleSpec, firing: Firing) -> Fired:
    """A firing that waited while its schedule was paused does not start; the schedule is free again."""
    skipped = firing.model_copy(update={"outcome": "skipped", "message": "skipped: the schedule was paused"})
    store.save_firing(spec.name, skipped)
    promoted = store.end(spec.name, firing.id)
    return Fired(spec.name, skipped, start=[promoted] if promoted else [])


def notify(ctx: Context, name: str, firing_id: str, tries: int) -> float | None:
    """POST the firing's summary to the schedule's notify URL; the delay before trying again, or None."""
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    spec, firing = store.spec(name), store.firing(name, firing_id)
    if spec is None or firing is None or spec.notify is None:
        return None
    payload = {"schedule": name, **firing.model_dump(exclude={"notified"}), "late_s": round(firing.late_s, 1)}
    logging.getLogger("httpx").addFilter(_HIDE_NOTIFY_URL)  # once: a filter already there is not added again
    hidden = _hidden_url.set(str(httpx.URL(spec.notify)))
    try:
        response = ctx.http.post(spec.notify, json=payload, timeout=10.0, follow_redirects=False)
        answer = f"HTTP {response.status_code}"
        delivered = response.is_success
    except httpx.HTTPError as exc:
        answer, delivered = f"{type(exc).__name__} from {shown_url(spec.notify)}", False
    finally:
        _hidden_url.reset(hidden)
    if not delivered and tries + 1 < NOTIFY_TRIES:
        return float(min(300, 5 * 3**tries))
    outcome = "sent" if delivered else f"failed after {tries + 1} tries"
    store.save_firing(name, firing.model_copy(update={"notified": f"{outcome} ({answer})"}))
    if not delivered:
        log.warning("schedule %s: notifying %s failed: %s", name, shown_url(spec.notify), answer)
    return None


#: The notify URL being called in this thread: httpx's request log shows it only as its host.
_hidden_url: ContextVar[str | None] = ContextVar("hidden_url", default=None)


class _HideNotifyUrl(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        url = _hidden_url.get()
        if url is not None and isinstance(record.args, tuple):
            record.args = tuple(shown_url(url) if str(arg) == url else arg for arg in record.args)
        return True


_HIDE_NOTIFY_URL = _HideNotifyUrl()


def _firing_for(
    ctx: Context, store: ScheduleStore, spec: ScheduleSpec, slot: float, trigger: Trigger, sent_at: float | None,
    missed: int,
) -> Firing:  # fmt: skip
    """The firing of `slot`: the one already recorded (a redelivered message), or a new one."""
    base = f"{spec.name}-{slot_label(_utc(slot), spec.schedule.tz)}"
    if trigger == "run-now":
        base += "-now"
    candidate, n = base, 1
    while True:
        existing = store.firing(spec.name, candidate)
        if existing is not None and existing.slot == slot and existing.trigger == trigger:
            return existing
        if existing is None and ctx.ledger.batch(candidate) is None:
            now = ctx.clock()
            return Firing(id=candidate, slot=slot, fired_at=now, trigger=trigger, outcome="starting", sent_at=sent_at,
                          missed=missed, started_at=now)  # fmt: skip
        n += 1
        candidate = f"{base}-{n}"


def _running(ctx: Context, store: ScheduleStore, name: str, firing_id: str) -> bool:
    """Whether the firing's batch is still going (or being set up)."""
    firing = store.firing(name, firing_id)
    if firing is None:
        return False
    if firing.outcome == "starting":
        return ctx.clock() - (firing.started_at or firing.fired_at) < STARTING_STALE_S
    if firing.outcome != "running":
        return False
    counts = ctx.ledger.counts(firing_id)
    return any(n for status, n in counts.items() if status not in _FINAL)


_FINAL = frozenset(s for s in JobStatus if s.is_final)


def _failed(store: ScheduleStore, spec: ScheduleSpec, firing: Firing, message: str) -> Fired:
    log.warning("schedule %s: firing %s %s", spec.name, firing.id, message)
    failed = firing.model_copy(update={"outcome": "error", "message": message})
    store.save_firing(spec.name, failed)
    promoted = store.end(spec.name, firing.id)
    return Fired(spec.name, failed, start=[promoted] if promoted else [], notify=spec.notify is not None)


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _when(epoch_s: float) -> str:
    return _utc(epoch_s).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
