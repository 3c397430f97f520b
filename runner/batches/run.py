"""`wan-batch run`: record a batch in the ledger, run it to the end, write its report.

The same code runs embedded (a private Redis and an in-process worker) and
against a shared Redis whose workers run elsewhere; only where Redis and the
workers come from differs.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from celery import Celery

from jobs.batch import Batch
from jobs.errors import FolderInUseError, UsageError
from jobs.status import JobStatus
from runner.batches.costs import Priced, check_cap, price_options
from runner.batches.intake import (
    Prepared,
    RunResult,
    batch_id_for,
    enqueue_batch,
    prepare_images,
    price_batch,
    record_batch,
    write_report,
)
from runner.batches.notifications import batch_notice, check_notify_url, notify_now
from runner.batches.operations import resume_batch
from runner.batches.providers import api_url_of, check_storage_url, provider_for
from runner.batches.request import RunRequest
from runner.batches.uploads import UploadProgress
from runner.embedded.server import EmbeddedRedis
from runner.embedded.worker import EmbeddedWorker
from runner.fal.providers import Provider
from runner.ledger.batch_info import BatchInfo
from runner.ledger.connection import redis_client
from runner.ledger.store import Ledger
from runner.settings import WorkerSettings, worker_settings
from runner.simulator import SimConfig, run_simulator
from runner.simulator.config import sim_prices
from runner.simulator.webhooks import JWKS_PATH
from runner.steps.context import Context, make_context

_FOLLOW_EVERY_S = 0.2
#: Of the calls a run or a submit makes itself: uploads of local images may take a while.
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
#: A simulator's history lags by a known amount, on this machine's clock: a second more covers it.
_SIM_LAG_MARGIN_S = 1.0


Progress = Callable[[dict[JobStatus, int], int], None]
#: Called once with the idle seconds when a shared-Redis run sees no job move.
StallHint = Callable[[float], None]
#: Builds the Celery app of a broker URL, with a factory of the context its tasks use (None: from the environment).
AppFactory = Callable[[str, Callable[[], Context] | None], Celery]


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


@dataclass(frozen=True)
class Watchers:
    """What a run reports to, and asks, while it follows its batch."""

    on_progress: Progress
    #: Called (shared Redis only) when no job moves for `request.stall_hint_s`.
    on_stall: StallHint | None = None
    #: Called between looks at the batch; raises (KeyboardInterrupt) to stop the run cleanly.
    check_stop: Callable[[], None] = lambda: None
    #: Called with the bytes of local images uploaded so far, and in all, while they are.
    on_upload: UploadProgress | None = None
    #: Entered with the run's ledger and request (as it runs) as soon as the ledger is open, left when the run
    #: ends (`run --serve`).
    with_ledger: Callable[[Ledger, RunRequest], AbstractContextManager[object]] | None = None
    #: Called with the batch's estimate and prices once they are known, before anything is uploaded or sent.
    on_estimate: Callable[[Priced], None] | None = None


def check_run(request: RunRequest, dry: bool = False) -> None:
    """Refuse, before anything starts, a run that cannot go as asked, in this order: options that contradict
    each other, the credential and URLs, then an output folder that cannot be written. Raises UsageError.

    `dry`: a dry run (`run --dry-run`), which needs no credential (prices then come from the built-in table) and
    writes nothing.
    """
    if request.sim and request.redis_url:
        raise UsageError("--sim cannot be used with --redis: workers elsewhere cannot reach this run's simulator")
    if request.sim and request.base_url:
        raise UsageError("--sim cannot be used with --base-url: a --sim run sends to its own simulator")
    api_url_of(request, Provider.fal("checked-here") if request.sim else provider_for(request, not dry))
    price_options(request.prices)
    price_options(request.sim_prices, "--sim-price")
    check_notify_url(request.notify)
    check_notify_url(request.webhook_url, "--webhook-url")
    check_storage_url(request)
    if not dry:
        worker_settings()  # what the in-process worker reads from the environment
        check_writable(request.out, "--out")


def dry_run_batch(request: RunRequest, batch: Batch) -> Priced:
    """Price `batch` as `run` would, and nothing more: nothing is recorded, uploaded or sent.

    With --sim, its simulator is started to be asked its prices. Raises UsageError as `check_run` and `price_batch`
    (whether its cap can hold is for the caller to ask `check_cap`, once it has shown the estimate).
    """
    check_run(request, dry=True)
    with ExitStack() as stack:
        if request.sim:
            provider, request, _ = stack.enter_context(_provision(request))
        else:
            provider = provider_for(request, credential_needed=False)
        http = stack.enter_context(httpx.Client(timeout=HTTP_TIMEOUT))
        return price_batch(None, request, batch.jobs, provider, http)


def _check_trial(ledger: Ledger, request: RunRequest, batch: Batch) -> None:
    """Refuse a trial (`--limit`, `--sample`) of a batch whose other jobs are unfinished: the run would run them."""
    if request.limit is None and request.sample is None:
        return
    batch_id = request.batch_id or batch_id_for(request.manifest)
    chosen = {job.id for job in batch.jobs}
    others = [j for j in ledger.job_ids(batch_id, [s for s in JobStatus if not s.is_final]) if j not in chosen]
    if others:
        raise UsageError(f"batch {batch_id!r} has {len(others)} unfinished job(s) beyond this trial, which a run"
                         " would run too: run it without --limit/--sample, or pass another --batch-id")


def check_writable(folder: Path, option: str) -> None:
    """Raise UsageError, naming `folder` and why, unless a file can be written in it (it is made if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".wan-batch-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())  # a full disk shows here
    except OSError as exc:
        raise UsageError(f"{option} {folder}: cannot write there: {exc.strerror or type(exc).__name__}") from None


def run_batch(request: RunRequest, batch: Batch, make_app: AppFactory, watchers: Watchers) -> RunResult:
    """Run every job of `batch` to a final status; a rerun resumes where the last one stopped.

    Raises UsageError, before anything is recorded, when the run cannot go as asked.
    """
    check_run(request)
    started = time.monotonic()
    embedded = request.redis_url is None
    with ExitStack() as stack:
        provider, request, settings = stack.enter_context(_provision(request))
        if embedded:
            stack.enter_context(hold_folder(request.out))
        client, broker_url = _redis(request, stack)
        ledger = Ledger(client)
        if watchers.with_ledger is not None:
            stack.enter_context(watchers.with_ledger(ledger, request))
        _check_trial(ledger, request, batch)
        http = stack.enter_context(httpx.Client(timeout=HTTP_TIMEOUT))
        priced = price_batch(ledger, request, batch.jobs, provider, http)
        if watchers.on_estimate is not None:
            watchers.on_estimate(priced)
        check_cap(priced.cap_nusd, priced.estimate)
        batch, images, uploads = prepare_images(ledger, request, batch, provider, http, watchers.on_upload,
                                                watchers.check_stop)  # fmt: skip
        watchers.check_stop()  # nothing is recorded yet: a stop now leaves nothing behind
        info = record_batch(ledger, request, batch, provider, prepared=Prepared(images, uploads.storage, priced.prices))
        synced = ledger.sync_jobs(info.id, batch.jobs, time.time())
        secret = provider.credential.get_secret_value()
        context = make_context(ledger, http, lambda _scheme: secret, settings)
        app = make_app(broker_url, lambda: context)
        # Every unfinished job's step is due now. Embedded, the last run's worker is surely gone, so the
        # steps it held are given out again; on a shared Redis, steps that live workers run are theirs.
        resume_batch(context, info.id, owners_gone=embedded)
        stall = None if embedded or watchers.on_stall is None else StallWatch(request.stall_hint_s, watchers.on_stall)
        try:
            with ExitStack() as worker:  # stopped (warm) before the report is written
                if embedded:
                    worker.enter_context(EmbeddedWorker(app, request.workers))
                _follow(ledger, info.id, watchers, stall)
        finally:
            result = write_report(ledger, info, time.monotonic() - started, dict(synced))
            result.uploads = uploads
        if request.notify is not None:  # only once every job is final: a stop raises out of the follow above
            result.notified = _notify_end(ledger, http, request.notify, result)
    return result


def _notify_end(ledger: Ledger, http: httpx.Client, url: str, result: RunResult) -> str:
    """POST the ended batch's summary to `url`, with a few tries; how it went."""
    info = ledger.batch(result.batch_id)
    assert info is not None, "the batch this run recorded"
    return notify_now(http, batch_notice(info, result.summary_with_paths, url)).shown


@contextmanager
def _provision(request: RunRequest) -> Iterator[tuple[Provider, RunRequest, WorkerSettings]]:
    """Where the run sends its jobs, the request as it runs, and its worker's settings.

    With `--sim`, a simulator of fal on this machine serves both the queue and
    the request history, whose short lag its worker waits for.
    """
    if request.sim:
        sim_key = secrets.token_urlsafe(16)
        config = SimConfig(concurrency=request.sim_concurrency, run_time=request.sim_run_time, key=sim_key,
                           prices=sim_prices(price_options(request.sim_prices, "--sim-price")))  # fmt: skip
        with run_simulator(config) as sim:
            api_url = request.api_url if request.api_url is not None else f"{sim.base_url}/v1"
            settings = worker_settings()
            same_machine = settings.reconcile.model_copy(
                update={"history_lag_s": config.history_lag_s + _SIM_LAG_MARGIN_S, "clock_skew_s": _SIM_LAG_MARGIN_S}
            )
            jwks_url = request.jwks_url or f"{sim.base_url}{JWKS_PATH}"  # the simulator signs its webhooks
            yield (Provider.fal(sim_key, sim.base_url), request.model_copy(update={"api_url": api_url,
                   "jwks_url": jwks_url}), settings.model_copy(update={"reconcile": same_machine}))  # fmt: skip
        return
    yield provider_for(request), request, worker_settings()


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
        return redis_client(request.redis_url), request.redis_url
    server = stack.enter_context(EmbeddedRedis(request.out / ".wan-batch" / "redis"))
    return redis_client(server.url), server.broker_url


def _follow(ledger: Ledger, batch_id: str, watchers: Watchers, stall: StallWatch | None) -> None:
    """Show progress until every job is final (workers admit the next job into each slot they free)."""
    while True:
        watchers.check_stop()
        counts = ledger.counts(batch_id)
        watchers.on_progress(counts, ledger.in_flight(batch_id))
        if all(count == 0 for status, count in counts.items() if not status.is_final):
            return
        if stall is not None:
            stall.see(counts, time.monotonic())
        time.sleep(_FOLLOW_EVERY_S)


def report_batch(folder: Path, redis_url: str | None) -> RunResult:
    """Write `report.csv` and `report.json` of the batch in `folder` (OUT/<batch>) from its ledger.

    Works while a run of the folder is going on: its private Redis is read, and left running.
    """
    with ExitStack() as stack:
        if redis_url is not None:
            client = redis_client(redis_url)
        else:
            client = _folder_redis(folder, stack)
        ledger = Ledger(client)
        try:
            info = ledger.batch(folder.name)
        except redis.ConnectionError:
            raise UsageError(f"the ledger of {folder.parent} does not answer; try again") from None
        if info is None:
            raise UsageError(f"no batch {folder.name!r} in the ledger of {folder.parent}")
        return write_report(ledger, info, None, {})


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
        return redis_client(server.url), server.broker_url
    server = stack.enter_context(EmbeddedRedis(redis_dir))
    return redis_client(server.url), server.broker_url


@contextmanager
def open_ledger(redis_url: str | None, out: Path, wait_for_redis: bool = False) -> Iterator[tuple[Ledger, str]]:
    """The ledger and broker URL of a shared Redis, or else of OUT's private one.

    A shared Redis that does not answer at once raises redis.ConnectionError at once (a command's user is told in
    a second, not after the 20 s its calls ride out a restart), unless `wait_for_redis` (a worker, started
    before its Redis).
    """
    with ExitStack() as stack:
        if redis_url is not None:
            if not wait_for_redis:
                with redis_client(redis_url, patient=False) as probe:
                    probe.ping()
            yield Ledger(redis_client(redis_url)), redis_url
        else:
            client, broker_url = _out_redis(out, stack)
            yield Ledger(client), broker_url


def check_submit(request: RunRequest) -> None:
    """Refuse, before anything starts, a submit without a shared Redis or with a bad notify URL (UsageError)."""
    if request.redis_url is None:
        raise UsageError("submit needs a shared Redis (--redis or REDIS_URL); on this machine use `wan-batch run`")
    check_notify_url(request.notify)
    check_notify_url(request.webhook_url, "--webhook-url")
    check_storage_url(request)


def as_checked_now(request: RunRequest, listen: str | None) -> RunRequest:
    """The run's request as it can be checked before `--serve` is bound: a path `--webhook-url` is made whole on
    its address later (and checked then); raises UsageError for a path without --serve or without --sim."""
    given = request.webhook_url
    if given is None or not given.startswith("/"):
        return request
    if not request.sim:
        raise UsageError(f"--webhook-url {given}: a path is for --sim, whose simulator calls this machine; fal"
                         " needs the public URL of the receiver")  # fmt: skip
    webhook_url_for(given, listen)
    return request.model_copy(update={"webhook_url": None})


def webhook_url_for(given: str | None, served_at: str | None) -> str | None:
    """`--webhook-url` as the batch stores it: a path (`/fal/webhook`) is taken on `run --serve`'s address."""
    if given is None or not given.startswith("/"):
        return given
    if served_at is None:
        raise UsageError(f"--webhook-url {given}: a path is taken on the address of --serve; give a full URL")
    return f"{served_at}{given}"


def submit_batch(request: RunRequest, batch: Batch) -> tuple[BatchInfo, dict[str, int], Priced]:
    """Record and enqueue a batch in a shared Redis for its workers, without waiting.

    With `request.notify`, the worker that ends it POSTs its summary there. Raises UsageError as `check_submit`.
    """
    check_submit(request)
    # An unreachable Redis is the first thing to say (`open_ledger` asks it at once).
    with open_ledger(request.redis_url, request.out) as (ledger, _), httpx.Client(timeout=HTTP_TIMEOUT) as http:
        provider = provider_for(request, credential_needed=False)  # the workers hold it
        check_writable(request.out, "--out")
        # Only admission happens here: workers make every call to fal, with their own credentials.
        return enqueue_batch(make_context(ledger, http, lambda _scheme: None), request, batch, provider)
