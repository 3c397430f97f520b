"""What the runner did, kept as counters in Redis for `/metrics`: every worker and machine adds to the same ones.

Workers count as things happen (a submit, a call to fal, a job that ends, the
bytes of its outputs); a scrape then reads a few hashes, never a job.
Counting is best effort: a counter that Redis did not take is logged and
lost, never the step that counted it.
"""

from __future__ import annotations

import json
import logging
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

    def count(self, name: str, labels: Labels, by: int = 1) -> None:
        self._write(lambda pipe: pipe.hincrby(self.keys.metrics, _field(name, labels), by))

    def observe(self, name: str, labels: Labels, value_s: float) -> None:
        """Add one duration to histogram `name`."""
        bucket = next((str(b) for b in BUCKETS_S if value_s <= b), _INF)

        def write(pipe: redis.client.Pipeline) -> None:
            pipe.hincrby(self.keys.metric_histograms, _field(name, labels, bucket), 1)
            pipe.hincrbyfloat(self.keys.metric_histograms, _field(name, labels, "sum"), value_s)
            pipe.hincrby(self.keys.metric_histograms, _field(name, labels, "count"), 1)

        self._write(write)

    def moved(self, what: Move, record: JobRecord) -> None:
        """Count a job's move (`runner.steps.moves.move`, after it applied); `record` is the job after it."""
        endpoint = {"endpoint": record.job.endpoint}
        if what is Move.SEND:
            self.count("submits", {**endpoint, "attempt": "first" if record.attempts <= 1 else "retry"})
        elif what is Move.SUCCEED:
            self.count("jobs_succeeded", endpoint)
            self.count("outputs", endpoint, len(record.outputs))
            self.count("download_bytes", endpoint, sum(o.size_bytes for o in record.outputs))
            if record.queue_wait_s is not None:
                self.observe("queue_wait_seconds", endpoint, record.queue_wait_s)
            if record.run_s is not None:
                self.observe("run_seconds", endpoint, record.run_s)
        elif what is Move.FAIL:
            self.count("jobs_failed", {**endpoint, "error_type": record.error_type or "unknown"})
        elif what is Move.CANCEL:
            self.count("jobs_cancelled", endpoint)

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
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                write(pipe)
                pipe.execute()
        except redis.RedisError as exc:
            log.debug("a metric was not counted: %s", exc)


def _field(name: str, labels: Labels, *rest: str) -> str:
    return json.dumps([name, dict(sorted(labels.items())), *rest], separators=(",", ":"))
