"""`wan-batch run`: record a batch in the ledger, run it to the end, write its report.

The same code runs embedded (a private Redis and an in-process worker) and
against a shared Redis whose workers run elsewhere; only where Redis and the
workers come from differs.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import redis
from celery import Celery
from pydantic import BaseModel, Field

from jobs.errors import ManifestError, WanBatchError
from jobs.manifest import Batch, ManifestOptions
from jobs.record import JobRecord
from jobs.status import FINAL, JobStatus
from runner import pipeline
from runner.embedded_redis import EmbeddedRedis
from runner.embedded_worker import EmbeddedWorker
from runner.ledger import BatchInfo, Ledger
from runner.manifests import load_manifest
from runner.pipeline import Context
from runner.providers import FAL_QUEUE_URL
from runner.settings import MIB, InputSettings, WorkerSettings, credential_from_env
from runner.simulator import SimConfig, run_simulator
from runner.storage import BatchFolder
from runner.tasks import create_app, queue_clients, redis_py_url, schedule

_FOLLOW_EVERY_S = 0.2


class UsageError(WanBatchError):
    """The command cannot run as asked (a missing credential, a clashing batch id)."""


class RunRequest(BaseModel):
    manifest: Path
    out: Path = Path("out")
    batch_id: str | None = None
    endpoint: str | None = None
    skip_invalid: bool = False
    sim: bool = False
    sim_concurrency: int = Field(default=4, gt=0)
    sim_run_time: str = "uniform:0.5,1.5"
    base_url: str | None = None
    redis_url: str | None = None
    max_in_flight: int = Field(default=10, gt=0)
    workers: int = Field(default=8, gt=0)
    max_attempts: int = Field(default=3, gt=0)
    max_image_mb: float = Field(default=10.0, gt=0)
    priority: Literal["normal", "low"] | None = None
    start_timeout_s: float | None = None


@dataclass
class Provision:
    """Where requests go and with which credential (kept in this process only)."""

    url: str
    scheme: Literal["Key", "Bearer"]
    credential: str


@dataclass
class RunResult:
    batch_id: str
    folder: Path
    counts: dict[JobStatus, int]
    report_csv: Path
    report_json: Path
    summary: dict[str, object]
    synced: dict[str, int]
    failures: list[JobRecord]


Progress = Callable[[dict[JobStatus, int], int], None]


def load_batch(request: RunRequest) -> Batch:
    """The validated manifest; raises ManifestError unless it may run (see `skip_invalid`)."""
    settings = InputSettings(max_image_bytes=int(request.max_image_mb * MIB))
    batch = load_manifest(request.manifest, ManifestOptions(default_endpoint=request.endpoint), settings)
    if (batch.errors and not request.skip_invalid) or not batch.jobs:
        raise ManifestError(batch.diagnostics)
    return batch


def run_batch(request: RunRequest, batch: Batch, on_progress: Progress) -> RunResult:
    """Run every job of `batch` to a final status; a rerun resumes where the last one stopped."""
    started = time.monotonic()
    with ExitStack() as stack:
        provision = stack.enter_context(_provision(request))
        client, broker_url = _redis(request, stack)
        ledger = Ledger(client)
        info = _record_batch(ledger, request, batch, provision)
        synced = ledger.sync_jobs(info.id, batch.jobs, time.time())
        http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0)))
        credential = provision.credential
        context = Context(ledger, http, queue_clients(http, lambda _scheme: credential), WorkerSettings())
        app = create_app(broker_url, context_factory=lambda: context)
        if request.redis_url is None:
            stack.enter_context(EmbeddedWorker(app, request.workers))
        try:
            schedule(app, info.id, pipeline.resume_batch(context, info.id, owner_gone=request.redis_url is None))
            _follow(app, context, info.id, on_progress)
        finally:
            result = _write_report(ledger, info, time.monotonic() - started, dict(synced))
    return result


@contextmanager
def _provision(request: RunRequest) -> Iterator[Provision]:
    if request.sim:
        sim_key = secrets.token_urlsafe(16)
        config = SimConfig(concurrency=request.sim_concurrency, run_time=request.sim_run_time, key=sim_key)
        with run_simulator(config) as sim:
            yield Provision(sim.base_url, "Key", sim_key)
        return
    token, fal_key = credential_from_env("Bearer"), credential_from_env("Key")
    if request.base_url and token:
        yield Provision(request.base_url, "Bearer", token)
    elif fal_key:
        yield Provision(request.base_url or FAL_QUEUE_URL, "Key", fal_key)
    else:
        raise UsageError(
            "no credential: set FAL_KEY (or WAN_BATCH_GATEWAY_TOKEN with --base-url), or try it with --sim"
        )


def _redis(request: RunRequest, stack: ExitStack) -> tuple[redis.Redis, str]:
    if request.redis_url:
        return redis.Redis.from_url(redis_py_url(request.redis_url)), request.redis_url
    server = stack.enter_context(EmbeddedRedis(request.out / ".wan-batch" / "redis"))
    return redis.Redis(unix_socket_path=server.socket_path), server.broker_url


def batch_id_for(manifest: Path) -> str:
    """The batch id of a manifest: its file name without extension, made safe for paths and keys."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest.stem).strip("-.") or "batch"
    return stem[:80]


