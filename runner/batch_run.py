"""`wan-batch run`: record a batch in the ledger, run it to the end, write its report.

The same code runs embedded (a private Redis and an in-process worker) and
against a shared Redis whose workers run elsewhere; only where Redis and the
workers come from differs.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis
from celery import Celery
from pydantic import BaseModel, Field, ValidationError

from jobs.errors import ManifestError, WanBatchError
from jobs.manifest import Batch, ManifestOptions
from jobs.record import JobRecord
from jobs.status import FINAL, JobStatus
from runner import pipeline
from runner.embedded_redis import EmbeddedRedis
from runner.embedded_worker import EmbeddedWorker
from runner.ledger import BatchInfo, Ledger
from runner.manifests import load_manifest
from runner.operations import resume_lost
from runner.pipeline import Context
from runner.providers import FAL_QUEUE_URL, Provider
from runner.settings import CREDENTIAL_ENV, MIB, InputSettings, WorkerSettings, credential_from_env
from runner.simulator import SimConfig, run_simulator
from runner.storage import BatchFolder
from runner.tasks import create_app, queue_clients, redis_py_url, schedule

_FOLLOW_EVERY_S = 0.2


class UsageError(WanBatchError):
    """The command cannot run as asked (a missing credential, a clashing batch id)."""


class FolderInUseError(UsageError):
    """Another embedded `wan-batch run` holds the output folder."""


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
    #: With a shared Redis: seconds without any job changing status before hinting that no worker runs.
    stall_hint_s: float = Field(default=60.0, gt=0)


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
#: Called once with the idle seconds when a shared-Redis run sees no job move.
StallHint = Callable[[float], None]


@dataclass
class StallWatch:
    """Calls `on_stall` once when the job counts have stayed the same for `after_s`."""

    after_s: float
    on_stall: StallHint
    _counts: dict[JobStatus, int] | None = field(default=None, init=False)
    _since_s: float = field(default=0.0, init=False)
    _told: bool = field(default=False, init=False)

    def see(self, counts: dict[JobStatus, int], now_s: float) -> None:
        """Note the counts seen at monotonic time `now_s`."""
        if counts != self._counts:
            self._counts, self._since_s = dict(counts), now_s
        elif not self._told and now_s - self._since_s >= self.after_s:
            self._told = True
            self.on_stall(self.after_s)


def load_batch(request: RunRequest) -> Batch:
    """The validated manifest; raises ManifestError unless it may run (see `skip_invalid`)."""
    settings = InputSettings(max_image_bytes=int(request.max_image_mb * MIB))
    batch = load_manifest(request.manifest, ManifestOptions(default_endpoint=request.endpoint), settings)
    if (batch.errors and not request.skip_invalid) or not batch.jobs:
        raise ManifestError(batch.diagnostics)
    return batch


def run_batch(request: RunRequest, batch: Batch, on_progress: Progress, on_stall: StallHint | None = None) -> RunResult:
    """Run every job of `batch` to a final status; a rerun resumes where the last one stopped.

    Raises UsageError, before anything is recorded, when the run cannot go as asked.
    `on_stall` is called (shared Redis only) when no job moves for `request.stall_hint_s`.
    """
    if request.sim and request.redis_url:
        raise UsageError("--sim cannot be used with --redis: workers elsewhere cannot reach this run's simulator")
    started = time.monotonic()
    embedded = request.redis_url is None
    with ExitStack() as stack:
        provider = stack.enter_context(_provision(request))
        if embedded:
            stack.enter_context(hold_folder(request.out))
        client, broker_url = _redis(request, stack)
        ledger = Ledger(client)
        info = _record_batch(ledger, request, batch, provider)
        synced = ledger.sync_jobs(info.id, batch.jobs, time.time())
        http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0)))
        secret = provider.credential.get_secret_value()
        context = Context(ledger, http, queue_clients(http, lambda _scheme: secret), WorkerSettings())
        app = create_app(broker_url, context_factory=lambda: context)
        # New poll tokens before any worker of this run takes a task: poll chains left by the last run stop.
        # Embedded, the last run's worker is surely gone; on a shared Redis, others may be mid-submit.
        resumed = pipeline.resume_batch(context, info.id) if embedded else resume_lost(context, info.id)
        schedule(app, info.id, resumed)
        stall = None if embedded or on_stall is None else StallWatch(request.stall_hint_s, on_stall)
        try:
            with ExitStack() as worker:  # stopped (warm) before the report is written
                if embedded:
                    worker.enter_context(EmbeddedWorker(app, request.workers))
                _follow(app, context, info.id, on_progress, stall)
        finally:
            result = _write_report(ledger, info, time.monotonic() - started, dict(synced))
    return result


@contextmanager
def _provision(request: RunRequest) -> Iterator[Provider]:
    if request.sim:
        sim_key = secrets.token_urlsafe(16)
        config = SimConfig(concurrency=request.sim_concurrency, run_time=request.sim_run_time, key=sim_key)
        with run_simulator(config) as sim:
            yield Provider.fal(sim_key, sim.base_url)
        return
    yield provider_for(request)


def provider_for(request: RunRequest) -> Provider:
    """The queue a run without `--sim` sends to, with its credential from the environment.

    A gateway token (WAN_BATCH_GATEWAY_TOKEN) is used only with `base_url`;
    otherwise FAL_KEY. Raises UsageError when no credential fits, or when
    `base_url` is not a plain http(s) URL; the message never shows the URL,
    which may hold a password.
    """
    token, fal_key = credential_from_env("Bearer"), credential_from_env("Key")
    if request.base_url is not None and token:
        scheme: Literal["Key", "Bearer"] = "Bearer"
        credential, base_url = token, request.base_url
    elif fal_key:
        scheme, credential, base_url = "Key", fal_key, request.base_url or FAL_QUEUE_URL
    elif token:
        raise UsageError("WAN_BATCH_GATEWAY_TOKEN needs --base-url (the gateway's queue URL); or set FAL_KEY for fal")
    else:
        raise UsageError(
            "no credential: set FAL_KEY (or WAN_BATCH_GATEWAY_TOKEN with --base-url), or try it with --sim"
        )
    try:
        provider = Provider(base_url=base_url, auth_scheme=scheme, credential=credential)
        port_ok = urlsplit(provider.base_url).port != 0
    except ValidationError as exc:
        raise UsageError(_describe_invalid(exc, scheme)) from None
    except ValueError:  # urllib's complaint about the port quotes the URL
        port_ok = False
    if not port_ok:
        raise UsageError("--base-url: its port is not a number from 1 to 65535")
    return provider


def _describe_invalid(exc: ValidationError, scheme: Literal["Key", "Bearer"]) -> str:
    """pydantic's complaint without the value it refused (a URL with a password, a credential)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        what = "--base-url" if error["loc"] == ("base_url",) else CREDENTIAL_ENV[scheme]
        problems.append(f"{what}: {error['msg'].removeprefix('Value error, ')}")
    hint = " (credentials go in FAL_KEY or WAN_BATCH_GATEWAY_TOKEN, never in the URL)"
    return "; ".join(problems) + hint


