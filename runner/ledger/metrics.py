"""What the runner did, kept as counters in Redis for `/metrics`: every worker and machine adds to the same ones.

Workers count as things happen (a request fal accepted, a call to fal, a job
that ends, the bytes of its outputs); a scrape then reads a few hashes, never
a job. Calls to fal are counted in memory and written with the next move of a
job, so nothing is written between fal's answer and the move that stores it.
Counting is best effort: a counter that Redis did not take is logged and lost,
never the step that counted it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import redis

from jobs.lifecycle import Move
from jobs.record import JobRecord
from runner.ledger.keys import Keys

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the duration histograms' buckets: a fal queue wait or run takes seconds to an hour.
BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_INF = "+Inf"
Labels = Mapping[str, str]


@dataclass
class Histogram:
    """One histogram as read back: counts per bucket (not cumulative; `+Inf` last), their sum and count."""

    buckets: dict[str, int] = field(default_factory=lambda: {**{str(b): 0 for b in BUCKETS_S}, _INF: 0})
    sum: float = 0.0
    count: int = 0

    def cumulative(self) -> list[tuple[str, int]]:
        """`(upper bound, observations at or below it)` in order, as Prometheus exposes them."""
        total, rows = 0, []
        for bound, n in self.buckets.items():
            total += n
            rows.append((bound, total))
        return rows


class Metrics:
    """The counters and histograms of one deployment (a key prefix) in its Redis."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, name: str, labels: Labels, by: int = 1) -> None:
        self._write(lambda pipe: pipe.hincrby(self.keys.metrics, _field(name, labels), by))

    def count_later(self, name: str, labels: Labels) -> None:
        """Count in memory now; written with the next `moved` (or `flush`)."""
        with self._lock:
            self._pending[_field(name, labels)] += 1

    def flush(self) -> None:
        self._write(lambda _pipe: None)

    def moved(self, what: Move, record: JobRecord) -> None:
        """Count a job's move (`runner.steps.moves.move`, after it applied), and what was counted for later, in one
        write; `record` is the job after the move."""
        endpoint = {"endpoint": record.job.endpoint}
        counts: list[tuple[str, Labels, int]] = []
        durations: list[tuple[str, float | None]] = []
        if what in (Move.ACCEPT, Move.ADOPT):  # fal has it (an answer, or its history): a request that may be billed
            counts.append(("submits", {**endpoint, "attempt": "first" if record.attempts <= 1 else "retry"}, 1))
        elif what is Move.SUCCEED:
            counts += [("jobs_succeeded", endpoint, 1), ("outputs", endpoint, len(record.outputs)),
                       ("download_bytes", endpoint, sum(o.size_bytes for o in record.outputs))]  # fmt: skip
            durations += [("queue_wait_seconds", record.queue_wait_s), ("run_seconds", record.run_s)]
        elif what in (Move.FAIL, Move.REFUSED):
            counts.append(("jobs_failed", {**endpoint, "error_type": record.error_type or "unknown"}, 1))
        elif what is Move.CANCEL:
            counts.append(("jobs_cancelled", endpoint, 1))

        def write(pipe: redis.client.Pipeline) -> None:
            for name, labels, by in counts:
                pipe.hincrby(self.keys.metrics, _field(name, labels), by)
            for name, value_s in durations:
                if value_s is not None:
                    self._observe(pipe, name, endpoint, value_s)

        self._write(write)

    def observe(self, name: str, labels: Labels, value_s: float) -> None:
        """Add one duration to histogram `name`."""
        self._write(lambda pipe: self._observe(pipe, name, labels, value_s))

    def _observe(self, pipe: redis.client.Pipeline, name: str, labels: Labels, value_s: float) -> None:
        bucket = next((str(b) for b in BUCKETS_S if value_s <= b), _INF)
        pipe.hincrby(self.keys.metric_histograms, _field(name, labels, bucket), 1)
        pipe.hincrbyfloat(self.keys.metric_histograms, _field(name, labels, "sum"), value_s)
        pipe.hincrby(self.keys.metric_histograms, _field(name, labels, "count"), 1)

    def counters(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every counter: `(name, labels, value)`."""
        for raw, value in self.redis.hgetall(self.keys.metrics).items():
            name, labels = json.loads(raw)
            yield name, labels, float(value)

    def histograms(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], Histogram]:
        """Every histogram by `(name, sorted labels)`."""
        found: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}
        for raw, value in self.redis.hgetall(self.keys.metric_histograms).items():
            name, labels, part = json.loads(raw)
            histogram = found.setdefault((name, tuple(sorted(labels.items()))), Histogram())
            if part == "sum":
                histogram.sum = float(value)
            elif part == "count":
                histogram.count = int(value)
            elif part in histogram.buckets:
                histogram.buckets[part] = int(value)
        return found

    def _write(self, write: Callable[[redis.client.Pipeline], object]) -> None:
        """One round trip: `write`'s commands and the counts kept for later (lost with them if Redis refuses)."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for field_name, by in pending.items():
                    pipe.hincrby(self.keys.metrics, field_name, by)
                write(pipe)
                if len(pipe):
                    pipe.execute()
        except redis.RedisError as exc:
            log.debug("metrics not counted: %s", exc)


def _field(name: str, labels: Labels, *rest: str) -> str:
    return json.dumps([name, dict(sorted(labels.items())), *rest], separators=(",", ":"))
