"""`wan-batch schedule ...`: batches fired by `wan-batch beat` on a cron or at a time, kept in the shared Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from pydantic import ValidationError

from jobs.errors import ManifestError, ScheduleError, UsageError
from jobs.pricing import shown_usd, to_nusd
from jobs.schedule import When
from runner.batches.costs import Priced, check_cap, estimate_jobs, price_options, prices_here
from runner.batches.intake import batch_id_for, load_batch
from runner.batches.notifications import check_notify_url, shown_notify_url
from runner.batches.providers import api_url_of, check_storage_url
from runner.batches.request import RunRequest
from runner.cli import options
from runner.cli.batch import refuse_manifest
from runner.cli.costs import echo_estimate
from runner.fal.providers import Provider
from runner.ledger.connection import redis_client
from runner.ledger.store import Ledger
from runner.schedules import beat
from runner.schedules.store import LATE_AFTER_S, Firing, ScheduleSpec, ScheduleStore
from runner.steps.dispatch import QUEUE
from runner.tasks import FIRE_TASK, create_app

_NEXT_SHOWN = 3


def _redis_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option("--redis", "redis_url", envvar="REDIS_URL", callback=options.require_redis,
                        help="The shared Redis that beat and the workers use (or REDIS_URL).")(command)  # fmt: skip


def _store(redis_url: str) -> ScheduleStore:
    return ScheduleStore(redis_client(redis_url))


@click.group()
def schedule() -> None:
    """Batches that `wan-batch beat` fires on a cron or at a time; each firing is a normal batch."""


@schedule.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cron", help='When, as a cron expression: "0 2 * * *" is 02:00 every day.')
@click.option("--at", "at", help='Once, at this time: "2026-12-01T02:00".')
@click.option("--tz", help="Time zone of --cron and --at, e.g. Europe/Berlin (default: this machine's).")
@click.option("--name", help="Name of the schedule (default: the manifest's file name).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True,
              help="Each firing writes to OUT/<name>/<date-time>/ (a path the workers see).")  # fmt: skip
@click.option("--priority", type=click.Choice(["low", "normal"]), default="low", show_default=True,
              help="fal queue priority of its jobs.")  # fmt: skip
@click.option("--overlap", type=click.Choice(["skip", "queue"]), default="skip", show_default=True,
              help="When the last firing still runs: skip this one, or start it when that ends.")  # fmt: skip
@click.option("--notify", help="POST each firing's summary as JSON to this URL.")
@click.option("--follow-file", is_flag=True, help="Read MANIFEST when it fires, not as it is now.")
@click.option("--base-url", help="Queue base URL: a gateway (with WAN_BATCH_GATEWAY_TOKEN) or another fal URL.")
@options.api_url
@click.option("--start-timeout-s", type=click.FloatRange(min=1, min_open=True),
              help="fal gives up on a request not started by then (default: 900 s, or 3600 s with --priority low).")
@options.max_in_flight
@options.max_attempts
@options.max_image_mb
@click.option("--endpoint", help="Endpoint of rows that name none.")
@options.allow_endpoint
@options.images
@options.storage_url
@options.upload_ttl
@options.webhook_url
@options.price
@options.max_cost
@click.option("--skip-invalid", is_flag=True, help="Run the valid rows of a manifest that has errors.")
@click.option("--replace", is_flag=True, help="Replace a schedule of the same name.")
@_redis_option
def add(manifest: Path, cron: str | None, at: str | None, tz: str | None, name: str | None, out: Path,
        notify: str | None, replace: bool, redis_url: str, **options: Any) -> None:  # fmt: skip
    """Schedule MANIFEST: validated and priced now, and stored as it is now (unless --follow-file).

    --max-cost caps each firing's batch; its prices are found again when it fires.
    """
    name = batch_id_for(manifest) if name is None else name
    now = datetime.now(UTC)
    try:
        when = When.from_options(cron, at, local_zone() if tz is None else tz, now)
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    _check_urls(notify, options["base_url"], options["api_url"])
    check_notify_url(options["webhook_url"], "--webhook-url")
    options["max_cost"] = options["max_cost"] if isinstance(options["max_cost"], Decimal) else None  # each firing: new
    request = RunRequest(manifest=manifest, **{name: options[name] for name in (
        "endpoint", "skip_invalid", "max_image_mb", "allowed_endpoints", "storage_url", "api_url")})  # fmt: skip
    check_storage_url(request)
    data = manifest.read_bytes()
    try:
        batch = load_batch(request, data)
    except ManifestError as exc:
        refuse_manifest(exc, f"{manifest}: not scheduled: fix the errors above (or pass --skip-invalid)")
    prices = prices_here({job.endpoint for job in batch.jobs}, price_options(options["prices"]),
                         api_url_of(request, Provider.fal("checked-here")))  # fmt: skip
    found = estimate_jobs(batch.jobs, prices)
    cap = None if options["max_cost"] is None else to_nusd(options["max_cost"])
    check_cap(cap, found)  # each firing's batch has its own
    try:
        spec = ScheduleSpec(name=name, when=when.to_dict(), manifest=str(manifest.resolve()), out=str(out.resolve()),
                            notify=notify, created_at=now.timestamp(), **options)  # fmt: skip
    except ValidationError:
        raise UsageError(f"--name: {name!r} is not a schedule name (letters, digits, . _ -; up to 64)") from None
    store = _store(redis_url)
    store.add(spec, data, replace=replace)
    beat.install(create_app(redis_url), name, when, QUEUE, since=now)
    click.echo(f"schedule {name}: {when.describe()}, {len(batch.jobs)} job(s) a firing, into {out.resolve() / name}/")
    echo_estimate(Priced(prices, found, cap), batch.jobs)
    for moment in when.next_times(now, _NEXT_SHOWN):
        click.echo(f"  next: {_shown_time(moment, when.tz)}")
    click.echo("`wan-batch beat` fires it and the workers run it (docker compose up runs both)", err=True)


@schedule.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_redis_option
def list_(as_json: bool, redis_url: str) -> None:
    """Each schedule: when, time zone, next run, and the last firing with its batch and outcome."""
    store, app = _store(redis_url), create_app(redis_url)
    rows = [_row(store, app, name) for name in store.names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedules; `wan-batch schedule add MANIFEST --cron ...` makes one")
    for row in rows:
        click.echo(f"{row['name']}  {row['describe']}  overlap {row['overlap']}, priority {row['priority']}")
        click.echo(f"  next: {row['next_shown']}")
        last = row["last"]
        click.echo(f"  last: {_firing_line(last, row['tz']) if last else 'never fired'}")


@schedule.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Latest firings shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_redis_option
def show(name: str, limit: int, as_json: bool, redis_url: str) -> None:
    """NAME's settings and its latest firings, newest first."""
    store = _store(redis_url)
    spec = store.get(name)
    firings = store.firings(name, limit)
    if as_json:
        data = {**_row(store, create_app(redis_url), name), "firings": [_firing_dict(f, store) for f in firings]}
        click.echo(json.dumps(data, indent=2))
        return
    source = "read when it fires" if spec.follow_file else "as it was when scheduled"
    click.echo(f"{name}: {spec.schedule.describe()}; manifest {spec.manifest} ({source}); "
               f"into {Path(spec.out) / name}/{'; paused' if spec.paused else ''}")  # fmt: skip
    for firing in firings:
        click.echo(f"  {_firing_line(_firing_dict(firing, store), spec.schedule.tz)}")