@contextmanager
def hold_folder(out: Path) -> Iterator[None]:
    """Hold `OUT/.wan-batch/run.lock` until exit: one embedded run per output folder.

    Raises FolderInUseError at once when another process holds it.
    """
    path = out / ".wan-batch" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(
                f"{out} is in use by another wan-batch run or report; wait for it to end, or pass another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _redis(request: RunRequest, stack: ExitStack) -> tuple[redis.Redis, str]:
    if request.redis_url:
        return redis.Redis.from_url(redis_py_url(request.redis_url)), request.redis_url
    server = stack.enter_context(EmbeddedRedis(request.out / ".wan-batch" / "redis"))
    return redis.Redis(unix_socket_path=server.socket_path), server.broker_url


def batch_id_for(manifest: Path) -> str:
    """The batch id of a manifest: its file name without extension, made safe for paths and keys."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest.stem).strip("-.") or "batch"
    return stem[:80]


def _record_batch(ledger: Ledger, request: RunRequest, batch: Batch, provider: Provider) -> BatchInfo:
    batch_id = request.batch_id or batch_id_for(request.manifest)
    manifest = str(request.manifest.resolve())
    existing = ledger.batch(batch_id)
    if existing is not None and existing.manifest != manifest:
        raise UsageError(
            f"{request.out / batch_id} holds batch {batch_id!r} of another manifest ({existing.manifest});"
            " pass --batch-id or another --out"
        )
    if existing is not None:
        check_same_provider(existing, provider, request.sim)
    info = BatchInfo(
        id=batch_id, manifest=manifest, folder=str((request.out / batch_id).resolve()),
        created_at=existing.created_at if existing else time.time(), jobs=len(batch.jobs),
        max_in_flight=request.max_in_flight, max_attempts=request.max_attempts, state="open",
        provider_url=provider.base_url, auth_scheme=provider.auth_scheme, priority=request.priority,
        start_timeout_s=request.start_timeout_s, max_image_bytes=int(request.max_image_mb * MIB),
    )  # fmt: skip
    ledger.save_batch(info)
    BatchFolder(Path(info.folder)).prepare()
    return info


def check_same_provider(existing: BatchInfo, provider: Provider, sim: bool) -> None:
    """Raise UsageError unless a rerun of `existing` goes to the provider that holds its requests.

    A `--sim` rerun of a simulator batch passes: the simulator's port changes
    every run. The message names URLs and credential variables, never a credential.
    """
    if not existing.provider_url:
        return
    if sim and _is_sim_url(existing.provider_url):
        return
    if (existing.provider_url.rstrip("/"), existing.auth_scheme) == (provider.base_url, provider.auth_scheme):
        return
    was = f"{_shown_url(existing.provider_url)} ({CREDENTIAL_ENV[existing.auth_scheme]})"
    now = "the simulator (--sim)" if sim else f"{provider.base_url} ({CREDENTIAL_ENV[provider.auth_scheme]})"
    hint = "; rerun it with --sim" if _is_sim_url(existing.provider_url) and not sim else ""
    raise UsageError(
        f"batch {existing.id!r} was sent to {was}; its requests cannot be followed at {now}{hint}"
        " (or pass --batch-id or another --out to start a new batch)"
    )


def _is_sim_url(url: str) -> bool:
    """Whether `url` looks like the address of a `--sim` run's simulator."""
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname == SimConfig().host


def _shown_url(url: str) -> str:
    """`url` without user info: a second guard, after the provider check, that no password is shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _follow(app: Celery, context: Context, batch_id: str, on_progress: Progress, stall: StallWatch | None) -> None:
    """Show progress until every job is final; admit into slots freed by any worker."""
    ledger = context.ledger
    while True:
        counts = ledger.counts(batch_id)
        on_progress(counts, ledger.in_flight(batch_id))
        if all(count == 0 for status, count in counts.items() if status not in FINAL):
            return
        if stall is not None:
            stall.see(counts, time.monotonic())
        schedule(app, batch_id, pipeline.admit_next(context, batch_id))
        time.sleep(_FOLLOW_EVERY_S)


def _write_report(ledger: Ledger, info: BatchInfo, wall_s: float | None, synced: dict[str, int]) -> RunResult:
    records = list(ledger.records(info.id))
    folder = BatchFolder(Path(info.folder))
    provider_url = _shown_url(info.provider_url)
    extra = {"batch_id": info.id, "manifest": info.manifest, "provider_url": provider_url, "wall_s": wall_s}
    csv_path, json_path, summary = folder.write_reports(records, extra)
    failures = [r for r in records if r.status is JobStatus.FAILED]
    return RunResult(info.id, folder.path, ledger.counts(info.id), csv_path, json_path, summary, synced, failures)


def report_batch(folder: Path, redis_url: str | None) -> RunResult:
    """Write `report.csv` and `report.json` of the batch in `folder` (OUT/<batch>) from its ledger.

    Works while a run of the folder is going on: its private Redis is read, and left running.
    """
    with ExitStack() as stack:
        if redis_url is not None:
            client = redis.Redis.from_url(redis_py_url(redis_url))
        else:
            client = _folder_redis(folder, stack)
        ledger = Ledger(client)
        try:
            info = ledger.batch(folder.name)
        except redis.ConnectionError:
            raise UsageError(f"the ledger of {folder.parent} does not answer; try again") from None
        if info is None:
            raise UsageError(f"no batch {folder.name!r} in the ledger of {folder.parent}")
        return _write_report(ledger, info, None, {})


def _folder_redis(folder: Path, stack: ExitStack) -> redis.Redis:
    """The private Redis of OUT (`folder`'s parent)."""
    if not (folder.parent / ".wan-batch" / "redis").is_dir():
        raise UsageError(f"{folder} is not a batch folder of wan-batch run (no {folder.parent / '.wan-batch'})")
    return _out_redis(folder.parent, stack)[0]


def _out_redis(out: Path, stack: ExitStack) -> tuple[redis.Redis, str]:
    """OUT's private Redis and its broker URL: started for this command, or the one a run serves."""
    redis_dir = out / ".wan-batch" / "redis"
    if not redis_dir.is_dir():
        raise UsageError(f"{out} holds no batches of wan-batch run (no {out / '.wan-batch'}); pass --out or --redis")
    try:
        stack.enter_context(hold_folder(out))
    except FolderInUseError:  # stopping that Redis afterwards would pull it from under the run
        server = EmbeddedRedis(redis_dir)
        return redis.Redis(unix_socket_path=server.socket_path), server.broker_url
    server = stack.enter_context(EmbeddedRedis(redis_dir))
    return redis.Redis(unix_socket_path=server.socket_path), server.broker_url


@contextmanager
def open_ledger(redis_url: str | None, out: Path) -> Iterator[tuple[Ledger, str]]:
    """The ledger and broker URL of a shared Redis, or else of OUT's private one."""
    with ExitStack() as stack:
        if redis_url is not None:
            yield Ledger(redis.Redis.from_url(redis_py_url(redis_url))), redis_url
        else:
            client, broker_url = _out_redis(out, stack)
            yield Ledger(client), broker_url


def submit_batch(request: RunRequest, batch: Batch) -> tuple[BatchInfo, dict[str, int]]:
    """Record and enqueue a batch in a shared Redis for its workers, without waiting."""
    if request.redis_url is None:
        raise UsageError("submit needs a shared Redis (--redis or REDIS_URL); on this machine use `wan-batch run`")
    provider = provider_for(request)
    with open_ledger(request.redis_url, request.out) as (ledger, broker_url), httpx.Client() as http:
        info = _record_batch(ledger, request, batch, provider)
        synced = ledger.sync_jobs(info.id, batch.jobs, time.time())
        # Only admission happens here: workers make every call to fal, with their own credentials.
        context = Context(ledger, http, queue_clients(http, lambda _scheme: None), WorkerSettings())
        schedule(create_app(broker_url), info.id, resume_lost(context, info.id))
    return info, dict(synced)
