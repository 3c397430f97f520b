"""The batch and its jobs in Redis: the source of truth every worker and command reads.

A job's status moves only through `Ledger.move`, atomically with the fields
that go with it (a request_id is stored in the same step that makes a job
QUEUED) and with the per-status counters, so progress is a constant-time
read. The in-flight window is a Redis set: `admit` fills free slots from the
waiting list, across every worker on every machine.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field

from jobs.job import Job
from jobs.record import JobRecord
from jobs.status import JobStatus
from runner.ledger import scripts as ledger_scripts
from runner.ledger.keys import Keys

_RECORD_FIELDS = frozenset(f.name for f in fields(JobRecord))
_RECENT_RUN_TIMES = 50
_CHUNK = 1000


class BatchInfo(BaseModel):
    """A batch's settings and state, as stored with it."""

    id: str
    manifest: str
    #: The batch's output folder, OUT/<batch>.
    folder: str
    created_at: float
    jobs: int = 0
    max_in_flight: int = Field(gt=0)
    max_attempts: int = Field(default=3, gt=0)
    #: "open" admits jobs; "cancelled" admits none.
    state: Literal["open", "cancelled"] = "open"
    #: Where requests go (the queue's base URL; never a credential).
    provider_url: str = ""
    auth_scheme: Literal["Key", "Bearer"] = "Key"
    priority: Literal["normal", "low"] | None = None
    #: `X-Fal-Request-Timeout`: fal gives up on a request not started by then.
    start_timeout_s: float | None = None
    #: Cap of a local image sent as a data URI.
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: The worker that ends the last job writes the report (batches nobody follows: submitted, scheduled).
    report_when_done: bool = False
    #: The schedule whose firing made this batch.
    schedule: str | None = None