def _record_batch(ledger: Ledger, request: RunRequest, batch: Batch, provision: Provision) -> BatchInfo:
    batch_id = request.batch_id or batch_id_for(request.manifest)
    manifest = str(request.manifest.resolve())
    existing = ledger.batch(batch_id)
    if existing is not None and existing.manifest != manifest:
        raise UsageError(
            f"{request.out / batch_id} holds batch {batch_id!r} of another manifest ({existing.manifest});"
            " pass --batch-id or another --out"
        )
    info = BatchInfo(
        id=batch_id, manifest=manifest, folder=str((request.out / batch_id).resolve()),
        created_at=existing.created_at if existing else time.time(), jobs=len(batch.jobs),
        max_in_flight=request.max_in_flight, max_attempts=request.max_attempts, state="open",
        provider_url=provision.url, auth_scheme=provision.scheme, priority=request.priority,
        start_timeout_s=request.start_timeout_s, max_image_bytes=int(request.max_image_mb * MIB),
    )  # fmt: skip
    ledger.save_batch(info)
    BatchFolder(Path(info.folder)).prepare()
    return info


def _follow(app: Celery, context: Context, batch_id: str, on_progress: Progress) -> None:
    """Show progress until every job is final; admit into slots freed by any worker."""
    ledger = context.ledger
    while True:
        counts = ledger.counts(batch_id)
        on_progress(counts, ledger.in_flight(batch_id))
        if all(count == 0 for status, count in counts.items() if status not in FINAL):
            return
        schedule(app, batch_id, pipeline.admit_next(context, batch_id))
        time.sleep(_FOLLOW_EVERY_S)


def _write_report(ledger: Ledger, info: BatchInfo, wall_s: float | None, synced: dict[str, int]) -> RunResult:
    records = list(ledger.records(info.id))
    folder = BatchFolder(Path(info.folder))
    extra = {"batch_id": info.id, "manifest": info.manifest, "provider_url": info.provider_url, "wall_s": wall_s}
    csv_path, json_path, summary = folder.write_reports(records, extra)
    failures = [r for r in records if r.status is JobStatus.FAILED]
    return RunResult(info.id, folder.path, ledger.counts(info.id), csv_path, json_path, summary, synced, failures)


def report_batch(folder: Path, redis_url: str | None) -> RunResult:
    """Write `report.csv` and `report.json` of the batch in `folder` (OUT/<batch>) from its ledger."""
    with ExitStack() as stack:
        request = RunRequest(manifest=folder, out=folder.parent, redis_url=redis_url)
        if redis_url is None and not (folder.parent / ".wan-batch" / "redis").is_dir():
            raise UsageError(f"{folder} is not a batch folder of wan-batch run (no {folder.parent / '.wan-batch'})")
        client, _ = _redis(request, stack)
        ledger = Ledger(client)
        info = ledger.batch(folder.name)
        if info is None:
            raise UsageError(f"no batch {folder.name!r} in the ledger of {folder.parent}")
        return _write_report(ledger, info, None, {})
