import time as clock
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.errors import ScheduleError, WanBatchError
from jobs.schedule import Cron, When, slot_label

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(expr: str, tz: str, after: datetime, count: int) -> list[datetime]:
    return When(tz=tz, cron=Cron.parse(expr)).next_times(after, count)


# --- Cron.parse ---


@pytest.mark.parametrize(
    ("expr", "attribute", "expected"),
    [
        ("* * * * *", "minutes", set(range(60))),
        ("* * * * *", "hours", set(range(24))),
        ("* * * * *", "days_of_month", set(range(1, 32))),
        ("* * * * *", "months", set(range(1, 13))),
        ("* * * * *", "days_of_week", set(range(7))),
        ("5 * * * *", "minutes", {5}),
        ("1-4 * * * *", "minutes", {1, 2, 3, 4}),
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("10-30/10 * * * *", "minutes", {10, 20, 30}),
        ("50/3 * * * *", "minutes", {50, 53, 56, 59}),
        ("1,5-7,*/20 * * * *", "minutes", {0, 1, 5, 6, 7, 20, 40}),
        ("*/100 * * * *", "minutes", {0}),
        ("0 */6 * * *", "hours", {0, 6, 12, 18}),
        ("0 9-17/4 * * *", "hours", {9, 13, 17}),
        ("0 0 */10 * *", "days_of_month", {1, 11, 21, 31}),
        ("0 0 1,15 * *", "days_of_month", {1, 15}),
        ("0 0 * jan-mar *", "months", {1, 2, 3}),
        ("0 0 * JUN,Dec *", "months", {6, 12}),
        ("0 0 * */3 *", "months", {1, 4, 7, 10}),
        ("0 0 * feb/5 *", "months", {2, 7, 12}),
        ("0 0 * 1-jun/2 *", "months", {1, 3, 5}),
        ("0 0 * * mon-fri", "days_of_week", {1, 2, 3, 4, 5}),
        ("0 0 * * Sat,SUN", "days_of_week", {6, 0}),
        ("0 0 * * 7", "days_of_week", {0}),
        ("0 0 * * 5-7", "days_of_week", {5, 6, 0}),
        ("0 0 * * 0,7", "days_of_week", {0}),
        ("0 0 * * */2", "days_of_week", {0, 2, 4, 6}),
        ("0 0 * * 1/3", "days_of_week", {1, 4}),
        ("0 0 * * thu-7", "days_of_week", {4, 5, 6, 0}),
    ],
)
def test_parse_forms(expr: str, attribute: str, expected: set[int]) -> None:
    assert getattr(Cron.parse(expr), attribute) == frozenset(expected)


@pytest.mark.parametrize(
    ("expr", "dom_restricted", "dow_restricted"),
    [
        ("0 0 * * *", False, False),
        ("0 0 1 * *", True, False),
        ("0 0 * * 1", False, True),
        ("0 0 1-31/2 * 1-5", True, True),
        ("0 0 */2 * 1-5", False, True),  # Vixie: a field starting with "*" restricts nothing
        ("0 0 1 * */2", True, False),
    ],
)
def test_restricted_flags(expr: str, dom_restricted: bool, dow_restricted: bool) -> None:
    cron = Cron.parse(expr)
    assert (cron.dom_restricted, cron.dow_restricted) == (dom_restricted, dow_restricted)


def test_expr_is_kept_whitespace_normalised() -> None:
    assert Cron.parse("  0\t2 *  *\n* ").expr == "0 2 * * *"


def test_day_of_week_seven_is_sunday() -> None:
    assert Cron.parse("0 0 * * 7") == replace(Cron.parse("0 0 * * 0"), expr="0 0 * * 7")
    sunday = date(2026, 6, 7)
    assert Cron.parse("0 0 * * 7").matches_date(sunday)
    assert Cron.parse("0 0 * * sun").matches_date(sunday)


