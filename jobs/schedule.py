"""When a scheduled batch fires: a cron expression in a time zone, or once at an instant.

Cron is classic (Vixie) cron, matched against wall-clock time in the schedule's
zone. Across a DST change, a wall time that does not exist (02:30 in a
02:00->03:00 gap) fires once, at the instant `datetime(..., tzinfo=zone)` makes
of it with fold=0 (03:30 local); a wall time that happens twice fires once, at
its first occurrence. Instants leave this module as aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobs.errors import ScheduleError

#: How far past `after` a cron is searched: 8 years holds a Feb 29 even across 2100.
_HORIZON_DAYS = 8 * 366
#: Longest DST gap looked back over: a wall time this far before `after` may still fire after it.
_MAX_GAP = timedelta(hours=3)
_LAST_DAY = date(9999, 12, 30)

_NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: Longest length of each month, Feb 29 included.
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class _Field:
    """One of the five cron fields: the values it accepts and how `*` spans them."""

    name: str
    low: int
    high: int
    #: Where `*` and `a/n` end; day-of-week accepts 7 (Sunday again) but `*` stops at 6.
    star_high: int
    names: Mapping[str, int] = field(default_factory=dict)


_FIELDS = (
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day-of-month", 1, 31, 31),
    _Field("month", 1, 12, 12, {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}),
    _Field("day-of-week", 0, 7, 6, {name: i for i, name in enumerate(_DAY_NAMES)}),
)


class _FieldProblem(Exception):
    """What is wrong with one field; `Cron.parse` names the expression and field."""


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression, parsed into the values each field allows."""

    #: As the user wrote it, whitespace-normalised.
    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    #: 0 = Sunday.
    days_of_week: frozenset[int]
    #: The day-of-month field does not start with `*`.
    dom_restricted: bool
    #: The day-of-week field does not start with `*`.
    dow_restricted: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        """Parse `minute hour day-of-month month day-of-week` or a nickname such as @daily.

        Raises ScheduleError (message starting `--cron: `) for a malformed
        expression or one that matches no date at all.
        """
        text = " ".join(expr.split())
        fields_text = text
        if text.startswith("@"):
            if text.lower() not in _NICKNAMES:
                raise ScheduleError(f'--cron: "{text}": unknown nickname; use one of {", ".join(_NICKNAMES)}')
            fields_text = _NICKNAMES[text.lower()]
        parts = fields_text.split()
        if len(parts) != len(_FIELDS):
            names = " ".join(f.name for f in _FIELDS)
            raise ScheduleError(f'--cron: "{text}": needs 5 fields ({names}), got {len(parts)}')
        values = []
        for part, spec in zip(parts, _FIELDS, strict=True):
            try:
                values.append(_parse_field(part, spec))
            except _FieldProblem as problem:
                raise ScheduleError(f'--cron: "{text}": {spec.name}: {problem}') from None
        minutes, hours, days_of_month, months, days_of_week = values
        # As Vixie cron: a day field starting with "*" (also "*/2") does not restrict the other.
        dom_restricted, dow_restricted = not parts[2].startswith("*"), not parts[4].startswith("*")
        cron = cls(text, minutes, hours, days_of_month, months, days_of_week, dom_restricted, dow_restricted)
        if not cron._fires_some_day():
            raise ScheduleError(f'--cron: "{text}": never fires')
        return cron

    def matches_date(self, day: date) -> bool:
        """Whether the expression fires on `day` (at its hours and minutes).

        As in Vixie cron, when both day-of-month and day-of-week are restricted
        a day matches when either does.
        """
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.days_of_month
        dow_ok = day.isoweekday() % 7 in self.days_of_week
        if self.dom_restricted and self.dow_restricted:
            return dom_ok or dow_ok
        return dom_ok and dow_ok

    def _fires_some_day(self) -> bool:
        if self.dow_restricted or not self.dom_restricted:
            # Every month has every weekday, and every month has days 1-28.
            return True
        return any(day <= _MONTH_DAYS[month - 1] for month in self.months for day in self.days_of_month)


