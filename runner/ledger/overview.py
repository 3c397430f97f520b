"""Every batch at a glance, in one round trip to Redis, and a batch's recent pace: what the dashboard's list
and `/metrics` read."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.status import FINAL, JobStatus
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Ledger, decode_batch, decode_counts, decode_failures


@dataclass(frozen=True)
class BatchOverview:
    """A batch's settings and counters: jobs per status, failed jobs per error type, jobs holding a slot, and the
    estimated cost charged so far (nano-dollars)."""

    info: BatchInfo
    counts: dict[JobStatus, int]
    failures: dict[str, int]
    in_flight: int
    spent_nusd: int


def overviews(ledger: Ledger) -> list[BatchOverview]:
    """Every batch, oldest first: five counters each, read in one pipeline (no job is read)."""
    batch_ids = ledger.batch_ids()
    keys = ledger.keys
    with ledger.redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hgetall(keys.batch(batch_id))
            pipe.hgetall(keys.counts(batch_id))
            pipe.hgetall(keys.errors(batch_id))
            pipe.scard(keys.in_flight(batch_id))
            pipe.get(keys.spent(batch_id))
        found = pipe.execute()
    seen = []
    for n in range(len(batch_ids)):
        raw_info, raw_counts, raw_errors, in_flight, spent = found[5 * n : 5 * n + 5]
        info = decode_batch(raw_info)
        if info is not None:  # purged meanwhile
            seen.append(BatchOverview(info, decode_counts(raw_counts), decode_failures(raw_errors), int(in_flight),
                                      int(spent or 0)))  # fmt: skip
    return seen


def ended_since(ledger: Ledger, batch_id: str, since: float) -> tuple[int, float | None]:
    """How many jobs ended (a final status) at `since` or later, and when the first of them did (None: none);
    read from the status indexes, no job read."""
    with ledger.redis.pipeline(transaction=False) as pipe:
        for status in FINAL:
            index = ledger.keys.status_index(batch_id, status.value)
            pipe.zcount(index, since, "+inf")
            pipe.zrangebyscore(index, since, "+inf", start=0, num=1, withscores=True)
        found = pipe.execute()
    firsts = [float(first[0][1]) for first in found[1::2] if first]
    return sum(int(n) for n in found[0::2]), min(firsts, default=None)