@pytest.mark.parametrize(
    ("nickname", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        (" @Daily ", "0 0 * * *"),
    ],
)
def test_nicknames(nickname: str, fields: str) -> None:
    assert Cron.parse(nickname) == replace(Cron.parse(fields), expr=nickname.strip())


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", '--cron: "0 25 * * *": hour: 25 is out of range 0-23'),
        ("0 2 * *", '--cron: "0 2 * *": needs 5 fields (minute hour day-of-month month day-of-week), got 4'),
        ("0 2 * * * *", '--cron: "0 2 * * * *": needs 5 fields (minute hour day-of-month month day-of-week), got 6'),
        ("   ", '--cron: "": needs 5 fields (minute hour day-of-month month day-of-week), got 0'),
        ("60 * * * *", '--cron: "60 * * * *": minute: 60 is out of range 0-59'),
        ("0 0 0 * *", '--cron: "0 0 0 * *": day-of-month: 0 is out of range 1-31'),
        ("0 0 * 13 *", '--cron: "0 0 * 13 *": month: 13 is out of range 1-12'),
        ("0 0 * * 8", '--cron: "0 0 * * 8": day-of-week: 8 is out of range 0-7'),
        ("99999999999 * * * *", '--cron: "99999999999 * * * *": minute: 99999999999 is out of range 0-59'),
        ("*/0 * * * *", '--cron: "*/0 * * * *": minute: step 0 in "*/0" must be at least 1'),
        ("0 1-5/0 * * *", '--cron: "0 1-5/0 * * *": hour: step 0 in "1-5/0" must be at least 1'),
        ("*/x * * * *", '--cron: "*/x * * * *": minute: step "x" in "*/x" is not a number'),
        ("*/9999999 * * * *", '--cron: "*/9999999 * * * *": minute: step 9999999 in "*/9999999" is too large'),
        ("5-2 * * * *", '--cron: "5-2 * * * *": minute: range 5-2 is reversed (the smaller value comes first)'),
        (
            "0 0 * * fri-mon",
            '--cron: "0 0 * * fri-mon": day-of-week: range fri-mon is reversed (the smaller value comes first)',
        ),
        ("0 0 * foo *", '--cron: "0 0 * foo *": month: unknown name "foo" (use 1-12 or jan..dec)'),
        (
            "0 0 * * mon-funday",
            '--cron: "0 0 * * mon-funday": day-of-week: unknown name "funday" (use 0-7 or sun..sat)',
        ),
        ("0 0 * * monday", '--cron: "0 0 * * monday": day-of-week: unknown name "monday" (use 0-7 or sun..sat)'),
        ("0 0 mon * *", '--cron: "0 0 mon * *": day-of-month: "mon" is not a number'),
        ("0 jan * * *", '--cron: "0 jan * * *": hour: "jan" is not a number'),
        ("1-2-3 * * * *", '--cron: "1-2-3 * * * *": minute: "2-3" is not a number'),
        ("+5 * * * *", '--cron: "+5 * * * *": minute: "+5" is not a number'),
        ("٣ * * * *", '--cron: "٣ * * * *": minute: "٣" is not a number'),
        ("1,,2 * * * *", '--cron: "1,,2 * * * *": minute: empty item in a comma list'),
        ("-5 * * * *", '--cron: "-5 * * * *": minute: "-5" is missing a value'),
        ("5- * * * *", '--cron: "5- * * * *": minute: "5-" is missing a value'),
        ("/5 * * * *", '--cron: "/5 * * * *": minute: "/5" is missing a value'),
        (
            "@reboot",
            '--cron: "@reboot": unknown nickname; use one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually',
        ),
        ("0 0 30 2 *", '--cron: "0 0 30 2 *": never fires'),
        ("0 0 31 apr,jun,sep,nov *", '--cron: "0 0 31 apr,jun,sep,nov *": never fires'),
    ],
)
def test_parse_errors_name_the_field_and_problem(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        Cron.parse(expr)
    assert str(caught.value) == message
    assert isinstance(caught.value, WanBatchError)


@pytest.mark.parametrize("expr", ["0 0 29 2 *", "0 0 30 2 1", "0 0 31 1-2 *"])
def test_rare_but_possible_dates_parse(expr: str) -> None:
    Cron.parse(expr)


# --- Cron.matches_date ---


@pytest.mark.parametrize(
    ("expr", "day", "matches"),
    [
        # Both restricted: the 13th OR a Friday (Vixie cron).
        ("0 0 13 * 5", date(2026, 2, 6), True),  # a Friday
        ("0 0 13 * 5", date(2026, 2, 13), True),  # Friday the 13th
        ("0 0 13 * 5", date(2026, 5, 13), True),  # a Wednesday
        ("0 0 13 * 5", date(2026, 5, 14), False),
        ("0 0 13 6 5", date(2026, 5, 15), False),  # a Friday, but not in June
        # Only one restricted: that one decides.
        ("0 0 13 * *", date(2026, 5, 13), True),
        ("0 0 13 * *", date(2026, 2, 6), False),
        ("0 0 * * 5", date(2026, 2, 6), True),
        ("0 0 * * 5", date(2026, 5, 13), False),
        ("0 0 * * *", date(2026, 5, 13), True),
        ("0 0 * feb *", date(2026, 5, 13), False),
    ],
)
def test_matches_date(expr: str, day: date, matches: bool) -> None:
    assert Cron.parse(expr).matches_date(day) is matches


# --- When.next_after ---


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("0 2 * * *", "UTC", utc(2026, 1, 1), [utc(2026, 1, 1, 2), utc(2026, 1, 2, 2)]),
        # Strictly after: a firing at `after` itself is not the next one.
        ("0 2 * * *", "UTC", utc(2026, 1, 1, 2), [utc(2026, 1, 2, 2)]),
        ("0 2 * * *", "UTC", utc(2026, 1, 1, 1, 59, 59), [utc(2026, 1, 1, 2)]),
        ("0 2 * * *", "Europe/Berlin", utc(2026, 1, 1), [utc(2026, 1, 1, 1), utc(2026, 1, 2, 1)]),
        ("0 9 * * mon", "UTC", utc(2026, 1, 1), [utc(2026, 1, 5, 9), utc(2026, 1, 12, 9)]),
        ("@monthly", "UTC", utc(2026, 1, 15), [utc(2026, 2, 1), utc(2026, 3, 1)]),
        (
            "*/20 9-10 * * *",
            "UTC",
            utc(2026, 1, 1, 9, 50),
            [utc(2026, 1, 1, 10), utc(2026, 1, 1, 10, 20), utc(2026, 1, 1, 10, 40), utc(2026, 1, 2, 9)],
        ),
        ("59 23 31 12 *", "UTC", utc(2026, 12, 31, 23, 59), [utc(2027, 12, 31, 23, 59)]),
        # The 31st skips the months that lack one.
        (
            "0 0 31 * *",
            "UTC",
            utc(2026, 1, 31),
            [utc(2026, 3, 31), utc(2026, 5, 31), utc(2026, 7, 31), utc(2026, 8, 31), utc(2026, 10, 31)],
        ),
        # Feb 29, including the eight years from 2096 to 2104 (2100 is not a leap year).
        ("0 0 29 2 *", "UTC", utc(2026, 1, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
        ("0 0 29 2 *", "UTC", utc(2096, 3, 1), [utc(2104, 2, 29)]),
        (
            "0 0 13 * 5",
            "UTC",
            utc(2026, 2, 1),
            [utc(2026, 2, 6), utc(2026, 2, 13), utc(2026, 2, 20), utc(2026, 2, 27), utc(2026, 3, 6), utc(2026, 3, 13)],
        ),
    ],
)
def test_next_times(expr: str, tz: str, after: datetime, expected: list[datetime]) -> None:
    got = fires(expr, tz, after, len(expected))
    assert got == expected
    assert all(t.tzinfo is UTC for t in got)


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist and fires at 03:30 CEST.
        (
            "30 2 * * *",
            "Europe/Berlin",
            utc(2026, 3, 28),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)],
        ),
        # 02:30 and 03:30 are then the same instant: it fires once.
        (
            "30 2,3 * * *",
            "Europe/Berlin",
            utc(2026, 3, 28),
            [
                utc(2026, 3, 28, 1, 30),
                utc(2026, 3, 28, 2, 30),
                utc(2026, 3, 29, 1, 30),
                utc(2026, 3, 30, 0, 30),
                utc(2026, 3, 30, 1, 30),
            ],
        ),
        (
            "*/30 * * * *",
            "Europe/Berlin",
            utc(2026, 3, 29),
            [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2)],
        ),
        # After 03:15 CEST the gap's 02:30, read as 03:30 CEST, is still ahead, though its wall time is behind.
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1, 15), [utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]),
        # Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice and fires at the first.
        (
            "30 2 * * *",
            "Europe/Berlin",
            utc(2026, 10, 24),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        (
            "*/30 * * * *",
            "Europe/Berlin",
            utc(2026, 10, 25, 0),
            [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2), utc(2026, 10, 25, 2, 30)],
        ),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 15), [utc(2026, 10, 26, 1, 30)]),
        # New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT and falls back 2026-11-01 02:00 EDT -> 01:00 EST.
        (
            "30 2 * * *",
            "America/New_York",
            utc(2026, 3, 7),
            [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            utc(2026, 10, 31),
            [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
        # Lord Howe springs forward half an hour (02:00 -> 02:30 on 2026-10-04): 02:15 fires at 02:45, after 02:30.
        (
            "15,30 2 * * *",
            "Australia/Lord_Howe",
            utc(2026, 10, 3, 15),
            [utc(2026, 10, 3, 15, 30), utc(2026, 10, 3, 15, 45), utc(2026, 10, 4, 15, 15), utc(2026, 10, 4, 15, 30)],
        ),
    ],
)
def test_next_times_across_dst(expr: str, tz: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(expr, tz, after, len(expected)) == expected


def test_next_after_takes_any_aware_after_and_refuses_naive() -> None:
    when = When(tz="Europe/Berlin", cron=Cron.parse("0 2 * * *"))
    berlin_midnight = datetime(2026, 1, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert when.next_after(berlin_midnight) == utc(2026, 1, 1, 1)
    with pytest.raises(ValueError, match="aware"):
        when.next_after(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("expr", "after", "limit_s"), [("0 2 * * *", utc(2026, 1, 1), 0.010), ("0 0 29 2 *", utc(2096, 3, 1), 0.100)]
)
def test_next_after_is_fast(expr: str, after: datetime, limit_s: float) -> None:
    """Days are skipped whole, so even an eight-year search is quick (best of 3, to ride out a busy machine)."""
    when = When(tz="Europe/Berlin", cron=Cron.parse(expr))
    durations_s = []
    for _ in range(3):
        start = clock.perf_counter()
        when.next_after(after)
        durations_s.append(clock.perf_counter() - start)
    assert min(durations_s) < limit_s


# --- When: one-shot --at ---


@pytest.mark.parametrize(
    ("at", "tz", "expected"),
    [
        ("2026-12-01T02:00", "Europe/Berlin", utc(2026, 12, 1, 1)),
        ("2026-12-01 02:00", "Europe/Berlin", utc(2026, 12, 1, 1)),
        ("2026-12-01T02:00:30", "Europe/Berlin", utc(2026, 12, 1, 1, 0, 30)),
        (" 2026-12-01T02:00 ", "UTC", utc(2026, 12, 1, 2)),
        ("2026-12-01T02:00Z", "Europe/Berlin", utc(2026, 12, 1, 2)),
        ("2026-12-01T02:00:00+05:30", "Europe/Berlin", utc(2026, 11, 30, 20, 30)),
        ("2026-07-01T02:00", "America/New_York", utc(2026, 7, 1, 6)),
        # Naive wall times follow the cron rules across DST: a gap's 02:30 is 03:30 CEST; a repeated one, the first.
        ("2027-03-28T02:30", "Europe/Berlin", utc(2027, 3, 28, 1, 30)),
        ("2026-10-25T02:30", "Europe/Berlin", utc(2026, 10, 25, 0, 30)),
    ],
)
def test_at_is_stored_in_utc(at: str, tz: str, expected: datetime) -> None:
    when = When.from_options(None, at, tz, NOW)
    assert when.at == expected
    assert when.at is not None and when.at.tzinfo is UTC
    assert when.next_after(NOW) == expected
    assert when.next_after(expected) is None
    assert when.next_times(NOW, 3) == [expected]


@pytest.mark.parametrize(
    ("at", "now", "message"),
    [
        ("2026-01-01T02:00", NOW, "--at: 2026-01-01 02:00 (Europe/Berlin) is in the past"),
        ("2026-06-01T14:00", NOW, "--at: 2026-06-01 14:00 (Europe/Berlin) is in the past"),  # exactly now
        (
            "2026-06-01T12:00:30Z",
            NOW + timedelta(minutes=5),
            "--at: 2026-06-01 14:00:30 (Europe/Berlin) is in the past",
        ),
    ],
)
def test_at_must_be_in_the_future(at: str, now: datetime, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        When.from_options(None, at, "Europe/Berlin", now)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "at", ["tomorrow", "", "2026-13-01T02:00", "2026-12-01T2:00", "01.12.2026 02:00", "0001-01-01T00:00"]
)
def test_unparsable_at_names_the_expected_form(at: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        When.from_options(None, at, "Europe/Berlin", NOW)
    assert str(caught.value).startswith(f'--at: "{at}" is not a date and time; write it as 2026-12-01T02:00')


# --- When.from_options ---


def test_from_options_builds_a_cron() -> None:
    when = When.from_options("0 2 * * *", None, "Europe/Berlin", NOW)
    assert when == When(tz="Europe/Berlin", cron=Cron.parse("0 2 * * *"))


@pytest.mark.parametrize(
    ("cron", "at", "tz", "message"),
    [
        ("0 2 * * *", "2026-12-01T02:00", "UTC", "give --cron or --at, not both"),
        (None, None, "UTC", "give --cron or --at"),
        ("0 2 * * *", None, "Mars/Base", '--tz: unknown time zone "Mars/Base"'),
        (None, "2026-12-01T02:00", "Mars/Base", '--tz: unknown time zone "Mars/Base"'),
        ("0 2 * * *", None, "", '--tz: unknown time zone ""'),
        ("0 2 * * *", None, "europe/berlin", '--tz: unknown time zone "europe/berlin"'),
        ("0 2 * * *", None, "../etc/passwd", '--tz: unknown time zone "../etc/passwd"'),
        ("0 2 * * *", None, "zone.tab", '--tz: unknown time zone "zone.tab"'),
        ("0 2 * * *", None, "localtime", '--tz: "localtime" is this machine\'s zone, not an IANA name'),
        ("0 0 30 2 *", None, "UTC", '--cron: "0 0 30 2 *": never fires'),
        ("0 2 * *", None, "UTC", '--cron: "0 2 * *": needs 5 fields'),
    ],
)
def test_from_options_errors(cron: str | None, at: str | None, tz: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        When.from_options(cron, at, tz, NOW)
    assert str(caught.value).startswith(message)


def test_when_itself_holds_one_valid_schedule() -> None:
    with pytest.raises(ScheduleError, match="give --cron or --at"):
        When(tz="UTC")
    with pytest.raises(ScheduleError, match="unknown time zone"):
        When(tz="Mars/Base", cron=Cron.parse("@daily"))
    with pytest.raises(ValueError, match="aware UTC"):
        When(tz="UTC", at=datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="aware UTC"):
        When(tz="UTC", at=datetime(2026, 12, 1, tzinfo=ZoneInfo("Europe/Berlin")))


# --- describe, to_dict, from_dict ---


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (When(tz="Europe/Berlin", cron=Cron.parse("0  2 * * *")), 'cron "0 2 * * *" (Europe/Berlin)'),
        (When(tz="UTC", cron=Cron.parse("@weekly")), 'cron "@weekly" (UTC)'),
        (When(tz="Europe/Berlin", at=utc(2026, 12, 1, 1)), "once at 2026-12-01 02:00 (Europe/Berlin)"),
        (When(tz="America/New_York", at=utc(2026, 12, 1, 1, 0, 30)), "once at 2026-11-30 20:00:30 (America/New_York)"),
    ],
)
def test_describe(when: When, text: str) -> None:
    assert when.describe() == text


@pytest.mark.parametrize(
    ("when", "data"),
    [
        (When(tz="Europe/Berlin", cron=Cron.parse("0 2 * * *")), {"tz": "Europe/Berlin", "cron": "0 2 * * *"}),
        (When(tz="UTC", cron=Cron.parse("@Daily")), {"tz": "UTC", "cron": "@Daily"}),
        (
            When(tz="UTC", cron=Cron.parse("*/5 9-17 * jan-jun mon-fri")),
            {"tz": "UTC", "cron": "*/5 9-17 * jan-jun mon-fri"},
        ),
        (When(tz="Europe/Berlin", at=utc(2026, 12, 1, 1)), {"tz": "Europe/Berlin", "at": "2026-12-01T01:00:00+00:00"}),
        (When(tz="UTC", at=utc(2026, 12, 1, 1, 2, 3)), {"tz": "UTC", "at": "2026-12-01T01:02:03+00:00"}),
    ],
)
def test_dict_round_trip(when: When, data: dict[str, str]) -> None:
    assert when.to_dict() == data
    back = When.from_dict(data)
    assert back == when
    assert back.to_dict() == data
    assert back.describe() == when.describe()


def test_from_dict_keeps_past_instants_and_reads_any_offset() -> None:
    assert When.from_dict({"tz": "UTC", "at": "2000-01-01T00:00:00+00:00"}).at == utc(2000, 1, 1)
    assert When.from_dict({"tz": "Europe/Berlin", "at": "2026-12-01T02:00"}).at == utc(2026, 12, 1, 1)
    assert When.from_dict({"tz": "UTC", "at": "2026-12-01T02:00+01:00"}).at == utc(2026, 12, 1, 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tz": "UTC"}, "give --cron or --at"),
        ({"tz": "UTC", "cron": "@daily", "at": "2026-12-01T01:00:00+00:00"}, "give --cron or --at, not both"),
        ({"cron": "@daily"}, "schedule {'cron': '@daily'}: needs a string tz"),
        ({"tz": 1, "cron": "@daily"}, "schedule {'tz': 1, 'cron': '@daily'}: needs a string tz"),
        ({"tz": "UTC", "cron": 5}, "schedule {'tz': 'UTC', 'cron': 5}: needs a string tz"),
        ({"tz": "Mars/Base", "cron": "@daily"}, '--tz: unknown time zone "Mars/Base"'),
        ({"tz": "UTC", "cron": "@often"}, '--cron: "@often": unknown nickname'),
        ({"tz": "UTC", "at": "soon"}, '--at: "soon" is not a date and time'),
    ],
)
def test_from_dict_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        When.from_dict(data)
    assert str(caught.value).startswith(message)


# --- slot_label ---


@pytest.mark.parametrize(
    ("instant", "tz", "label"),
    [
        (utc(2026, 12, 1, 1), "Europe/Berlin", "2026-12-01T0200"),
        (utc(2026, 12, 1, 1, 59, 59), "UTC", "2026-12-01T0159"),
        (utc(2026, 12, 1, 1), "America/New_York", "2026-11-30T2000"),
        (utc(2026, 12, 1, 1), "Asia/Kolkata", "2026-12-01T0630"),
        # The gap's 02:30 fires at 03:30 CEST, and is filed there.
        (utc(2026, 3, 29, 1, 30), "Europe/Berlin", "2026-03-29T0330"),
        (datetime(2026, 12, 1, 2, tzinfo=ZoneInfo("Europe/Berlin")), "Europe/Berlin", "2026-12-01T0200"),
    ],
)
def test_slot_label(instant: datetime, tz: str, label: str) -> None:
    assert slot_label(instant, tz) == label


def test_slot_label_refuses_naive_instants_and_unknown_zones() -> None:
    with pytest.raises(ValueError, match="aware"):
        slot_label(datetime(2026, 12, 1), "UTC")
    with pytest.raises(ScheduleError, match="--tz"):
        slot_label(utc(2026, 12, 1), "Mars/Base")


# --- property: next_after against brute force ---

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]
#: Instants near 2026's DST changes in ZONES, where mistakes would hide.
TRANSITIONS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15, 30),
]