@dataclass(frozen=True)
class When:
    """When a schedule fires: a cron expression in a time zone, or once at an instant."""

    #: IANA name, e.g. "Europe/Berlin" or "UTC".
    tz: str
    cron: Cron | None = None
    #: Aware, UTC.
    at: datetime | None = None

    def __post_init__(self) -> None:
        _zone(self.tz)
        if self.cron is not None and self.at is not None:
            raise ScheduleError("give --cron or --at, not both")
        if self.cron is None and self.at is None:
            raise ScheduleError("give --cron or --at")
        if self.at is not None and (self.at.tzinfo is None or self.at.utcoffset() != timedelta(0)):
            raise ValueError(f"When.at must be an aware UTC datetime, got {self.at!r}")

    @classmethod
    def from_options(cls, cron: str | None, at: str | None, tz: str, now: datetime) -> When:
        """The schedule the command-line options describe; a naive `at` is wall time in `tz`.

        Raises ScheduleError naming the option at fault, including for an `at`
        not after `now`.
        """
        if cron is not None and at is not None:
            raise ScheduleError("give --cron or --at, not both")
        zone = _zone(tz)
        if cron is not None:
            return cls(tz=tz, cron=Cron.parse(cron))
        if at is None:
            raise ScheduleError("give --cron or --at")
        instant = _parse_at(at, zone)
        if instant <= now:
            raise ScheduleError(f"--at: {_wall_text(instant, zone)} ({tz}) is in the past")
        return cls(tz=tz, at=instant)

    def next_after(self, after: datetime) -> datetime | None:
        """The earliest firing strictly after the aware `after`, in UTC; None when there is none.

        A cron is searched 8 years ahead; a one-shot has none once `after` reaches it.
        """
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"next_after needs an aware datetime, got {after!r}")
        if self.cron is None:
            return self.at if self.at is not None and self.at > after else None
        return _next_cron_fire(self.cron, _zone(self.tz), after)

    def next_times(self, after: datetime, count: int) -> list[datetime]:
        """Up to `count` successive firings after `after`, in UTC; fewer when the schedule runs out."""
        times: list[datetime] = []
        while len(times) < count:
            fire = self.next_after(times[-1] if times else after)
            if fire is None:
                break
            times.append(fire)
        return times

    def describe(self) -> str:
        """One line for a person: `cron "0 2 * * *" (Europe/Berlin)`, `once at 2026-12-01 02:00 (UTC)`."""
        if self.cron is not None:
            return f'cron "{self.cron.expr}" ({self.tz})'
        assert self.at is not None
        return f"once at {_wall_text(self.at, _zone(self.tz))} ({self.tz})"

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready form that `from_dict` reads back to an equal When."""
        if self.cron is not None:
            return {"tz": self.tz, "cron": self.cron.expr}
        assert self.at is not None
        return {"tz": self.tz, "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> When:
        """Read back `to_dict`'s output; raises ScheduleError for anything else. Past `at`s are kept."""
        tz, cron, at = data.get("tz"), data.get("cron"), data.get("at")
        if not isinstance(tz, str) or not isinstance(cron, str | None) or not isinstance(at, str | None):
            raise ScheduleError(f"schedule {dict(data)!r}: needs a string tz and a string cron or at")
        if cron is not None and at is not None:
            raise ScheduleError("give --cron or --at, not both")
        if cron is not None:
            return cls(tz=tz, cron=Cron.parse(cron))
        if at is None:
            raise ScheduleError("give --cron or --at")
        return cls(tz=tz, at=_parse_at(at, _zone(tz)))


def slot_label(instant: datetime, tz: str) -> str:
    """The folder name of a firing: its wall time in `tz` as `2026-12-01T0200` (no colons, for any file system)."""
    if instant.tzinfo is None:
        raise ValueError(f"slot_label needs an aware datetime, got {instant!r}")
    wall = instant.astimezone(_zone(tz)).replace(tzinfo=None)
    return wall.isoformat(timespec="minutes").replace(":", "")


def _parse_field(text: str, spec: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, spec))
    if spec.high > spec.star_high:
        # Day-of-week 7 is Sunday again.
        values = {value % (spec.star_high + 1) for value in values}
    return frozenset(values)


