"""What the ledger keeps of a batch beside its jobs: its cost cap and spend, its summary, rows skipped as invalid,
endpoints fal said it has no app for, how its cancel ended, and its recent run times.

`runner.ledger.store.Ledger` is one of these; every method is one round trip or a pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from runner.ledger.keys import Keys

_RECENT_RUN_TIMES = 50


class BatchRecords:
    """A batch's records beside its jobs, in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def set_cost_cap(self, batch_id: str, cap_nusd: int | None) -> None:
        """Set (None: remove) the batch's cost cap, leaving the rest of it as workers change it."""
        if cap_nusd is None:
            self.redis.hdel(self.keys.batch(batch_id), "max_cost_nusd")
        else:
            self.redis.hset(self.keys.batch(batch_id), "max_cost_nusd", json.dumps(cap_nusd))

    def set_batch_summary(self, batch_id: str, summary: dict[str, Any]) -> None:
        self.redis.hset(self.keys.batch(batch_id), "summary", json.dumps(summary))

    def spent_nusd(self, batch_id: str) -> int:
        """The estimated cost charged so far for the batch's attempts that fal may bill (nano-dollars)."""
        return int(self.redis.get(self.keys.spent(batch_id)) or 0)

    def note_run_time(self, batch_id: str, run_s: float) -> None:
        with self.redis.pipeline() as pipe:
            pipe.lpush(self.keys.run_times(batch_id), f"{run_s:.4f}")
            pipe.ltrim(self.keys.run_times(batch_id), 0, _RECENT_RUN_TIMES - 1)
            pipe.zadd(self.keys.longest_run(batch_id), {"run_s": run_s}, gt=True)
            pipe.execute()

    def longest_run_s(self, batch_id: str) -> float | None:
        """The longest run the batch has seen, or None before its first."""
        found = self.redis.zscore(self.keys.longest_run(batch_id), "run_s")
        return None if found is None else float(found)

    def save_skipped(self, batch_id: str, errors: Sequence[dict[str, Any]]) -> None:
        """Keep the errors of the rows the latest run of the batch skipped as invalid (replacing earlier ones)."""
        by_line: dict[str, list[dict[str, Any]]] = {}
        for error in errors:  # one of the whole file (no line) is no row
            if error.get("line") is not None:
                by_line.setdefault(str(error["line"]), []).append(error)
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.skipped(batch_id))
            if by_line:
                pipe.hset(self.keys.skipped(batch_id), mapping={k: json.dumps(v) for k, v in by_line.items()})
            pipe.execute()

    def skipped(self, batch_id: str) -> list[list[dict[str, Any]]]:
        """The errors of each row skipped as invalid, in manifest order."""
        found = self.redis.hgetall(self.keys.skipped(batch_id))
        rows = [json.loads(errors) for errors in found.values()]
        return sorted(rows, key=lambda errors: (errors[0].get("line") is None, errors[0].get("line") or 0))

    def note_unknown_endpoint(self, batch_id: str, endpoint: str, message: str) -> None:
        self.redis.hsetnx(self.keys.unknown_endpoints(batch_id), endpoint, message)

    def forget_unknown_endpoints(self, batch_id: str) -> None:
        """Ask fal again (a retry, a rerun): the app may exist now, or the 404 came from a proxy."""
        self.redis.delete(self.keys.unknown_endpoints(batch_id))

    def unknown_endpoint(self, batch_id: str, endpoint: str) -> str | None:
        """Why fal said it has no app for `endpoint` (a 404 to a submit of this batch), or None."""
        found = self.redis.hget(self.keys.unknown_endpoints(batch_id), endpoint)
        return None if found is None else _text(found)

    def tallies(self, batch_id: str) -> dict[str, int]:
        """How the batch's latest cancel ended for its jobs so far (see `runner.batches.operations.cancel_batch`)."""
        return {_text(k): int(v) for k, v in self.redis.hgetall(self.keys.tallies(batch_id)).items()}

    def reset_tallies(self, batch_id: str) -> None:
        self.redis.delete(self.keys.tallies(batch_id))

    def recent_run_times(self, batch_id: str) -> list[float]:
        return [float(v) for v in self.redis.lrange(self.keys.run_times(batch_id), 0, -1)]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
