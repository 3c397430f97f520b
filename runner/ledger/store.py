"""The batch and its jobs in Redis: the source of truth every worker and command reads.

A job changes only through `Ledger.apply`, which applies one move of
`jobs.lifecycle` atomically (the `APPLY` script) with everything that
depends on it: the per-status counters and indexes, the count of failures
by error type, the in-flight window, the request_id index, the job's next
step in the timers, and the end of its batch. A move is applied only to the
revision of the job its mover read, so a late step never undoes a newer one.
Progress, `status`, `cancel`, `retry` and the sweep read counters and
indexes, never every job; only reports read every job.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, Literal, cast

import redis

from jobs.errors import IllegalMoveError
from jobs.job import Job
from jobs.lifecycle import Guard, JobUpdate, Move, Plan, Slot
from jobs.record import JobRecord
from jobs.status import ACTIVE, JobStatus
from runner.ledger import scripts
from runner.ledger.batch_info import BatchInfo
from runner.ledger.batch_records import BatchRecords
from runner.ledger.keys import Keys
from runner.ledger.timers import Timer

S = JobStatus
_RECORD_FIELDS = frozenset(f.name for f in fields(JobRecord))
#: Fields of a record kept in side hashes of the batch (`Keys.side`), not in the job's own hash: the long
#: ones. The job's hash then holds only short values, which Redis packs (a listpack) at a fraction of the
#: memory of a hash table; a side hash holds a job's entry only while it has a value.
_SIDE = ("job", "outputs", "history", "reconciled", "error_message", "last_log", "status_url", "response_url",
         "cancel_url")
_URLS = ("status_url", "response_url", "cancel_url")
#: The fields of the job's own hash that hold JSON (`status` is its name, `fingerprint` hex, `applied_by` a token).
_JSON_FIELDS = _RECORD_FIELDS - {"status", "job", *_SIDE}
_CHUNK = 1000
#: What a job recorded again with a new input starts from: every field a move sets, at its default, but what it
#: was charged (spent is spent: the batch's spend and the report keep agreeing).
_RESET: dict[str, Any] = {
    f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
    for f in fields(JobRecord)
    if f.name in JobUpdate.__dataclass_fields__ and f.name not in ("queued_at", "charged_nusd")
}

@dataclass(frozen=True)
class Applied:
    """A move that was applied."""

    #: The job after the move.
    record: JobRecord
    #: Jobs that the slot it freed admitted; their submits are due now.
    admitted: list[str]


@dataclass(frozen=True)
class OverBudget:
    """A move refused because its charge would pass the batch's cost cap (`--max-cost`)."""

    spent_nusd: int
    cap_nusd: int


