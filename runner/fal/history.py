"""fal's request history (its Platform API): an endpoint's requests with the input each was sent.

`HistoryClient.find` reads it page by page for a submit whose answer was lost
(`jobs.reconcile` says what matches and what proves absence). The credential
goes only to the configured API host: a next page is asked for with the opaque
cursor, never at a URL the server gave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from jobs.errors import PermanentQueueError, QueueAPIError, TransientQueueError
from jobs.reconcile import HistoryItem, ReconcilePolicy, input_digest, pick
from runner.fal.queue_api import FalHttp

#: fal's Platform API, where a `FAL_KEY` batch looks for its lost submits unless told otherwise.
FAL_API_URL = "https://api.fal.ai/v1"
#: What `--api-url none` stores: the batch has no history to look in (its lost submits need a person).
NO_API = "none"
_PAGE_SIZE = 100


def api_url_for(stored: str | None, auth_scheme: Literal["Key", "Bearer"], fallback: str | None = None) -> str | None:
    """Where a batch's lost submits are looked for: what it stored, else (for a fal key) the worker's
    `fallback`, else fal's own API; None (nowhere) for `none` and for a gateway that named none."""
    chosen = stored or (fallback if auth_scheme == "Key" else None)  # a gateway's token goes to its own hosts
    if chosen == NO_API:
        return None
    if chosen:
        return chosen.rstrip("/")
    return FAL_API_URL if auth_scheme == "Key" else None


@dataclass(frozen=True)
class Search:
    """What one look at the history found."""

    found: HistoryItem | None
    #: Every page since the submit was read: not found means the history does not list it (yet).
    complete: bool
    #: Requests listed without the input they were sent (payloads not stored): a match could hide there.
    blind: int
    pages: int


class HistoryClient(FalHttp):
    """The request history of the Platform API at `provider.base_url` (e.g. `https://api.fal.ai/v1`)."""

    def page(self, endpoint_id: str, start: float, end: float | None, cursor: str | None, limit: int = _PAGE_SIZE,
             request_id: str | None = None) -> tuple[list[dict[str, Any]], str | None]:  # fmt: skip
        """One page of the endpoint's requests that ended from `start` to `end` (Unix seconds), with payloads;
        and the cursor of the next page (None on the last). Raises a QueueAPIError as classified."""
        params = {"endpoint_id": endpoint_id, "start": _iso(start), "expand": "payloads", "limit": str(limit)}
        for name, value in (("end", None if end is None else _iso(end)), ("cursor", cursor),
                            ("request_id", request_id)):  # fmt: skip
            if value is not None:
                params[name] = value
        url = f"{self._provider.base_url}/models/requests/by-endpoint"
        response = self._send("history", "GET", url, timeout_s=self._options.result_timeout_s, params=params)
        data = self._success_body("history", response)
        items, next_cursor = data.get("items"), data.get("next_cursor")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise _invalid("the answer has no list of items", response.status_code)
        if not data.get("has_more", next_cursor is not None):
            return items, None
        if not isinstance(next_cursor, str) or not next_cursor or next_cursor == cursor:
            raise _invalid("it has more pages but gives no new cursor to them", response.status_code)
        return items, next_cursor

    def find(self, endpoint_id: str, digest: str, sent_at: float, until: float, taken: Callable[[str], bool],
             policy: ReconcilePolicy) -> Search:  # fmt: skip
        """Look for the request a job sent with input `digest` at `sent_at`, not `taken` by any job, among those
        that ended by `until` (when it can no longer be pending)."""
        cursor: str | None = None
        pages = blind = 0
        while pages < policy.pages_per_look:
            raw, cursor = self.page(endpoint_id, sent_at - policy.clock_skew_s, until, cursor, policy.page_size)
            pages += 1
            items = [item for item in map(_item, raw) if item is not None]
            blind += sum(item.input_digest is None for item in items)
            found = pick(items, digest, sent_at, taken, policy.clock_skew_s)
            if found is not None or cursor is None:
                return Search(found, True, blind, pages)
        return Search(None, False, blind, pages)

    def digest_of(self, endpoint_id: str, request_id: str, since: float) -> str | None:
        """The input digest fal's history lists for `request_id` (ended since `since`); None when not listed."""
        raw, _ = self.page(endpoint_id, since, None, None, limit=1, request_id=request_id)
        items = [item for item in map(_item, raw) if item is not None and item.request_id == request_id]
        return items[0].input_digest if items else None

    def _status_error(self, call: str, response: httpx.Response) -> QueueAPIError:
        """As the queue's, but a 5xx of the Platform API itself is an outage: asked again, like any."""
        error = super()._status_error(call, response)
        if response.status_code >= 500 and not error.retryable:
            return TransientQueueError(str(error), status_code=error.status_code, error_type=error.error_type,
                                       detail=error.detail, retry_after_s=error.retry_after_s)  # fmt: skip
        return error


def _item(raw: dict[str, Any]) -> HistoryItem | None:
    request_id = raw.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return None
    sent = _unix(raw.get("sent_at"))
    status_code = raw.get("status_code")
    listed = raw.get("json_input")
    try:  # an input that is not an object is not one a job sent as it was sent: it cannot be matched
        digest = input_digest(listed) if isinstance(listed, dict) else None
    except (ValueError, TypeError):  # not plain JSON (a NaN)
        digest = None
    return HistoryItem(request_id, str(raw.get("endpoint_id") or ""), digest, sent,
                       status_code if isinstance(status_code, int) else None)  # fmt: skip


def _invalid(what: str, status_code: int) -> PermanentQueueError:
    return PermanentQueueError(f"history: {what}", error_type="invalid_response", status_code=status_code)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat().replace("+00:00", "Z")


def _unix(value: Any) -> float | None:
    """An ISO 8601 time as Unix seconds (naive: UTC); None when missing or malformed."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