@schedule.command()
@click.argument("name")
@_redis_option
def remove(name: str, redis_url: str) -> None:
    """Delete NAME: it never fires again (the batches it made stay)."""
    store = _store(redis_url)
    store.get(name)
    beat.uninstall(create_app(redis_url), name)
    store.remove(name)
    click.echo(f"schedule {name} removed")


@schedule.command()
@click.argument("name")
@_redis_option
def pause(name: str, redis_url: str) -> None:
    """Stop NAME firing until `schedule resume` (a running batch goes on)."""
    _set_paused(name, redis_url, True)
    click.echo(f"schedule {name} paused")


@schedule.command()
@click.argument("name")
@_redis_option
def resume(name: str, redis_url: str) -> None:
    """Let NAME fire again, from its next time on (times passed while paused are not made up)."""
    spec = _set_paused(name, redis_url, False)
    when = spec.schedule
    following = when.next_after(datetime.now(UTC))
    if following is None:
        click.echo(f"schedule {name} resumed, but its time passed while it was paused: it will not fire; "
                   f"`wan-batch schedule run-now {name}` fires it now")  # fmt: skip
        return
    click.echo(f"schedule {name} resumed; next: {_shown_time(following, when.tz)}")


@schedule.command(name="run-now")
@click.argument("name")
@click.option("--wait-s", type=click.FloatRange(min=0), default=15.0, show_default=True,
              help="How long to wait for a worker to start it.")  # fmt: skip
@_redis_option
def run_now(name: str, wait_s: float, redis_url: str) -> None:
    """Fire NAME now, once, as its schedule would (overlap policy included)."""
    store = _store(redis_url)
    store.get(name)
    slot = time.time()
    create_app(redis_url).send_task(FIRE_TASK, args=[name, slot, "run-now"], queue=QUEUE)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        firing = next((f for f in store.firings(name, 5) if f.trigger == "run-now" and f.slot == slot), None)
        if firing is not None and firing.outcome != "starting":
            click.echo(_firing_line(_firing_dict(firing, store), store.get(name).schedule.tz))
            raise SystemExit(1 if firing.outcome == "error" else 0)
        time.sleep(0.2)
    click.echo(f"sent; no worker took it within {wait_s:g}s; `wan-batch schedule show {name}` will show it")


