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

from jobs.errors import PermanentQueueError
from jobs.reconcile import HistoryItem, ReconcilePolicy, input_digest, pick
from runner.fal.queue_api import FalHttp

#: fal's Platform API, where a `FAL_KEY` batch looks for its lost submits unless told otherwise.
FAL_API_URL = "https://api.fal.ai/v1"
#: What `--api-url none` stores: the batch has no history to look in (its lost submits need a person).
NO_API = "none"
_PAGE_SIZE = 100


def api_url_for(stored: str | None, auth_scheme: Literal["Key", "Bearer"], fallback: str | None = None) -> str | None:
    """Where a batch's lost submits are looked for: what it stored, else the worker's `fallback`, else fal's
    own API for a fal key; None (nowhere) for `none` and for a gateway that named none."""
    chosen = stored or fallback
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

    def page(self, endpoint_id: str, start: float, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the endpoint's requests since `start` (Unix seconds), with payloads; and the next cursor."""
        params = {"endpoint_id": endpoint_id, "start": _iso(start), "expand": "payloads", "limit": str(_PAGE_SIZE)}
        if cursor is not None:
            params["cursor"] = cursor
        url = f"{self._provider.base_url}/models/requests/by-endpoint"
        response = self._send("history", "GET", url, timeout_s=self._options.result_timeout_s, params=params)
        data = self._success_body("history", response)
        items = data.get("items")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise PermanentQueueError("history: the answer has no list of items", error_type="invalid_response",
                                      status_code=response.status_code)  # fmt: skip
        next_cursor = data.get("next_cursor")
        more = data.get("has_more", next_cursor is not None) and isinstance(next_cursor, str) and next_cursor
        return items, next_cursor if more else None

    def find(self, endpoint_id: str, digest: str, sent_at: float, taken: Callable[[str], bool],
             policy: ReconcilePolicy) -> Search:  # fmt: skip
        """Look for the request a job sent with input `digest` at `sent_at`, not `taken` by any job."""
        cursor: str | None = None
        pages = blind = 0
        while pages < policy.pages_per_look:
            raw, cursor = self.page(endpoint_id, sent_at - policy.clock_skew_s, cursor)
            pages += 1
            items = [item for item in map(_item, raw) if item is not None]
            blind += sum(item.input_digest is None for item in items)
            found = pick(items, digest, sent_at, taken, policy.clock_skew_s)
            if found is not None or cursor is None:
                return Search(found, True, blind, pages)
        return Search(None, False, blind, pages)


def _item(raw: dict[str, Any]) -> HistoryItem | None:
    request_id = raw.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return None
    sent = _unix(raw.get("sent_at"))
    status_code = raw.get("status_code")
    try:
        digest = input_digest(raw["json_input"]) if raw.get("json_input") is not None else None
    except (ValueError, TypeError):  # not plain JSON (a NaN): no job of ours sent it
        digest = None
    return HistoryItem(request_id, str(raw.get("endpoint_id") or ""), digest, sent,
                       status_code if isinstance(status_code, int) else None)  # fmt: skip


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
