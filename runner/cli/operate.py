"""`wan-batch submit`, `batches`, `status`, `watch`, `cancel`, `retry`, `resume` and `beat`: batches that exist.

Each finds the ledger by `--redis URL` (or `REDIS_URL`), else in the output
folder `--out` of `wan-batch run`. On a shared Redis, workers act on what these
commands change at once; in an output folder, `wan-batch run` does on its next run.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from jobs.errors import ManifestError, UsageError
from jobs.pricing import shown_usd, usd
from jobs.report import brief
from jobs.status import JobStatus
from runner.batches import operations
from runner.batches.costs import MaxCost, cap_nusd
from runner.batches.intake import load_batch
from runner.batches.notifications import shown_notify_url
from runner.batches.request import RunRequest
from runner.batches.run import check_submit, open_ledger, submit_batch
from runner.cli import options
from runner.cli.batch import refuse_manifest
from runner.cli.costs import echo_estimate
from runner.cli.progress import ProgressBar
from runner.fal.local_images import local_refs
from runner.ledger.store import Ledger
from runner.settings import CREDENTIAL_ENV, credential_from_env
from runner.steps.context import Context, make_context
from runner.tasks import create_app

_WATCH_EVERY_S = 0.5


def _where(command: Callable[..., None]) -> Callable[..., None]:
    redis_option = click.option("--redis", "redis_url", envvar="REDIS_URL", help="The shared Redis (or REDIS_URL).")
    out_option = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"),
                              show_default=True, help="Output folder of `wan-batch run` (without --redis).")
    return out_option(redis_option(command))


def _batch_view(ledger: Ledger, batch_id: str) -> operations.BatchView:
    view = operations.view_batch(ledger, batch_id)
    if view is None:
        raise click.UsageError(f"no batch {batch_id!r} here; `wan-batch batches` lists them")
    return view


def _context(ledger: Ledger, http: httpx.Client) -> Context:
    return make_context(ledger, http)


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_where
@click.option("--base-url", help="Queue base URL: a gateway (with WAN_BATCH_GATEWAY_TOKEN) or another fal URL.")
@options.max_in_flight
@options.max_attempts
@options.max_image_mb
@click.option("--endpoint", help="Endpoint of rows that name none.")
@options.allow_endpoint
@options.max_jobs
@click.option("--skip-invalid", is_flag=True, help="Submit the valid rows of a manifest that has errors.")
@click.option("--batch-id", help="Batch id (default: the manifest's file name).")
@click.option("--priority", type=click.Choice(["normal", "low"]), help="fal queue priority.")
@click.option("--start-timeout-s", type=click.FloatRange(min=1, min_open=True),
              help="fal gives up on a request not started by then (default: 900 s, or 3600 s with --priority low).")
@options.api_url
@options.notify
@options.webhook_url
@options.images
@options.storage_url
@options.upload_ttl
@options.price
@options.max_cost
def submit(manifest: Path, **options: Any) -> None:
    """Enqueue MANIFEST in a shared Redis for its workers and print the batch id at once.

    With --notify, the worker that ends the batch POSTs its summary (tried again for minutes if it fails).
    """
    request = RunRequest(manifest=manifest, **options)
    try:
        check_submit(request)  # before the manifest is read
        batch = load_batch(request)
        info, synced, priced = submit_batch(request, batch)
    except ManifestError as exc:
        refuse_manifest(exc)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(info.id)
    click.echo(f"{info.jobs} job(s), {synced.get('added', 0)} new; watch it with `wan-batch watch {info.id}`", err=True)
    echo_estimate(priced, batch.jobs)
    if credential_from_env(info.auth_scheme) is None:
        click.echo(f"no {CREDENTIAL_ENV[info.auth_scheme]} here: the workers use their own credential", err=True)
    if info.images == "inline" and local_refs(batch.jobs):
        hint = "; set FAL_KEY here to upload them to fal storage once instead" if info.auth_scheme == "Key" else ""
        click.echo(f"local images are sent inline: every worker must read them in {request.manifest.resolve().parent}"
                   f"{hint}", err=True)  # fmt: skip
    if info.notify is not None:
        click.echo(f"when it ends, a worker POSTs its summary to {shown_notify_url(info.notify)}", err=True)


@click.command()
@_where
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def batches(redis_url: str | None, out: Path, as_json: bool) -> None:
    """List batches with their counts and age."""
    with open_ledger(redis_url, out) as (ledger, _):
        found = operations.list_batches(ledger)
    rows: list[dict[str, Any]] = [
        {"batch_id": info.id, "state": info.state, "age_s": round(time.time() - info.created_at),
         "counts": {s.value: n for s, n in counts.items() if n}}
        for info, counts in found
    ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        shown = ", ".join(f"{n} {state}" for state, n in row["counts"].items()) or "no jobs"
        click.echo(f"{row['batch_id']}  {row['state']}  {_age(row['age_s'])} old  {shown}")


@click.command()
@click.argument("batch_id")
@_where
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(batch_id: str, redis_url: str | None, out: Path, as_json: bool) -> None:
    """Counts per status, the estimated cost so far, the jobs at fal with their queue position, and the latest
    errors by type."""
    with open_ledger(redis_url, out) as (ledger, _):
        view = _batch_view(ledger, batch_id)
    data = view.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    created = datetime.fromtimestamp(view.info.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    click.echo(f"batch {batch_id} ({view.info.state}, created {created}): "
               + ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n))  # fmt: skip
    if "cancel" in data:
        click.echo(f"  cancel: {_cancel_line(data['cancel'])}"
                   + (f"; {data['cancel']['not_reached_yet']} not settled yet" if data["cancel"]["not_reached_yet"]
                      else ""))  # fmt: skip
    if "cost" in data:
        click.echo(_cost_line(view, data["cost"]["budget_exceeded"]))
    for row in data["in_flight"]:
        position = "" if row["queue_position"] is None else f" queue position {row['queue_position']}"
        log_line = f"  {row['last_log']}" if row["last_log"] else ""
        click.echo(f"  {row['job_id']}: {row['status']}{position}{log_line}")
    for error_type, group in data["errors"].items():
        click.echo(f"  {error_type}: {group['count']} job(s)")
        for latest in group["latest"][:3]:
            click.echo(f"    {latest['job_id']} (row {latest['row']}): {brief(latest['message'] or '', 200)}")


def _cost_line(view: operations.BatchView, budget_exceeded: int) -> str:
    line = f"  estimated cost so far: {operations.cost_text(view.info, view.spent_nusd)}"
    return line + (f"; {budget_exceeded} job(s) not sent for it (budget_exceeded)" if budget_exceeded else "")


@click.command()
@click.argument("batch_id")
@_where
def watch(batch_id: str, redis_url: str | None, out: Path) -> None:
    """Show the live progress bar of BATCH_ID until it ends."""
    with open_ledger(redis_url, out) as (ledger, _):
        view = _batch_view(ledger, batch_id)
        with ProgressBar(sum(view.counts.values()), enabled=True) as bar:
            while True:
                counts = ledger.counts(batch_id)
                bar.update(counts, ledger.in_flight(batch_id))
                if all(n == 0 for s, n in counts.items() if not s.is_final):
                    break
                time.sleep(_WATCH_EVERY_S)
    click.echo(f"batch {batch_id} ended: " + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n))


@click.command()
@click.argument("batch_id")
@_where
@click.option("--wait-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Without a credential here: how long to wait for the workers to make the cancels at fal.")
def cancel(batch_id: str, redis_url: str | None, out: Path, wait_s: float) -> None:
    """Stop BATCH_ID: nothing new is sent, and every request at fal is cancelled there.

    With the batch's credential here (FAL_KEY, or the gateway token) this
    makes the cancels; without, the workers make them (they hold it) and this
    waits up to --wait-s for them. A request fal had already finished is paid
    for: its outputs are collected, not discarded. Exits 0 when every request
    was settled, 1 when some were not reached yet (they stay tracked).
    """
    with open_ledger(redis_url, out) as (ledger, _), httpx.Client() as http:
        view = _batch_view(ledger, batch_id)
        call_fal = credential_from_env(view.info.auth_scheme) is not None
        summary = operations.cancel_batch(_context(ledger, http), batch_id, call_fal)
        waited = time.monotonic() + (0.0 if call_fal else wait_s)
        while summary["not_reached_yet"] and time.monotonic() < waited:
            time.sleep(_WATCH_EVERY_S)
            summary = operations.cancel_summary(ledger.tallies(batch_id), ledger.counts(batch_id))
    click.echo(f"batch {batch_id} cancelled: " + _cancel_line(summary))
    if summary["not_reached_yet"]:
        who = "the workers keep trying" if redis_url else \
            "a `wan-batch run` going on in this folder settles them, or `cancel` again with its credential"  # fmt: skip
        click.echo(f"  {summary['not_reached_yet']} request(s) not settled yet: still tracked, {who};"
                   f" `wan-batch status {batch_id}` shows them", err=True)  # fmt: skip
        raise SystemExit(1)


def _cancel_line(summary: dict[str, int]) -> str:
    shown = [f"{summary[name]} {what}" for name, what in operations.CANCEL_TALLIES.items() if summary.get(name)]
    if summary.get("collecting"):
        shown.append(f"{summary['collecting']} being collected")
    return ", ".join(shown) or "nothing was left to cancel"


@click.command()
@click.argument("batch_id")
@_where
@click.option("--status", "statuses", multiple=True, type=click.Choice(["failed", "cancelled"]), default=["failed"],
              show_default=True, help="Which jobs to retry (repeatable).")
@click.option("--error-type", "error_types", multiple=True, help="Only jobs that failed so (repeatable).")
@click.option("--ids", "ids_file", type=click.File(), help="Only the job ids in this file, one a line.")
@options.max_cost
def retry(batch_id: str, redis_url: str | None, out: Path, statuses: tuple[str, ...], error_types: tuple[str, ...],
          ids_file: Any, max_cost: MaxCost) -> None:  # fmt: skip
    """Give exactly the chosen jobs of BATCH_ID a new attempt; jobs that succeeded never run again.

    --max-cost sets the batch's cost cap first: jobs that ended budget_exceeded need a higher one.
    """
    ids = [line.strip() for line in ids_file if line.strip()] if ids_file else None
    with open_ledger(redis_url, out) as (ledger, _), httpx.Client() as http:
        view = _batch_view(ledger, batch_id)
        present = (set(view.failures) if "failed" in statuses else set()) | \
            ({"cancelled"} if "cancelled" in statuses else set())  # fmt: skip
        unknown = [error_type for error_type in error_types if error_type not in present]
        if unknown:  # a typo would otherwise retry nothing and look fine
            known = ", ".join(f"{t} ({n})" for t, n in view.failures.items()) or "none: no job of it failed"
            click.echo(f"batch {batch_id}: no job failed as {', '.join(unknown)}; its error types: {known}", err=True)
            raise SystemExit(1)
        if max_cost is not None:  # before any job is back in line: workers may send it at once
            ledger.set_cost_cap(batch_id, cap_nusd(max_cost, None))
        requeued = operations.retry_jobs(_context(ledger, http), batch_id, [JobStatus(s) for s in statuses],
                                         error_types or None, ids)  # fmt: skip
        cap, spent = cap_nusd(max_cost, view.info), ledger.spent_nusd(batch_id)
    click.echo(f"batch {batch_id}: {len(requeued)} job(s) queued for a new attempt" + _next_step(redis_url))
    if max_cost is not None and redis_url is None:  # the run that sends them would set its own cap
        shown = "none" if cap is None else shown_usd(usd(cap))
        click.echo(f"  its cost cap is now {shown}: rerun without --max-cost to keep it", err=True)
    if requeued and cap is not None and max_cost is None:
        left = shown_usd(usd(max(0, cap - spent)))
        click.echo(f"  cost cap {shown_usd(usd(cap))}: {shown_usd(usd(spent))} spent, {left} left; a job that does not"
                   " fit ends budget_exceeded again (raise the cap: --max-cost)", err=True)  # fmt: skip


@click.command()
@click.argument("batch_id")
@_where
@click.option("--owners-gone", is_flag=True,
              help="The workers that ran its steps are known to be dead: give out even the steps they held.")
@click.option("--submit-lost-after-s", type=click.FloatRange(min=0), hidden=True,
              help="Before timers: 0 meant --owners-gone; other values are ignored.")
def resume(batch_id: str, redis_url: str | None, out: Path, owners_gone: bool,
           submit_lost_after_s: float | None) -> None:  # fmt: skip
    """Make the next step of every unfinished job of BATCH_ID due now: polled again, never resubmitted.

    Workers do this on their own (a step whose worker died comes back within a minute); this is for
    not waiting. A step a live worker runs is left to it.
    """
    with open_ledger(redis_url, out) as (ledger, _), httpx.Client() as http:
        _batch_view(ledger, batch_id)
        gone = owners_gone or submit_lost_after_s == 0
        count = operations.resume_batch(_context(ledger, http), batch_id, owners_gone=gone)
    click.echo(f"batch {batch_id}: {count} step(s) due now" + _next_step(redis_url))


@click.command()
@click.argument("batch_id")
@_where
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in JobStatus]),
              default=["failed"], show_default=True, help="Which jobs to write (repeatable).")
@click.option("--format", "kind", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="jsonl keeps every value as it is; csv writes lists and objects as `name:json` columns.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here (default: standard output).")
def export(batch_id: str, redis_url: str | None, out: Path, statuses: tuple[str, ...], kind: str,
           output: Path | None) -> None:  # fmt: skip
    """Write the jobs of BATCH_ID in a status (failed by default) as a manifest that validates, to fix by hand
    and run as a new batch."""
    with open_ledger(redis_url, out) as (ledger, _):
        _batch_view(ledger, batch_id)
        rows = operations.export_rows(ledger, batch_id, [JobStatus(s) for s in statuses])
    text = _as_csv(rows) if kind == "csv" else "".join(json.dumps(row) + "\n" for row in rows)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
    click.echo(f"batch {batch_id}: {len(rows)} job(s) written" + (f" to {output}" if output else ""), err=True)


def _as_csv(rows: list[dict[str, Any]]) -> str:
    def typed(key: str, value: Any) -> bool:  # a value that is no text keeps its type in a `name:json` column
        return not isinstance(value, str) and not key.startswith("_") and key != "pass_through"

    cells = [{(f"{k}:json" if typed(k, v) else k): (json.dumps(v) if typed(k, v) else v) for k, v in row.items()}
             for row in rows]  # fmt: skip
    columns = list(dict.fromkeys(name for row in cells for name in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(cells)
    return text.getvalue()


@click.command()
@click.option("--redis", "redis_url", envvar="REDIS_URL", callback=options.require_redis,
              help="The shared Redis (or REDIS_URL).")
@options.loglevel
def beat(redis_url: str, loglevel: str) -> None:
    """Run the scheduler: the schedules (`wan-batch schedule`) and a sweep, the safety net of the timers.

    Its state lives in Redis (celery-redbeat): run as many as you like, one fires.
    """
    create_app(redis_url).Beat(loglevel=loglevel).run()


@click.command()
@_where
@click.option("--older-than", "older_than_s", callback=options.duration_s,
              help="Only batches that ended longer ago than this: 30d, 12h, 90min (default: 30d; with --batch: any).")
@click.option("--batch", "batch_id", help="Only this batch (it must have ended).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def purge(redis_url: str | None, out: Path, older_than_s: float | None, batch_id: str | None, as_json: bool) -> None:
    """Remove finished batches from the ledger; their folders, reports and images stay.

    A batch is finished when every job of it is final. Workers do this for
    scheduled batches on their own with WAN_BATCH_KEEP_DAYS.
    """
    if older_than_s is None and batch_id is None:
        older_than_s = 30 * 86400.0
    with open_ledger(redis_url, out) as (ledger, _):
        if batch_id is not None and ledger.batch(batch_id) is None:
            raise click.UsageError(f"no batch {batch_id!r} here; `wan-batch batches` lists them")
        removed, unfinished = operations.purge_batches(ledger, older_than_s, batch_id)
    if as_json:
        click.echo(json.dumps({"removed": [vars(p) for p in removed], "not_finished": unfinished}, indent=2))
        return
    for purged in removed:
        ended = datetime.fromtimestamp(purged.ended_at, UTC).strftime("%Y-%m-%d %H:%M UTC") if purged.ended_at else "?"
        click.echo(f"removed batch {purged.batch_id}: {purged.jobs} job(s), ended {ended}")
    for kept in unfinished:
        click.echo(f"kept batch {kept}: it has unfinished jobs (cancel it first)", err=True)
    click.echo(f"{len(removed)} batch(es) removed from the ledger; folders, reports and images are left as they are")
    if unfinished:
        raise SystemExit(1)


def _next_step(redis_url: str | None) -> str:
    return "; the workers take it from here" if redis_url else "; `wan-batch run` on its manifest runs them"


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
