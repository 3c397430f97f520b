"""`wan-batch validate`, `run`, `report` and `worker`: a batch from a manifest to its report."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from jobs.batch import Batch
from jobs.diagnostics import MAX_SHOWN_GROUPS, group_diagnostics, grouped_lines
from jobs.endpoints import KNOWN_ENDPOINTS
from jobs.errors import ManifestError, UsageError, WanBatchError
from jobs.manifest import ManifestOptions
from jobs.pricing import estimate
from jobs.report import IMAGE_FIELDS
from jobs.status import JobStatus
from runner.batches.costs import Priced, price_options, prices_here
from runner.batches.intake import RunResult, load_batch, trial_jobs
from runner.batches.manifests import load_manifest
from runner.batches.notifications import shown_notify_url
from runner.batches.providers import api_url_of, shown_url
from runner.batches.request import RunRequest
from runner.batches.run import (
    Watchers,
    as_checked_now,
    check_run,
    open_ledger,
    report_batch,
    run_batch,
    webhook_url_for,
)
from runner.batches.urlcheck import check_urls
from runner.cli import options
from runner.cli.costs import cap_lines, cost_json, cost_summary_line, echo_estimate, estimate_lines, show_dry_run
from runner.cli.progress import ProgressBar, failure_lines
from runner.cli.sim import check_run_time
from runner.cli.web import served_run
from runner.fal.providers import Provider
from runner.settings import MIB, InputSettings, keep_days_from_env, worker_settings
from runner.simulator.config import SIM_CONCURRENCY
from runner.steps.context import context_from_env
from runner.steps.dispatch import QUEUE
from runner.tasks import create_app

MANIFEST = click.Path(exists=True, dir_okay=False, path_type=Path)


def refuse_manifest(exc: ManifestError, verdict: str | None = None, max_groups: int = MAX_SHOWN_GROUPS) -> NoReturn:
    """Print the problems of a manifest that may not run (and what was not done), then exit 1.

    Problems alike but for their line print as one, with the lines; at most `max_groups` (0: all).
    """
    for line in grouped_lines(exc.diagnostics, max_groups):
        click.echo(line, err=True)
    if verdict is not None:
        click.echo(verdict, err=True)
    raise SystemExit(1)


@click.command()
@click.argument("manifest", type=MANIFEST)
@click.option("--endpoint", help="Endpoint of rows that name none, e.g. fal-ai/wan-25-preview/image-to-image.")
@click.option("--max-image-mb", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Largest local image or data URI accepted.")  # fmt: skip
@click.option("--allow-endpoint", "allowed", metavar="ID", multiple=True,
              help="An endpoint id close to a known one that is meant as written, not a typo (repeatable).")
@click.option("--max-errors", metavar="N", type=click.IntRange(min=0), default=MAX_SHOWN_GROUPS, show_default=True,
              help="Print at most N problems (alike ones, differing only by line, count as one); 0: all.")
@options.max_jobs
@click.option("--check-urls", is_flag=True,
              help="Also ask each distinct http(s) image URL whether it answers with an image (a HEAD each).")
@options.api_url
@options.price
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, with every problem.")
def validate(manifest: Path, endpoint: str | None, max_image_mb: float, allowed: tuple[str, ...], max_errors: int,
             max_jobs: int, check_urls: bool, api_url: str | None, prices: tuple[str, ...],
             as_json: bool) -> None:  # fmt: skip
    """Check MANIFEST (CSV, TSV, JSONL or YAML), report every problem at once, and estimate what it costs.

    Prices come from fal's pricing API with FAL_KEY, else from a built-in table (it says which), and --price.
    Exits 0 when it would run (warnings allowed), 1 when it has errors (or,
    with --check-urls, an image URL that does not answer with an image), 2
    on bad usage, 3 on an internal error (a bug of wan-batch, not of the manifest).
    """
    settings = InputSettings(max_image_bytes=int(max_image_mb * MIB))
    manifest_options = ManifestOptions(default_endpoint=endpoint, allowed_endpoints=frozenset(allowed),
                                       max_jobs=max_jobs)  # fmt: skip
    try:
        checked_api_url = api_url_of(RunRequest(manifest=manifest, api_url=api_url), Provider.fal("checked-here"))
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        batch = load_manifest(manifest, manifest_options, settings, keep_jobs=check_urls)  # else only counted
        price_list = prices_here(batch.made.units, price_options(prices), checked_api_url)
        found = estimate(batch.made.units, price_list.prices)
        if as_json:
            click.echo(json.dumps({**_batch_summary(batch), "cost": cost_json(found, price_list)}, indent=2))
        else:
            _print_validation(batch, max_errors)
            if batch.made.jobs:
                echo_estimate(Priced(price_list, found))
    except (OSError, WanBatchError):
        raise  # a file that cannot be read, a known failure: said in one line by the command line's group
    except Exception as exc:  # a bug; exit 1 would blame the manifest
        if os.environ.get("WAN_BATCH_TRACEBACK"):
            raise
        reason = next(iter(str(exc).splitlines()), "")[:200]
        click.echo(f"internal error: {type(exc).__name__}: {reason}; please report it, with the manifest", err=True)
        sys.exit(3)
    unreachable = _check_image_urls(batch, not as_json) if check_urls else {}
    sys.exit(1 if batch.errors or unreachable else 0)


def _check_image_urls(batch: Batch, show_progress: bool) -> dict[str, str]:
    """Ask every distinct http(s) image URL of the jobs whether it serves an image; print the ones that do not."""
    def values(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    urls = list(dict.fromkeys(
        url for job in batch.jobs for name in IMAGE_FIELDS for url in values(job.input.get(name))
        if isinstance(url, str) and url.lower().startswith(("http://", "https://"))
    ))  # fmt: skip
    with ProgressBar(len(urls), enabled=show_progress, label="URLs") as bar:
        failed = check_urls(urls, on_progress=lambda done, _total: bar.advance_to(done))
    for url, reason in failed.items():
        click.echo(f"{batch.file}: {shown_url(url)}: {reason}", err=True)
    click.echo(f"{len(urls)} image URL(s) checked, {len(failed)} not reachable as images", err=True)
    return failed


def _batch_summary(batch: Batch) -> dict[str, object]:
    return {
        "file": batch.file,
        "ok": not batch.errors,
        "records": batch.records,
        "jobs": batch.made.jobs,
        "jobs_per_endpoint": batch.jobs_per_endpoint(),
        "matrix_expanded": dict(zip(("rows", "jobs"), batch.matrix_expansion(), strict=True)),
        "errors": [d.to_dict() for d in batch.errors],
        "warnings": [d.to_dict() for d in batch.warnings],
        "groups": [group.to_dict() for group in group_diagnostics(batch.diagnostics)],
    }


def _print_validation(batch: Batch, max_groups: int = MAX_SHOWN_GROUPS) -> None:
    for line in grouped_lines(batch.diagnostics, max_groups):
        click.echo(line, err=True)
    errors, warnings = len(batch.errors), len(batch.warnings)
    if errors:
        click.echo(f"{batch.file}: {errors} error(s), {warnings} warning(s); nothing would be submitted")
        return
    click.echo(f"{batch.file}: ok, {batch.made.jobs} job(s) from {batch.records} row(s), {warnings} warning(s)")
    rows, made = batch.matrix_expansion()
    if rows:
        click.echo(f"  matrix: expanded {rows} row(s) into {made} job(s)")
    for endpoint, count in batch.jobs_per_endpoint().items():
        tag = "" if endpoint in KNOWN_ENDPOINTS else "  (pass-through: inputs sent as given)"
        click.echo(f"  {endpoint}: {count}{tag}")


@click.command()
@click.argument("manifest", type=MANIFEST)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True,
              help="Output folder; the batch goes to OUT/<batch>. Without --redis, one run at a time.")
@click.option("--sim", is_flag=True, help="Run against a simulator of fal started in this process (no key needed).")
@click.option("--base-url", help="Queue base URL: a gateway (with WAN_BATCH_GATEWAY_TOKEN) or another fal URL.")
@click.option("--redis", "redis_url", envvar="REDIS_URL",
              help="Shared Redis for workers started elsewhere (default: a private one in OUT).")
@options.max_in_flight
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Threads of the in-process worker (embedded mode).")
@options.max_attempts
@click.option("--endpoint", help="Endpoint of rows that name none.")
@options.allow_endpoint
@options.max_jobs
@click.option("--skip-invalid", is_flag=True, help="Run the valid rows of a manifest that has errors.")
@click.option("--batch-id", help="Batch id (default: the manifest's file name).")
@click.option("--priority", type=click.Choice(["normal", "low"]), help="fal queue priority.")
@click.option("--start-timeout-s", type=click.FloatRange(min=1, min_open=True),
              help="fal gives up on a request not started by then (default: 900 s, or 3600 s with --priority low).")
@options.api_url
@options.max_image_mb
@click.option("--sim-concurrency", type=click.IntRange(min=1), default=SIM_CONCURRENCY, show_default=True,
              help="With --sim: requests the simulator runs at once.")
@click.option("--sim-run-time", default="uniform:0.5,1.5", show_default=True, callback=check_run_time,
              help="With --sim: run time per request.")
@click.option("--stall-hint-s", type=click.FloatRange(min=0, min_open=True), default=60.0, hidden=True,
              help="With --redis: seconds without any job moving before hinting that no worker runs.")
@click.option("--limit", type=click.IntRange(min=1), help="Try only the first N jobs (the rest: rerun without it).")
@click.option("--sample", type=click.IntRange(min=1),
              help="Try only N jobs spread over the manifest, the same N on every rerun.")
@options.notify
@options.images
@options.storage_url
@options.upload_ttl
@options.webhook_url
@options.jwks_url
@options.price
@options.max_cost
@click.option("--sim-price", "sim_prices", multiple=True, metavar="ENDPOINT=USD[/UNIT]",
              help="With --sim: what its pricing API says an endpoint costs (repeatable).")
@click.option("--serve", "listen", metavar="[HOST:]PORT",
              help="Serve the dashboard (as `wan-batch serve`) while it runs, e.g. 8000; 0 picks a free port.")
@click.option("--dry-run", is_flag=True,
              help="Validate and price it, print the estimate, and stop: nothing is uploaded, recorded or sent.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (implies --quiet).")
def run(quiet: bool, as_json: bool, listen: str | None, dry_run: bool, **options: Any) -> None:  # fmt: skip
    """Validate MANIFEST, price it, and run every job to the end; rerun the same command to resume.

    Exits 0 when every job succeeded, 1 when some failed, 2 on bad usage
    (a --notify that was not delivered is said on stderr; it changes no exit code).
    Ctrl-C (exit 130) and SIGTERM (exit 143) stop it cleanly: requests
    already at fal are kept and the report is written; rerun to resume.
    """
    if options["sim"] and click.get_current_context().get_parameter_source("api_url") is ParameterSource.ENVIRONMENT:
        options["api_url"] = None  # FAL_API_URL names fal's: a --sim run asks its own simulator (unless --api-url)
    request = RunRequest(**options)
    batch = _batch_to_run(request, listen, dry_run)
    if dry_run:
        show_dry_run(request, batch, as_json)
    try:
        with _stop_on_signals() as check_stop, ProgressBar(len(batch.jobs), enabled=not (quiet or as_json)) as bar:
            serving, served_at = served_run(listen, bar.note)  # bound now: a port in use is said before anything
            request = request.model_copy(update={"webhook_url": webhook_url_for(request.webhook_url, served_at)})

            def show_estimate(priced: Priced) -> None:
                for line in estimate_lines(priced.estimate, priced.prices) + cap_lines(priced, batch.jobs):
                    bar.note(line)

            watchers = Watchers(bar.update, lambda idle_s: bar.note(_stall_hint(idle_s)), check_stop, bar.uploads,
                                serving, show_estimate)  # fmt: skip
            result = run_batch(request, batch, create_app, watchers)
            check_stop()  # a stop asked for as the batch ended is still a stop
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    except ManifestError as exc:  # a local image that could not be uploaded: nothing was recorded
        refuse_manifest(exc, f"{request.manifest}: not run; nothing was submitted")
    except KeyboardInterrupt as exc:
        how, code = ("terminated", 143) if isinstance(exc, _Terminated) else ("interrupted", 130)
        click.echo(f"\n{how}: requests already at fal are kept; run the same command again to resume", err=True)
        sys.exit(code)
    _print_result(result, as_json)
    if request.notify is not None and result.notified is not None:
        click.echo(f"notify {shown_notify_url(request.notify)}: {result.notified}", err=True)
    sys.exit(0 if result.counts[JobStatus.FAILED] == 0 and result.counts[JobStatus.CANCELLED] == 0 else 1)


def _batch_to_run(request: RunRequest, listen: str | None, dry_run: bool) -> Batch:
    """The manifest's jobs that the run runs (all, or a trial's), once the run is checked; exits when it cannot."""
    if request.limit is not None and request.sample is not None:
        raise click.UsageError("--limit and --sample choose the jobs of a trial two ways: give one")
    try:
        check_run(as_checked_now(request, listen), dry=dry_run)  # before the manifest is read, or anything shows
        batch = load_batch(request)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    except ManifestError as exc:
        hint = "fix the errors above" if request.skip_invalid else "fix the errors above or pass --skip-invalid"
        refuse_manifest(exc, f"{request.manifest}: not run; {hint}")
    for line in grouped_lines(batch.warnings):
        click.echo(line, err=True)
    total, batch = len(batch.jobs), trial_jobs(request, batch)
    if len(batch.jobs) < total:
        how = "the first" if request.limit is not None else "a sample of"
        click.echo(f"trying {how} {len(batch.jobs)} of {total} job(s); the same command without it runs the rest",
                   err=True)  # fmt: skip
    return batch


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C is, so the run stops the same clean way."""


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM only note that a stop was asked; the `check` this yields raises it.

    The run calls `check` where stopping is safe (between looks at its batch),
    so a signal never lands inside a start-up, a finalizer or a clean stop
    already under way (a second Ctrl-C does not cut it short; SIGKILL does).
    A signal this process was started with ignored (a background job) stays ignored.
    """
    asked: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        asked.append(signum)

    def check() -> None:
        if asked:
            raise _Terminated if asked[0] == signal.SIGTERM else KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, note)
    try:
        yield check
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stall_hint(idle_s: float) -> str:
    return (
        f"no job has changed status for {idle_s:g} s: is a worker running? "
        "Start one with `wan-batch worker --redis URL` (same Redis URL); still waiting"
    )


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--redis", "redis_url", envvar="REDIS_URL", help="The batch's Redis (default: the one in FOLDER/..).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report(folder: Path, redis_url: str | None, as_json: bool) -> None:
    """Write FOLDER/report.csv and report.json for a batch (OUT/<batch>), at any time."""
    try:
        result = report_batch(folder, redis_url)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    _print_result(result, as_json)


@click.command()
@click.option("--redis", "redis_url", envvar="REDIS_URL", help="The shared Redis (or REDIS_URL).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True,
              help="Without --redis: work on the batches of this output folder of `wan-batch run`.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Worker threads.")
@click.option("--queues", default=QUEUE, show_default=True, help="Comma-separated queues to take tasks from.")
@options.loglevel
@click.option("--api-url", envvar="FAL_API_URL",
              help="Where to look for lost submits of batches that name no API URL (recorded by older versions).")
def worker(redis_url: str | None, out: Path, concurrency: int, queues: str, loglevel: str,
           api_url: str | None) -> None:  # fmt: skip
    """Run a worker (the same as `celery -A runner.tasks worker -P threads`) until Ctrl-C.

    The credential comes from this machine's FAL_KEY or WAN_BATCH_GATEWAY_TOKEN.
    Settings of its retries, polls and lookups of lost submits can be set in
    its environment, e.g. WAN_BATCH_RECONCILE__HISTORY_LAG_S=300.
    """
    try:
        keep_days_from_env()  # checked now, not at the end of the first scheduled batch
        worker_settings()  # and the settings its steps read from the environment
        if api_url is not None:
            api_url = api_url_of(RunRequest(manifest=Path("-"), api_url=api_url), Provider.fal("checked-here"))
    except (ValueError, UsageError) as exc:
        raise click.UsageError(str(exc)) from None
    with open_ledger(redis_url, out, wait_for_redis=True) as (_, broker_url):
        app = create_app(broker_url, lambda: context_from_env(broker_url, api_url=api_url))
        worker = app.Worker(pool="threads", concurrency=concurrency, loglevel=loglevel, queues=queues.split(","))
        worker.start()
    # Non-zero when the worker gave up (it could not recover its broker): a supervisor then starts it again.
    sys.exit(worker.exitcode or 0)


def _print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        payload = {"batch_id": result.batch_id, "folder": str(result.folder), "report_csv": str(result.report_csv),
                   "report_json": str(result.report_json), **result.summary}  # fmt: skip
        click.echo(json.dumps(payload, indent=2))
        return
    counts = result.summary["counts"]
    assert isinstance(counts, dict)
    shown = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    click.echo(f"batch {result.batch_id}: {shown}; {result.summary['images_written']} image(s) in {result.folder}")
    if result.synced.get("kept"):
        click.echo(f"  resumed: {result.synced['kept']} job(s) were already in the ledger")
    uploads = result.uploads
    if uploads.contents:
        click.echo(f"  local images: {uploads.contents} distinct, {uploads.uploaded} uploaded to fal storage"
                   f" ({uploads.bytes_uploaded / 1e6:.1f} MB), {uploads.reused} already there")
    cost = cost_summary_line(result.summary)
    if cost is not None:
        click.echo(cost)
    if result.summary.get("invalid_rows"):
        click.echo(f"  skipped: {result.summary['invalid_rows']} invalid row(s) (--skip-invalid); each is in the"
                   " report with its errors")  # fmt: skip
    for line in failure_lines(result.failures):
        click.echo(line)
    click.echo(f"  report: {result.report_csv}")