class Ledger(BatchRecords):
    """Batches and job records in one Redis; every method is one round trip or a pipeline."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        super().__init__(client, keys or Keys())
        self._apply = client.register_script(scripts.APPLY)
        self._admit = client.register_script(scripts.ADMIT)
        self._record = client.register_script(scripts.RECORD)

    # --- batches -------------------------------------------------------------

    def save_batch(self, info: BatchInfo) -> None:
        values = info.model_dump()
        mapping: dict[Any, str] = {name: json.dumps(value) for name, value in values.items() if value is not None}
        unset = [name for name, value in values.items() if value is None]
        with self.redis.pipeline() as pipe:
            if unset:
                pipe.hdel(self.keys.batch(info.id), *unset)
            pipe.hset(self.keys.batch(info.id), mapping=mapping)
            pipe.zadd(self.keys.batches, {info.id: info.created_at}, nx=True)
            pipe.execute()

    def batch(self, batch_id: str) -> BatchInfo | None:
        return decode_batch(self.redis.hgetall(self.keys.batch(batch_id)))

    def set_batch_state(self, batch_id: str, state: Literal["open", "cancelled"]) -> None:
        self.redis.hset(self.keys.batch(batch_id), "state", json.dumps(state))

    def batch_ids(self) -> list[str]:
        """Every batch, oldest first."""
        ids = cast(list[bytes | str], self.redis.zrange(self.keys.batches, 0, -1))
        return [_text(b) for b in ids]

    def sync_jobs(self, batch_id: str, jobs: Sequence[Job], now: float) -> Counter[str]:
        """Record a manifest's jobs, idempotently: how many were added, kept, changed, in flight."""
        outcome: Counter[str] = Counter()
        jobs = self._claim_names(batch_id, jobs)
        context = self._context(batch_id, now)
        context["in_flight_statuses"] = sorted(s.value for s in ACTIVE)  # fal may have a request of these
        context["reset"] = {name: _stored(value) for name, value in _RESET.items()}
        for start in range(0, len(jobs), _CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for job in jobs[start : start + _CHUNK]:
                    stored = {k: v for k, v in job.to_dict().items() if k != "fingerprint"}  # it has its own field
                    args = {**context, "job_id": job.id, "job": json.dumps(stored), "fingerprint": job.fingerprint}
                    keys = [self.keys.job(batch_id, job.id), self.keys.job_order(batch_id)]
                    self._record(keys=keys, args=[json.dumps(args)], client=pipe)
                outcome.update(_text(result) for result in pipe.execute())
        total = self.redis.llen(self.keys.job_order(batch_id))
        self.redis.hset(self.keys.batch(batch_id), "jobs", json.dumps(total))
        return outcome

    def _claim_names(self, batch_id: str, jobs: Sequence[Job]) -> list[Job]:
        """The jobs, each named as given unless another job of the batch holds that name (then by its id): a
        rerun of an edited manifest never writes over the files of a job it no longer names."""
        key, holders = self.keys.names(batch_id), dict[str, bytes]()
        named = [job for job in jobs if job.name]
        for start in range(0, len(named), _CHUNK):
            chunk = named[start : start + _CHUNK]
            with self.redis.pipeline(transaction=False) as pipe:
                for job in chunk:
                    pipe.hsetnx(key, job.name, job.id)
                pipe.hmget(key, [job.name for job in chunk])
                found = pipe.execute()[-1]
            holders.update(zip((job.name for job in chunk), found, strict=True))
        return [replace(job, name="") if job.name and holders[job.name] != job.id.encode() else job for job in jobs]

    # --- jobs ----------------------------------------------------------------

    def counts(self, batch_id: str) -> dict[JobStatus, int]:
        return decode_counts(self.redis.hgetall(self.keys.counts(batch_id)))

    def failures_by_type(self, batch_id: str) -> dict[str, int]:
        """Failed jobs per error type, most first (kept by every move: no job is read)."""
        return decode_failures(self.redis.hgetall(self.keys.errors(batch_id)))

    def record(self, batch_id: str, job_id: str) -> JobRecord | None:
        return next(self._load(batch_id, [job_id]), None)

    def records(self, batch_id: str) -> Iterator[JobRecord]:
        """Every job of the batch in manifest order (for reports: the one full read)."""
        order = self.keys.job_order(batch_id)
        for start in range(0, self.redis.llen(order), _CHUNK):
            ids = [_text(i) for i in self.redis.lrange(order, start, start + _CHUNK - 1)]
            yield from self._load(batch_id, ids)

    def job_ids(self, batch_id: str, statuses: Iterable[JobStatus], changed_before: float | None = None,
                latest: int | None = None) -> list[str]:  # fmt: skip
        """Ids of the jobs in `statuses`, from the per-status indexes, oldest change first.

        `changed_before` keeps those unchanged since then; `latest` keeps only the newest that many.
        """
        scored: list[tuple[float, str]] = []
        with self.redis.pipeline(transaction=False) as pipe:
            for status in statuses:
                index = self.keys.status_index(batch_id, status.value)
                if latest is not None:
                    pipe.zrevrange(index, 0, latest - 1, withscores=True)
                else:
                    pipe.zrangebyscore(index, "-inf", "+inf" if changed_before is None else f"({changed_before}",
                                       withscores=True)  # fmt: skip
            for found in pipe.execute():
                scored += [(float(score), _text(member)) for member, score in found]
        scored.sort()
        if latest is not None:
            scored = scored[-latest:]
        return [job_id for _, job_id in scored]

    def records_with(self, batch_id: str, statuses: Iterable[JobStatus], changed_before: float | None = None,
                     latest: int | None = None) -> list[JobRecord]:  # fmt: skip
        """The jobs in `statuses` (see `job_ids`), read from the indexes."""
        return list(self._load(batch_id, self.job_ids(batch_id, statuses, changed_before, latest)))

    def apply(self, batch_id: str, plan: Plan, due_at: float | None = None, keep_claim: str = "",
              lease_until: float = 0.0, tally: str = "") -> Applied | OverBudget | None:  # fmt: skip
        """Apply `plan` if the job is still at the status and revision it was planned from; None if not, and
        OverBudget if its charge would pass the batch's cost cap.

        Its next step (if its new status has one) is due at `due_at` (default:
        now); `keep_claim`, the mark of the worker that runs that step at once,
        keeps it held by that worker until `lease_until`, and the move is then
        applied only while that worker still holds the job's step. A request found in fal's history
        is adopted only if no other job holds it. `tally` names a count of the
        batch's tallies the move adds one to, in the same step (how a cancel ended). Raises
        IllegalMoveError for a move guarded otherwise than by the job's revision.
        """
        if plan.guard is not Guard.AS_SEEN:  # admitted by `admit`, recorded by `sync_jobs`
            raise IllegalMoveError(f"{plan.move.value} is not applied one job at a time")
        now = plan.record.updated_at or time.time()
        record = plan.record
        token = secrets.token_hex(8)
        context = self._context(batch_id, now)
        context.update(
            job_id=record.job.id, **{"from": plan.source.value}, to=plan.target.value,
            revision=str(plan.revision), token=token,
            fields={**self._stored_fields(batch_id, plan), "applied_by": token},
            slot=plan.slot.value, requeue=plan.target is S.WAITING, final=plan.target.is_final,
            error_type=json.dumps(record.error_type),
            request_id=(record.request_id or "") if "request_id" in plan.fields else "",
            request_value=json.dumps([batch_id, record.job.id]),
            due_at=-1 if plan.step is None else (now if due_at is None else due_at),
            keep_claim=keep_claim, lease_until=lease_until, tally=tally, exclusive=plan.move is Move.ADOPT,
            charge=str(plan.charge_nusd), spent=self.keys.spent(batch_id),
        )  # fmt: skip
        answer = self._apply(keys=[self.keys.job(batch_id, record.job.id)], args=[json.dumps(context)])
        if not answer[0]:
            if len(answer) > 2 and _text(answer[2]) == "over_budget":
                return OverBudget(int(_text(answer[3])), int(_text(answer[4])))
            return None
        frees = plan.slot is Slot.RELEASE or plan.target is S.WAITING
        admitted = [_text(job_id) for job_id in answer[2]] if frees else []
        return Applied(record, admitted)

    def admit(self, batch_id: str) -> list[str]:
        """Fill free slots of the in-flight window from the waiting list, each with its submit due now.

        Also ends the batch if nothing is left to do. Returns the ids admitted.
        """
        admitted, _ = self._admit(keys=[], args=[json.dumps(self._context(batch_id, time.time()))])
        return [_text(i) for i in admitted]

    def in_flight(self, batch_id: str) -> int:
        return int(self.redis.scard(self.keys.in_flight(batch_id)))

    def job_for_request(self, request_id: str) -> tuple[str, str] | None:
        """The batch and job that hold fal's `request_id` (any of their attempts), or None."""
        raw = self.redis.hget(self.keys.requests, request_id)
        if raw is None:
            return None
        batch_id, job_id = json.loads(raw)
        return batch_id, job_id

    def _stored_fields(self, batch_id: str, plan: Plan) -> dict[str, str]:
        """The plan's fields as stored; a request's URLs are left out when they follow from its request_id."""
        stored = {name: _stored(value) for name, value in plan.fields.items()}
        record = plan.record
        urls = (record.status_url, record.response_url, record.cancel_url)
        if record.request_id and record.response_url and any(name in plan.fields for name in _URLS):
            base = record.response_url.removesuffix(record.request_id)
            derived = (f"{record.response_url}/status", record.response_url, f"{record.response_url}/cancel")
            if base != record.response_url and urls == derived and self._same_base(batch_id, record.job.endpoint, base):
                stored.update(dict.fromkeys(_URLS, "null"))
        return stored

    def _same_base(self, batch_id: str, endpoint: str, base: str) -> bool:
        """Whether `base` is the one kept for the endpoint's requests (the first one seen is kept)."""
        key = self.keys.request_bases(batch_id)
        return bool(self.redis.hsetnx(key, endpoint, base)) or _text(self.redis.hget(key, endpoint) or b"") == base

    # --- purge -----------------------------------------------------------------

    def purge(self, batch_id: str) -> int:
        """Remove the batch and every job of it from Redis (never a file); the number of jobs it had."""
        k = self.keys
        job_ids = [_text(i) for i in self.redis.lrange(k.job_order(batch_id), 0, -1)]
        for start in range(0, len(job_ids), _CHUNK):
            chunk = job_ids[start : start + _CHUNK]
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hget(k.job(batch_id, job_id), "request_id")
                    pipe.hget(k.side(batch_id, "history"), job_id)
                found = pipe.execute()
                requests = [rid for n in range(0, len(found), 2) for rid in _request_ids(found[n], found[n + 1])]
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*(k.job(batch_id, job_id) for job_id in chunk))
                if requests:
                    pipe.hdel(k.requests, *requests)
                members = [Timer.step(batch_id, job_id).member for job_id in chunk]
                pipe.zrem(k.timers, *members)
                pipe.hdel(k.timer_claims, *members)
                pipe.hdel(k.timer_tries, *members)
                pipe.execute()
        batch_timers = [Timer.end(batch_id).member, Timer.batch_notify(batch_id).member]
        with self.redis.pipeline() as pipe:
            pipe.delete(k.batch(batch_id), k.counts(batch_id), k.errors(batch_id), k.job_order(batch_id),
                        k.waiting(batch_id), k.in_flight(batch_id), k.run_times(batch_id), k.request_bases(batch_id),
                        k.tallies(batch_id), k.longest_run(batch_id), k.skipped(batch_id),
                        k.unknown_endpoints(batch_id), k.images(batch_id), k.names(batch_id), k.spent(batch_id),
                        *(k.status_index(batch_id, s.value) for s in JobStatus),
                        *(k.side(batch_id, name) for name in _SIDE))  # fmt: skip
            pipe.zrem(k.timers, *batch_timers)
            pipe.hdel(k.timer_claims, *batch_timers)
            pipe.hdel(k.timer_tries, *batch_timers)
            pipe.zrem(k.batches, batch_id)
            pipe.execute()
        return len(job_ids)

    # --- inside ----------------------------------------------------------------

    def _load(self, batch_id: str, job_ids: list[str]) -> Iterator[JobRecord]:
        bases: dict[str, str] | None = None
        for start in range(0, len(job_ids), _CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids[start : start + _CHUNK]:
                    pipe.hgetall(self.keys.job(batch_id, job_id))
                    for name in _SIDE:
                        pipe.hget(self.keys.side(batch_id, name), job_id)
                found = pipe.execute()
            step = 1 + len(_SIDE)
            for n in range(0, len(found), step):
                raw, side = found[n], dict(zip(_SIDE, found[n + 1 : n + step], strict=True))
                if not raw or side["job"] is None:
                    continue
                if bases is None:
                    found_bases = self.redis.hgetall(self.keys.request_bases(batch_id))
                    bases = {_text(endpoint): _text(base) for endpoint, base in found_bases.items()}
                yield _decode_record(raw, side, bases)

    def _context(self, batch_id: str, now: float) -> dict[str, Any]:
        """What every job script gets (see `scripts.LIBRARY`): names of keys and statuses, and the time."""
        k = self.keys
        return {
            "batch": k.batch(batch_id), "counts": k.counts(batch_id), "errors": k.errors(batch_id),
            "in_flight": k.in_flight(batch_id), "waiting": k.waiting(batch_id), "timers": k.timers,
            "claims": k.timer_claims, "requests": k.requests, "index_prefix": k.status_index_prefix(batch_id),
            "job_prefix": k.job_prefix(batch_id), "step_prefix": Timer.step_prefix(batch_id),
            "end_member": Timer.end(batch_id).member, "tallies": k.tallies(batch_id),
            "failed": S.FAILED.value, "waiting_status": S.WAITING.value,
            "side": dict.fromkeys(_SIDE, True), "side_prefix": k.side_prefix(batch_id),
            "admitted_status": S.ADMITTED.value, "unfinished": [s.value for s in JobStatus if not s.is_final],
            "open_state": json.dumps("open"), "done_state": json.dumps("done"),
            "cancelled_state": json.dumps("cancelled"), "now": now,
            "now_json": json.dumps(now),
        }  # fmt: skip


def decode_batch(raw: dict[Any, Any]) -> BatchInfo | None:
    """A batch's hash as stored (None: no such batch)."""
    if not raw:
        return None
    return BatchInfo.model_validate({"ledger_format": 1} | {_text(k): json.loads(v) for k, v in raw.items()})


def decode_counts(raw: dict[Any, Any]) -> dict[JobStatus, int]:
    found = {_text(k): int(v) for k, v in raw.items()}
    return {status: found.get(status.value, 0) for status in JobStatus}


def decode_failures(raw: dict[Any, Any]) -> dict[str, int]:
    found = {json.loads(k) or "unknown": int(v) for k, v in raw.items() if int(v) > 0}
    return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))


