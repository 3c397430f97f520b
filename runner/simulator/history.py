"""fal's request history (Platform API): `GET /v1/models/requests/by-endpoint`.

The query is read and checked, the finished requests it matches are picked and
paged, and the page is rendered as fal's JSON. Pages are cut by a keyset cursor
(the sort key of a page's last item, then strictly below it), so a request
that finishes between two pages never shifts the rest: none is skipped, none
repeated. Times are compared at the microsecond, as the rendered ISO 8601
strings show them, so an `ended_at` passed back as `start` or `end` bounds exactly.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.errors import HistoryQueryError
from runner.simulator.requests import FinishedRequest, Outcome
from runner.simulator.responses import FAILURES

HISTORY_PATH = "/v1/models/requests/by-endpoint"
#: The window a query without `start` looks back over.
DEFAULT_WINDOW = timedelta(hours=24)
MAX_LIMIT = 100
#: Where an item sorts: (has the sort value, the value, seq); compared as a tuple, newest/longest first.
SortKey = tuple[int, float, int]
#: A monotonic instant of the store as Unix seconds.
WallTime = Callable[[float], float]


class SortBy(str, Enum):
    """The order of the items, descending."""

    #: Most recently ended first.
    ENDED_AT = "ended_at"
    #: Longest run first; those that never started come last.
    DURATION = "duration"


class StatusFilter(str, Enum):
    """Which status codes `status=` keeps."""

    #: 2xx.
    SUCCESS = "success"
    #: 4xx, 499 (cancelled) included.
    USER_ERROR = "user_error"
    #: 5xx.
    ERROR = "error"


_STATUS_CLASSES = {StatusFilter.SUCCESS: 2, StatusFilter.USER_ERROR: 4, StatusFilter.ERROR: 5}


class _Params(BaseModel):
    """The query string as fal's API validates it; lists are comma-separated."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    endpoint_id: Annotated[tuple[str, ...], Field(min_length=1)]
    start: datetime | None = None
    end: datetime | None = None
    status: StatusFilter | None = None
    request_id: str | None = None
    expand: tuple[str, ...] = ()
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 50
    cursor: str | None = None
    sort_by: SortBy = SortBy.ENDED_AT

    @field_validator("endpoint_id", "expand", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return tuple(part.strip() for part in value.split(",") if part.strip())

    @field_validator("start", "end")
    @classmethod
    def _naive_is_utc(cls, value: datetime | None) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class HistoryQuery:
    """A checked query; `after` is the decoded cursor."""

    endpoint_ids: frozenset[str]
    start: datetime | None
    end: datetime | None
    status: StatusFilter | None
    request_id: str | None
    payloads: bool
    limit: int
    sort_by: SortBy
    after: SortKey | None


@dataclass(frozen=True)
class HistoryPage:
    """The items of one page, in order, and the cursor of the next (None on the last page)."""

    items: list[FinishedRequest]
    next_cursor: str | None


def parse_query(query: Mapping[str, list[str]]) -> HistoryQuery:
    """The query string as a HistoryQuery.

    Raises HistoryQueryError: 422 for a missing or invalid parameter, 400 for a malformed cursor.
    """
    raw = {name: values[0] for name, values in query.items() if values}
    for listed in ("endpoint_id", "expand"):  # a repeated list parameter adds to the list
        if len(query.get(listed, [])) > 1:
            raw[listed] = ",".join(query[listed])
    try:
        params = _Params.model_validate(raw)
    except ValidationError as exc:
        detail = [{"loc": ["query", *error["loc"]], "msg": error["msg"], "type": error["type"]}
                  for error in exc.errors()]  # fmt: skip
        raise HistoryQueryError(422, detail) from None
    return HistoryQuery(
        endpoint_ids=frozenset(params.endpoint_id),
        start=params.start,
        end=params.end,
        status=params.status,
        request_id=params.request_id,
        payloads="payloads" in params.expand,
        limit=params.limit,
        sort_by=params.sort_by,
        after=None if params.cursor is None else decode_cursor(params.cursor, params.sort_by),
    )


def select_page(finished: Sequence[FinishedRequest], query: HistoryQuery, now_s: float,
                wall: WallTime) -> HistoryPage:  # fmt: skip
    """The page `query` asks for among `finished` (in completion order), at monotonic `now_s`."""

    def ended(done: FinishedRequest) -> datetime:
        return _utc(wall(done.completed_at))

    start = query.start or _utc(wall(now_s)) - DEFAULT_WINDOW
    low = bisect_left(finished, start, key=ended)
    high = len(finished) if query.end is None else bisect_left(finished, query.end, key=ended)
    candidates = [done for done in finished[low:high] if _matches(done, query)]
    if query.after is not None:
        after = query.after
        candidates = [done for done in candidates if sort_key(done, query.sort_by) < after]
    page = heapq.nlargest(query.limit + 1, candidates, key=lambda done: sort_key(done, query.sort_by))
    if len(page) <= query.limit:
        return HistoryPage(page, None)
    items = page[: query.limit]
    return HistoryPage(items, encode_cursor(query.sort_by, sort_key(items[-1], query.sort_by)))


def render_page(page: HistoryPage, payloads: bool, wall: WallTime,
                held_output: Callable[[str], dict[str, Any] | None]) -> dict[str, Any]:  # fmt: skip
    """fal's body for a page; `held_output` gives a request's result while the simulator holds it."""
    items = []
    for done in page.items:
        item = history_item(done, wall)
        if payloads:
            item["json_input"] = json.loads(done.input_json)
            item["json_output"] = held_output(done.id) if done.outcome is Outcome.OK else None
        items.append(item)
    return {"items": items, "next_cursor": page.next_cursor, "has_more": page.next_cursor is not None}


def history_item(done: FinishedRequest, wall: WallTime) -> dict[str, Any]:
    """One item without its payloads; times as ISO 8601 UTC."""
    return {
        "request_id": done.id,
        "endpoint_id": done.endpoint,
        "started_at": None if done.started_at is None else _iso(wall(done.started_at)),
        "sent_at": _iso(wall(done.submitted_at)),
        "ended_at": _iso(wall(done.completed_at)),
        "status_code": status_code(done.outcome),
        "duration": done.run_s,
    }


def status_code(outcome: Outcome) -> int:
    """The status the result call answers for a request that ended so."""
    failure = FAILURES.get(outcome)
    return 200 if failure is None else failure.status_code


def sort_key(done: FinishedRequest, sort_by: SortBy) -> SortKey:
    if sort_by is SortBy.ENDED_AT:
        return (1, done.completed_at, done.seq)
    return (0, 0.0, done.seq) if done.run_s is None else (1, done.run_s, done.seq)


def encode_cursor(sort_by: SortBy, key: SortKey) -> str:
    """An opaque cursor: urlsafe base64, unpadded, of the sort order and the last item's key."""
    text = json.dumps({"sort_by": sort_by.value, "key": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, sort_by: SortBy) -> SortKey:
    """The key a cursor carries; raises HistoryQueryError(400) if malformed or of another sort order."""
    try:
        decoded = json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HistoryQueryError(400, "Malformed cursor") from None
    key = decoded.get("key") if isinstance(decoded, dict) else None
    if not isinstance(key, list) or len(key) != 3 or not _is_number(key[1]) or not _is_int(key[0], key[2]):
        raise HistoryQueryError(400, "Malformed cursor")
    if decoded.get("sort_by") != sort_by.value:
        raise HistoryQueryError(400, f"The cursor was made for another order than sort_by={sort_by.value}")
    return (key[0], float(key[1]), key[2])


def _matches(done: FinishedRequest, query: HistoryQuery) -> bool:
    if done.endpoint not in query.endpoint_ids:
        return False
    if query.request_id is not None and done.id != query.request_id:
        return False
    return query.status is None or status_code(done.outcome) // 100 == _STATUS_CLASSES[query.status]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(*values: Any) -> bool:
    return all(isinstance(value, int) and not isinstance(value, bool) for value in values)


def _utc(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def _iso(unix_s: float) -> str:
    return _utc(unix_s).isoformat()