def _parse_item(item: str, spec: _Field) -> range:
    """One comma-separated item: `*`, `a`, `a-b`, each optionally `/step`."""
    if not item:
        raise _FieldProblem("empty item in a comma list")
    base, slash, step_text = item.partition("/")
    step = _parse_step(step_text, item) if slash else 1
    if base == "*":
        return range(spec.low, spec.star_high + 1, step)
    first, dash, last = base.partition("-")
    low = _parse_value(first, spec, item)
    if dash:
        high = _parse_value(last, spec, item)
        if high < low:
            raise _FieldProblem(f"range {base} is reversed (the smaller value comes first)")
    else:
        high = max(low, spec.star_high) if slash else low
    return range(low, high + 1, step)


def _parse_step(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _FieldProblem(f'step "{text}" in "{item}" is not a number')
    if len(text) > 6:
        raise _FieldProblem(f'step {text} in "{item}" is too large')
    step = int(text)
    if step == 0:
        raise _FieldProblem(f'step 0 in "{item}" must be at least 1')
    return step


def _parse_value(text: str, spec: _Field, item: str) -> int:
    if text.lower() in spec.names:
        return spec.names[text.lower()]
    if not (text.isascii() and text.isdigit()):
        if not text:
            raise _FieldProblem(f'"{item}" is missing a value')
        if spec.names and text.isalpha():
            names = list(spec.names)
            raise _FieldProblem(f'unknown name "{text}" (use {spec.low}-{spec.high} or {names[0]}..{names[-1]})')
        raise _FieldProblem(f'"{text}" is not a number')
    # Bounding the digits keeps int() away from Python's limit on huge integer strings.
    value = int(text) if len(text) <= 6 else spec.high + 1
    if not spec.low <= value <= spec.high:
        raise _FieldProblem(f"{text} is out of range {spec.low}-{spec.high}")
    return value


def _zone(tz: str) -> ZoneInfo:
    """The zone named `tz`; `localtime` is refused, as it means a different zone on each machine."""
    if tz == "localtime":
        raise ScheduleError(f'--tz: "{tz}" is this machine\'s zone, not an IANA name; give one such as Europe/Berlin')
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f'--tz: unknown time zone "{tz}"; give an IANA name such as Europe/Berlin') from None


def _parse_at(text: str, zone: ZoneInfo) -> datetime:
    """An ISO 8601 instant in UTC; a naive one is wall time in `zone`, resolved with fold=0."""
    try:
        parsed = datetime.fromisoformat(text.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ScheduleError(
            f'--at: "{text}" is not a date and time; write it as 2026-12-01T02:00 (seconds optional),'
            " in the --tz zone or with an offset such as +01:00 or Z"
        ) from None


def _wall_text(instant: datetime, zone: ZoneInfo) -> str:
    wall = instant.astimezone(zone).replace(tzinfo=None)
    return wall.isoformat(sep=" ", timespec="minutes" if wall.second == wall.microsecond == 0 else "seconds")


def _next_cron_fire(cron: Cron, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The earliest instant after `after` whose wall time in `zone` the cron matches.

    Wall times do not map to instants in order: one in a spring-forward gap
    fires as late as the gap is long, so later wall times may fire sooner, and
    wall times up to a gap's length before `after` may still fire after it.
    """
    after_wall = after.astimezone(zone).replace(tzinfo=None)
    start = after_wall - _MAX_GAP
    last_day = min(_LAST_DAY, after_wall.date() + timedelta(days=_HORIZON_DAYS))
    best: datetime | None = None
    # Once a candidate is found, no wall time from where it fires on can fire sooner.
    limit: datetime | None = None
    for wall in _matching_walls(cron, start, last_day):
        if limit is not None and wall >= limit:
            break
        fire = wall.replace(tzinfo=zone).astimezone(UTC)
        if fire > after and (best is None or fire < best):
            best = fire
            limit = fire.astimezone(zone).replace(tzinfo=None)
    return best


def _matching_walls(cron: Cron, start: datetime, last_day: date) -> Iterator[datetime]:
    """The naive wall times from `start` through `last_day` that the cron matches, in order."""
    hours, minutes = sorted(cron.hours), sorted(cron.minutes)
    day = start.date()
    while day <= last_day:
        if day.month not in cron.months:
            day = _next_month(day)
            continue
        if cron.matches_date(day):
            for hour in hours:
                for minute in minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall >= start:
                        yield wall
        day += timedelta(days=1)


def _next_month(day: date) -> date:
    if day.month < 12:
        return date(day.year, day.month + 1, 1)
    return date(day.year + 1, 1, 1) if day.year < date.max.year else date.max
