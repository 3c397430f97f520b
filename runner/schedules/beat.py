"""`wan-batch beat`: Celery beat on celery-redbeat, with every schedule kept in the ledger's Redis.

RedBeat holds a lock in Redis, so however many beat processes run, one
fires and the others wait to take over. Each schedule is a RedBeat entry
(`install`) that sends `wan_batch.fire_schedule` with the slot it is due for;
its `When` (a cron or a time, in a time zone) decides when. An entry
remembers when it last fired, so a scheduler that comes back after missing
slots fires once, not once per missed slot; the firing records how late it was.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import BaseSchedule, schedstate
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, ensure_conf, get_redis

from jobs.schedule import When

FIRE_TASK = "wan_batch.fire_schedule"
_TYPE = "wan_batch_when"
#: Missed slots counted at most (a minutely cron stopped for a week passes 10,080).
_MAX_MISSED = 100_000


class WhenSchedule(BaseSchedule):  # type: ignore[misc]
    """A Celery schedule that fires at the instants of a `When`."""

    def __init__(self, when: When, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.when = when

    def now(self) -> datetime:
        return datetime.now(UTC)

    def due_slot(self, last_run_at: datetime) -> datetime | None:
        """The first instant the schedule fires after `last_run_at`: the slot a firing now is for."""
        return self.when.next_after(_aware(last_run_at))

    def latest_slot(self, last_run_at: datetime, now: datetime) -> tuple[datetime | None, int]:
        """The latest slot after `last_run_at` that has come by `now`, and how many earlier ones it passed.

        A scheduler back after a long stop fires once, for the latest slot it missed.
        """
        latest, passed = None, 0
        slot = self.due_slot(last_run_at)
        while slot is not None and slot <= now and passed < _MAX_MISSED:
            latest, passed = slot, passed + 1
            slot = self.when.next_after(slot)
        return latest, max(passed - 1, 0)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta | None:
        slot = self.due_slot(last_run_at)
        return None if slot is None else slot - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        slot = self.due_slot(last_run_at)
        if slot is None:
            return schedstate(False, None)
        now = self.now()
        if slot > now:
            return schedstate(False, (slot - now).total_seconds())
        following = self.when.next_after(now)
        return schedstate(True, None if following is None else (following - now).total_seconds())

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.when,)

    def __repr__(self) -> str:
        return f"<WhenSchedule: {self.when.describe()}>"


class _Encoder(RedBeatJSONEncoder):  # type: ignore[misc]
    def default(self, o: Any) -> Any:
        if isinstance(o, WhenSchedule):
            return {"__type__": _TYPE, **o.when.to_dict()}
        return super().default(o)


class Entry(RedBeatSchedulerEntry):  # type: ignore[misc]
    """A RedBeat entry that can hold a `WhenSchedule`."""

    @staticmethod
    def decode_definition(definition: Any) -> dict[str, Any]:
        decoded: dict[str, Any] = RedBeatSchedulerEntry.decode_definition(definition)
        schedule = decoded.get("schedule")
        if isinstance(schedule, dict) and schedule.get("__type__") == _TYPE:
            decoded["schedule"] = WhenSchedule(When.from_dict({k: v for k, v in schedule.items() if k != "__type__"}))
        return decoded

    @property
    def due_at(self) -> datetime | None:
        """When it fires: its next slot, or now when that has passed (RedBeat estimates this from now)."""
        if not isinstance(self.schedule, WhenSchedule) or self.last_run_at is None:
            due: datetime | None = super().due_at
            return due
        slot = self.schedule.due_slot(self.last_run_at)
        return None if slot is None else max(slot, self.schedule.now())

    def save(self) -> Entry:
        """Store the definition, when it last ran, and when it is due (RedBeat's save, with our encoder)."""
        definition = {"name": self.name, "task": self.task, "args": self.args, "kwargs": self.kwargs,
                      "options": self.options, "schedule": self.schedule, "enabled": self.enabled}  # fmt: skip
        meta = {"last_run_at": self.last_run_at}
        with get_redis(self.app).pipeline() as pipe:
            pipe.hset(self.key, mapping={"definition": json.dumps(definition, cls=_Encoder),
                                         "meta": json.dumps(meta, cls=_Encoder)})  # fmt: skip
            if self.enabled:
                pipe.zadd(self.app.redbeat_conf.schedule_key, {self.key: self.score})
            else:  # a paused entry is not even looked at
                pipe.zrem(self.app.redbeat_conf.schedule_key, self.key)
            pipe.execute()
        return self


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat's scheduler; a schedule's firing carries the slot it is for."""

    Entry = Entry

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task == FIRE_TASK and isinstance(entry.schedule, WhenSchedule):
            now = entry.schedule.now()
            slot, missed = entry.schedule.latest_slot(entry.last_run_at, now) if entry.last_run_at else (None, 0)
            entry.kwargs = {**entry.kwargs, "slot": (slot or now).timestamp(), "sent_at": now.timestamp(),
                            "missed": missed}  # fmt: skip
        return super().apply_async(entry, producer, advance, **kwargs)


def entry_name(schedule: str) -> str:
    """The RedBeat entry of a schedule (apart from static entries such as the sweep)."""
    return f"schedule:{schedule}"


def install(app: Celery, name: str, when: When, queue: str, since: datetime) -> None:
    """Create or replace the entry of schedule `name`: it fires at the instants of `when` after `since`."""
    entry = Entry(name=entry_name(name), task=FIRE_TASK, schedule=WhenSchedule(when), args=[name], kwargs={},
                  options={"queue": queue}, enabled=True, app=app)  # fmt: skip
    entry.last_run_at = since
    entry.save()


def load(app: Celery, name: str) -> Entry | None:
    ensure_conf(app)
    try:
        entry: Entry = Entry.from_key(Entry.generate_key(app, entry_name(name)), app=app)
    except KeyError:
        return None
    return entry


def set_enabled(app: Celery, name: str, enabled: bool, since: datetime) -> None:
    """Pause an entry, or resume it: slots passed while it was paused are not fired."""
    entry = load(app, name)
    if entry is None:
        return
    entry.enabled = enabled
    if enabled:
        entry.last_run_at = since
    entry.save()


def uninstall(app: Celery, name: str) -> None:
    Entry(name=entry_name(name), app=app).delete()


def next_due(app: Celery, name: str) -> datetime | None:
    """When the entry fires next (in the past: overdue, no scheduler has run it); None when never again."""
    entry = load(app, name)
    if entry is None or not isinstance(entry.schedule, WhenSchedule) or entry.last_run_at is None:
        return None
    return entry.schedule.due_slot(entry.last_run_at)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
