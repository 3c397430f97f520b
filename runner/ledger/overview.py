"""Every batch at a glance, in one round trip to Redis: what the dashboard's list and `/metrics` read."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.status import JobStatus
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Ledger, decode_batch, decode_counts, decode_failures


@dataclass(frozen=True)
class BatchOverview:
    """A batch's settings and counters: jobs per status, failed jobs per error type, jobs holding a slot."""

    info: BatchInfo
    counts: dict[JobStatus, int]
    failures: dict[str, int]
    in_flight: int


def overviews(ledger: Ledger) -> list[BatchOverview]:
    """Every batch, oldest first: four counters each, read in one pipeline (no job is read)."""
    batch_ids = ledger.batch_ids()
    keys = ledger.keys
    with ledger.redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hgetall(keys.batch(batch_id))
            pipe.hgetall(keys.counts(batch_id))
            pipe.hgetall(keys.errors(batch_id))
            pipe.scard(keys.in_flight(batch_id))
        found = pipe.execute()
    seen = []
    for n in range(len(batch_ids)):
        raw_info, raw_counts, raw_errors, in_flight = found[4 * n : 4 * n + 4]
        info = decode_batch(raw_info)
        if info is not None:  # purged meanwhile
            seen.append(BatchOverview(info, decode_counts(raw_counts), decode_failures(raw_errors), int(in_flight)))
    return seen
