"""Counts of the calls the simulator answered and the faults it injected, for /_stats."""

from __future__ import annotations

import hashlib
import json
import threading
from enum import Enum
from typing import Any

from runner.simulator.faults import FaultKind


class Counter(str, Enum):
    """A count of calls (or of their bytes) in /_stats; a call lost to an injected fault is not counted here."""

    #: Requests created (a lost_submit_response submit counts: it was created).
    SUBMITS = "submits"
    #: Status calls answered.
    STATUS_POLLS = "status_polls"
    #: Result calls answered (any status code).
    RESULT_FETCHES = "result_fetches"
    #: Output file downloads started (truncated and slow ones too).
    DOWNLOADS = "downloads"
    #: Cancel calls answered.
    CANCELS = "cancels"
    #: Request history calls (Platform API) answered, refused queries too.
    HISTORY_CALLS = "history_calls"
    #: Pricing calls (Platform API: price lists and estimates) answered, refused ones too.
    PRICING_CALLS = "pricing_calls"
    #: Bytes of the bodies of submits that created a request.
    SUBMIT_BYTES = "submit_bytes"
    #: Submits that created a request whose JSON body holds a string value starting with `data:`.
    SUBMITS_WITH_DATA_URI = "submits_with_data_uri"
    #: Storage tokens issued.
    STORAGE_TOKENS = "storage_tokens"
    #: Files stored by uploads.
    UPLOADS = "uploads"
    #: Bytes of the files stored by uploads.
    UPLOAD_BYTES = "upload_bytes"
    #: Uploaded files served (a GET answered 200; the simulator's own fetches of input images too).
    STORAGE_FETCHES = "storage_fetches"
    #: Webhook deliveries tried (each try, answered or not).
    WEBHOOKS_SENT = "webhooks_sent"


def input_key(endpoint: str, body: Any) -> str:
    """sha256 of the canonical JSON of {"endpoint", "input"}: the same job submitted twice."""
    canonical = json.dumps({"endpoint": endpoint, "input": body}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def holds_data_uri(value: Any) -> bool:
    """Whether a JSON value holds, at any depth, a string that starts with `data:` (dict keys aside)."""
    if isinstance(value, str):
        return value.startswith("data:")
    if isinstance(value, dict):
        return any(holds_data_uri(item) for item in value.values())
    if isinstance(value, list):
        return any(holds_data_uri(item) for item in value)
    return False


class Stats:
    """Thread-safe counters; `reset` zeroes them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(Counter, 0)
        self._per_input: dict[str, int] = {}
        self._faults = dict.fromkeys(FaultKind, 0)

    def count(self, counter: Counter, amount: int = 1) -> None:
        with self._lock:
            self._counts[counter] += amount

    def count_submit(self, endpoint: str, body: Any, size_bytes: int) -> None:
        """A submit that created a request: its parsed JSON body, and the size of that body as sent."""
        key = input_key(endpoint, body)
        with_data_uri = holds_data_uri(body)
        with self._lock:
            self._counts[Counter.SUBMITS] += 1
            self._counts[Counter.SUBMIT_BYTES] += size_bytes
            self._counts[Counter.SUBMITS_WITH_DATA_URI] += with_data_uri
            self._per_input[key] = self._per_input.get(key, 0) + 1

    def count_fault(self, kind: FaultKind) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = {counter.value: value for counter, value in self._counts.items()}
            return {
                **counts,
                "submits_per_input": dict(self._per_input),
                "duplicate_submits": sum(n - 1 for n in self._per_input.values()),
                "faults": {kind.value: value for kind, value in self._faults.items()},
            }

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(Counter, 0)
            self._per_input = {}
            self._faults = dict.fromkeys(FaultKind, 0)