def field_text(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        number.map(str),
        st.integers(1, max(1, (high - low) // 2)).map(lambda step: f"*/{step}"),
        st.tuples(number, number).map(lambda pair: f"{min(pair)}-{max(pair)}"),
        st.lists(number, min_size=1, max_size=3).map(lambda values: ",".join(map(str, values))),
    )


CRON_TEXTS = st.tuples(
    field_text(0, 59),
    field_text(0, 23),
    st.one_of(st.just("*"), field_text(1, 28)),
    field_text(1, 12),
    field_text(0, 7),
).map(" ".join)
AFTERS = st.one_of(
    st.datetimes(datetime(2025, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-240, 240)).map(lambda t: t[0] + timedelta(minutes=t[1])),
)


def wall_matches(cron: Cron, wall: datetime) -> bool:
    return cron.matches_date(wall.date()) and wall.hour in cron.hours and wall.minute in cron.minutes


def fires_from_gap(cron: Cron, zone: ZoneInfo, wall: datetime, fire: datetime) -> bool:
    """Whether `wall` matches, does not exist in `zone`, and so fires at `fire`."""
    resolved = wall.replace(tzinfo=zone)
    exists = resolved.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
    return wall_matches(cron, wall) and not exists and resolved.astimezone(UTC) == fire


def brute_force_next(cron: Cron, zone: ZoneInfo, after: datetime, until_wall: datetime) -> datetime | None:
    """Every wall minute from 3 hours before `after` to `until_wall`, each resolved with fold=0."""
    wall = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) - timedelta(hours=3)
    best = None
    while wall <= until_wall:
        if wall_matches(cron, wall):
            fire = wall.replace(tzinfo=zone).astimezone(UTC)
            if fire > after and (best is None or fire < best):
                best = fire
        wall += timedelta(minutes=1)
    return best


@settings(max_examples=100, deadline=None, database=None)
@given(expr=CRON_TEXTS, tz=st.sampled_from(ZONES), after=AFTERS)
def test_next_after_is_the_earliest_matching_instant(expr: str, tz: str, after: datetime) -> None:
    cron, zone = Cron.parse(expr), ZoneInfo(tz)
    fire = When(tz=tz, cron=cron).next_after(after)
    assert fire is not None and fire > after and fire.tzinfo is UTC
    wall = fire.astimezone(zone).replace(tzinfo=None)
    if not wall_matches(cron, wall):
        # Only a matching wall time skipped by a gap may fire at a wall time that does not match.
        assert any(fires_from_gap(cron, zone, wall - timedelta(minutes=m), fire) for m in range(1, 181))
    if fire - after <= timedelta(days=2):
        assert brute_force_next(cron, zone, after, wall + timedelta(hours=3)) == fire