def _decode_record(raw: dict[Any, Any], side: dict[str, Any], bases: dict[str, str]) -> JobRecord:
    stored = {_text(key): value for key, value in raw.items()}
    values: dict[str, Any] = {name: json.loads(v) for name, v in stored.items() if name in _JSON_FIELDS}
    values.update({name: json.loads(value) for name, value in side.items() if value is not None})
    values["status"] = _text(stored["status"])
    values["job"] = {**values["job"], "fingerprint": _text(stored["fingerprint"])}
    request_id, base = values.get("request_id"), bases.get(values["job"]["endpoint"])
    if request_id and base and values.get("response_url") is None:  # the URLs follow from the request_id
        response_url = base + request_id
        values.update(status_url=f"{response_url}/status", response_url=response_url,
                      cancel_url=f"{response_url}/cancel")  # fmt: skip
    return JobRecord.from_dict(values)


def _stored(value: Any) -> str:
    """A field's value as stored: JSON; "null" (never stored) for nothing, an empty list included."""
    return "null" if value is None or value == [] or value == () else json.dumps(value)


def _request_ids(request_id: bytes | None, history: bytes | None) -> list[str]:
    found = [json.loads(request_id)] if request_id else []
    found += [attempt.get("request_id") for attempt in json.loads(history)] if history else []
    return [rid for rid in found if rid]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