def local_zone() -> str:
    """This machine's IANA time zone (TZ, else /etc/localtime), or UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        candidates.append(str(localtime.resolve()).partition("/zoneinfo/")[2])
    for name in candidates:
        if name and _is_zone(name):
            return name
    return "UTC"


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_urls(notify: str | None, base_url: str | None, api_url: str | None = None) -> None:
    check_notify_url(notify)
    if base_url is not None:
        try:
            Provider(base_url=base_url, auth_scheme="Key", credential="checked-at-fire-time")
        except ValidationError:
            raise UsageError("--base-url: give a plain http(s) URL (credentials go in the environment)") from None
    if api_url is not None:
        api_url_of(RunRequest(manifest=Path("-"), api_url=api_url), Provider.fal("checked-at-fire-time"))


def _set_paused(name: str, redis_url: str, paused: bool) -> ScheduleSpec:
    store = _store(redis_url)
    spec = store.get(name).model_copy(update={"paused": paused})
    store.save(spec)
    beat.set_enabled(create_app(redis_url), name, not paused, since=datetime.now(UTC))
    return spec


def _row(store: ScheduleStore, app: Any, name: str) -> dict[str, Any]:
    spec = store.get(name)
    when = spec.schedule
    due = beat.next_due(app, name)
    if spec.paused:
        next_shown = "paused"
    elif due is None:
        next_shown = "never (it has fired)" if store.firings(name, 1) else "never (its time passed unfired)"
    elif due < datetime.now(UTC):
        next_shown = f"{_shown_time(due, when.tz)}: overdue; is `wan-batch beat` running?"
    else:
        next_shown = _shown_time(due, when.tz)
    firings = store.firings(name, 1)
    return {
        "name": name, "describe": when.describe(), "cron": when.cron.expr if when.cron else None,
        "at": when.at.isoformat() if when.at else None, "tz": when.tz, "paused": spec.paused,
        "overlap": spec.overlap, "priority": spec.priority,
        "notify": shown_notify_url(spec.notify) if spec.notify else None,
        "next_run": None if due is None or spec.paused else due.isoformat(), "next_shown": next_shown,
        "last": _firing_dict(firings[0], store) if firings else None,
    }  # fmt: skip


def _firing_dict(firing: Firing, store: ScheduleStore) -> dict[str, Any]:
    late_s = firing.late_s if firing.trigger == "schedule" else 0.0
    data = {**firing.model_dump(), "batch_id": firing.batch_id, "late_s": round(late_s, 1),
            "late": late_s > LATE_AFTER_S}  # fmt: skip
    if firing.outcome == "running":  # the ledger knows first when its batch ended; the summary follows
        info = Ledger(store.redis, store.keys).batch(firing.id)
        if info is not None and info.ended_at is not None:
            data.update(outcome=info.state, message="ended; its report is being written")
    return data


def _firing_line(firing: dict[str, Any], tz: str) -> str:
    fired = _shown_time(datetime.fromtimestamp(firing["fired_at"], UTC), tz)
    how = {"run-now": " (run-now)", "waited": " (started after waiting)"}.get(firing["trigger"], "")
    late = ""
    if firing["late"]:
        missed = f"; {firing['missed']} earlier time(s) missed" if firing["missed"] else ""
        late = f" (late by {_duration(firing['late_s'])}: no scheduler ran at its time{missed})"
    head = f"{fired}{how}{late} {firing['id']}: {firing['outcome']}"
    summary = firing["summary"]
    if summary:
        counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items() if n)
        failures = ", ".join(f"{kind} {n}" for kind, n in summary["failures_by_error_type"].items())
        head += f", {counts}" + (f" (failures: {failures})" if failures else "")
        if summary.get("estimated_cost_usd") is not None:
            head += f", estimated cost {shown_usd(Decimal(str(summary['estimated_cost_usd'])))}"
        head += f"; report {summary['report_csv']}"
    if firing["message"]:
        head += f"; {firing['message']}"
    if firing["notified"]:
        head += f"; notify {firing['notified']}"
    return head


def _shown_time(moment: datetime, tz: str) -> str:
    local = moment.astimezone(ZoneInfo(tz))
    shown = local.strftime("%Y-%m-%d %H:%M %Z")
    return shown if tz == "UTC" else f"{shown} ({moment.astimezone(UTC).strftime('%H:%M UTC')})"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}min" if minutes else f"{int(seconds)}s"