class Ledger:
    """Batches and job records in one Redis; every method is one round trip or a pipeline."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self._transition = client.register_script(ledger_scripts.TRANSITION)
        self._admit = client.register_script(ledger_scripts.ADMIT)
        self._sync_job = client.register_script(ledger_scripts.SYNC_JOB)
        self._requeue = client.register_script(ledger_scripts.REQUEUE)
        self._claim_end = client.register_script(ledger_scripts.CLAIM_END)

    # --- batches -------------------------------------------------------------

    def save_batch(self, info: BatchInfo) -> None:
        mapping: dict[Any, str] = {name: json.dumps(value) for name, value in info.model_dump().items()}
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.batch(info.id), mapping=mapping)
            pipe.zadd(self.keys.batches, {info.id: info.created_at}, nx=True)
            pipe.execute()

    def batch(self, batch_id: str) -> BatchInfo | None:
        raw = self.redis.hgetall(self.keys.batch(batch_id))
        if not raw:
            return None
        return BatchInfo.model_validate({_text(k): json.loads(v) for k, v in raw.items()})

    def set_batch_state(self, batch_id: str, state: Literal["open", "cancelled"]) -> None:
        self.redis.hset(self.keys.batch(batch_id), "state", json.dumps(state))

    def claim_end(self, batch_id: str) -> bool:
        """True for exactly one caller once every job of the batch is final (again after a retry)."""
        keys = [self.keys.counts(batch_id), self.keys.ended(batch_id)]
        unfinished = json.dumps([s.value for s in JobStatus if not s.is_final])
        return bool(self._claim_end(keys=keys, args=[unfinished, json.dumps(time.time())]))

    def mark_reported(self, batch_id: str) -> None:
        """The ended batch's report (and a schedule's summary) are written."""
        self.redis.set(self.keys.reported(batch_id), json.dumps(time.time()))

    def reclaim_end(self, batch_id: str, stale_after_s: float) -> bool:
        """True (once per `stale_after_s`) when the batch's end was claimed that long ago and never reported.

        For the sweep: the task that was to write the report was lost.
        """
        claimed, reported = self.redis.mget([self.keys.ended(batch_id), self.keys.reported(batch_id)])
        if claimed is None or reported is not None or time.time() - float(claimed) < stale_after_s:
            return False
        return bool(self.redis.set(self.keys.ended(batch_id), json.dumps(time.time()), xx=True))

    def reopen(self, batch_id: str) -> None:
        """Jobs were put back in line: the batch will end again."""
        self.redis.delete(self.keys.ended(batch_id), self.keys.reported(batch_id))

    def batch_ids(self) -> list[str]:
        """Every batch, oldest first."""
        ids = cast(list[bytes | str], self.redis.zrange(self.keys.batches, 0, -1))
        return [_text(b) for b in ids]

    def sync_jobs(self, batch_id: str, jobs: Sequence[Job], now: float) -> Counter[str]:
        """Record a manifest's jobs, idempotently: how many were added, kept, changed, in flight."""
        outcome: Counter[str] = Counter()
        k = self.keys
        for start in range(0, len(jobs), _CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for job in jobs[start : start + _CHUNK]:
                    job_keys = [k.job(batch_id, job.id), k.counts(batch_id), k.job_order(batch_id), k.waiting(batch_id)]
                    args = [job.id, json.dumps(job.to_dict()), json.dumps(job.fingerprint), json.dumps(now)]
                    self._sync_job(keys=job_keys, args=args, client=pipe)
                outcome.update(_text(result) for result in pipe.execute())
        total = self.redis.llen(k.job_order(batch_id))
        self.redis.hset(k.batch(batch_id), "jobs", json.dumps(total))
        return outcome

    # --- jobs ----------------------------------------------------------------

    def counts(self, batch_id: str) -> dict[JobStatus, int]:
        raw = self.redis.hgetall(self.keys.counts(batch_id))
        found = {_text(k): int(v) for k, v in raw.items()}
        return {status: found.get(status.value, 0) for status in JobStatus}

    def record(self, batch_id: str, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(self.keys.job(batch_id, job_id))
        return _decode_record(raw) if raw else None

    def records(self, batch_id: str) -> Iterator[JobRecord]:
        """Every job of the batch in manifest order."""
        order = self.keys.job_order(batch_id)
        for start in range(0, self.redis.llen(order), _CHUNK):
            ids = [_text(i) for i in self.redis.lrange(order, start, start + _CHUNK - 1)]
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(batch_id, job_id))
                for raw in pipe.execute():
                    if raw:
                        yield _decode_record(raw)

    def move(
        self,
        batch_id: str,
        job_id: str,
        allowed: Iterable[JobStatus],
        to: JobStatus,
        *,
        release: bool = False,
        expect: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        """Set the job's status to `to` if it is one of `allowed` (empty: any), with `values`.

        With `expect`, also only if those fields still hold those values (the
        request_id and poll token a step saw), so a late step never undoes a
        newer attempt. Atomic with the counters and, with `release`, with
        freeing the job's slot. False when refused: the caller then does nothing.
        """
        keys = [self.keys.job(batch_id, job_id), self.keys.counts(batch_id), self.keys.in_flight(batch_id)]
        expected = {name: json.dumps(value) for name, value in (expect or {}).items()}
        statuses = json.dumps([s.value for s in allowed])
        args: list[str] = [job_id, "release" if release else "", statuses, to.value, json.dumps(expected)]
        for name, value in {**values, "updated_at": time.time()}.items():
            args += [name, json.dumps(value)]
        moved, _ = self._transition(keys=keys, args=args)
        return bool(moved)

    def requeue(self, batch_id: str, job_id: str, history: list[dict[str, Any]]) -> bool:
        """Put a failed or cancelled job back in line for a new attempt, keeping its history.

        A job that succeeded, or is not final, is left alone (False).
        """
        k = self.keys
        keys = [k.job(batch_id, job_id), k.counts(batch_id), k.waiting(batch_id)]
        fields = {"history": history, "request_id": None, "status_url": None, "response_url": None,
                  "cancel_url": None, "error_type": None, "error_message": None, "outputs": [],
                  "finished_at": None, "queue_position": None, "updated_at": time.time()}  # fmt: skip
        args = [job_id, *(part for name, value in fields.items() for part in (name, json.dumps(value)))]
        return bool(self._requeue(keys=keys, args=args))

    def next_poll_token(self, batch_id: str, job_id: str) -> int:
        """A new token for the job's poll chain; polls holding an older one stop."""
        return int(self.redis.hincrby(self.keys.job(batch_id, job_id), "poll_token", 1))

    def poll_token(self, batch_id: str, job_id: str) -> int:
        return int(self.redis.hget(self.keys.job(batch_id, job_id), "poll_token") or 0)

    def count_poll(self, batch_id: str, job_id: str) -> int:
        return int(self.redis.hincrby(self.keys.job(batch_id, job_id), "polls", 1))

    def admit(self, batch_id: str) -> list[str]:
        """Fill free slots of the in-flight window from the waiting list; the ids admitted."""
        k = self.keys
        keys = [k.batch(batch_id), k.in_flight(batch_id), k.waiting(batch_id), k.counts(batch_id)]
        return [_text(i) for i in self._admit(keys=keys, args=[k.job_prefix(batch_id)])]

    def in_flight(self, batch_id: str) -> int:
        return int(self.redis.scard(self.keys.in_flight(batch_id)))

    def note_run_time(self, batch_id: str, run_s: float) -> None:
        with self.redis.pipeline() as pipe:
            pipe.lpush(self.keys.run_times(batch_id), f"{run_s:.4f}")
            pipe.ltrim(self.keys.run_times(batch_id), 0, _RECENT_RUN_TIMES - 1)
            pipe.execute()

    def recent_run_times(self, batch_id: str) -> list[float]:
        return [float(v) for v in self.redis.lrange(self.keys.run_times(batch_id), 0, -1)]



def _decode_record(raw: dict[Any, Any]) -> JobRecord:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _text(key)
        if name == "status":
            values[name] = _text(value)
        elif name in _RECORD_FIELDS:
            values[name] = json.loads(value)
    return JobRecord.from_dict(values)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
