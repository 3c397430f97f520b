"""Schedules: a manifest that `wan-batch beat` fires on a cron or at a time, each firing a normal batch.

A schedule's settings and the manifest's content as it was when scheduled
live in Redis beside the batches (`runner.schedules.store`); celery-redbeat keeps when
each fires next (`runner.schedules.beat`). A firing runs on a worker (`fire`): it
claims its slot, so two schedulers never make two batches of one slot;
applies the overlap policy; and enqueues the batch in OUT/<schedule>/<date-time>.
When the batch's last job ends (`batch_ended`), its summary is stored with the
firing, a firing that waited for it starts, and the summary can be POSTed to
the schedule's notify URL (`notify`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from jobs.errors import ManifestError, WanBatchError
from jobs.schedule import slot_label
from runner.batches.intake import Unattended, enqueue_batch, load_batch, write_report
from runner.batches.notifications import Notice, notify_try
from runner.batches.operations import purge_batches
from runner.batches.providers import provider_for
from runner.schedules.store import STARTING_STALE_S, Firing, ScheduleSpec, ScheduleStore, Trigger
from runner.settings import keep_days_from_env
from runner.steps.context import Context

log = logging.getLogger(__name__)


@dataclass
class Fired:
    """What a firing step leaves to do: a firing that waited starts, a notification goes out."""

    schedule: str
    firing: Firing | None = None
    #: The batch it enqueued (its first submits are due now).
    batch_id: str | None = None
    #: Ids of firings that waited and start now.
    start: list[str] = field(default_factory=list)
    #: POST `firing` to the schedule's notify URL.
    notify: bool = False
    #: POST this ended batch's summary to its own notify URL (`wan-batch submit --notify`).
    notify_batch: str | None = None


def fire(
    ctx: Context, name: str, slot: float, trigger: Trigger, token: str, sent_at: float | None = None, missed: int = 0
) -> Fired:
    """Fire schedule `name` for `slot`: claim the slot, apply the overlap policy, enqueue the batch.

    `token` identifies the message (its redelivery may go on; another
    scheduler's copy of the same slot may not). `sent_at` is when the
    scheduler sent it, `missed` how many earlier slots it missed. A schedule
    that is gone, or paused (for scheduled firings), fires nothing.
    """
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    spec = store.spec(name)
    if spec is None:
        log.warning("schedule %s is gone; its firing for %s is dropped", name, _when(slot))
        return Fired(name)
    if trigger == "schedule" and spec.paused:
        log.info("schedule %s is paused; its firing for %s is dropped", name, _when(slot))
        return Fired(name)
    if not store.claim_slot(name, slot, token):
        log.info("schedule %s already fired for %s", name, _when(slot))
        return Fired(name)
    firing = _firing_for(ctx, store, spec, slot, trigger, sent_at, missed)
    if firing.outcome != "starting":  # a redelivered message whose firing got further
        return Fired(name, firing)
    store.save_firing(name, firing)
    decision, holder, promoted = store.begin(name, firing.id, spec.overlap, lambda f: _running(ctx, store, name, f))
    start = [promoted] if promoted else []
    if decision == "go":
        fired = start_firing(ctx, store, spec, firing)
        fired.start += start
        return fired
    if decision == "wait":
        message = f"waits for {holder} to end (overlap: queue)"
        firing = firing.model_copy(update={"outcome": "waiting", "message": message})
    else:
        policy = "one firing already waits" if spec.overlap == "queue" else "overlap: skip"
        message = f"skipped: {holder} was still running ({policy})"
        firing = firing.model_copy(update={"outcome": "skipped", "message": message})
    store.save_firing(name, firing)
    log.info("schedule %s: %s", name, message)
    return Fired(name, firing, start=start)


def start_firing(ctx: Context, store: ScheduleStore, spec: ScheduleSpec, firing: Firing) -> Fired:
    """Enqueue the firing's batch; a manifest that no longer validates ends the firing as an error."""
    request = spec.request(firing.id)
    folder = Path(spec.out) / spec.name / firing.id.removeprefix(f"{spec.name}-")
    try:
        batch = load_batch(request, None if spec.follow_file else store.manifest(spec.name))
        unattended = Unattended(folder=folder, schedule=spec.name)
        info, _, _ = enqueue_batch(ctx, request, batch, provider_for(request), unattended)
    except ManifestError as exc:
        shown = "; ".join(str(d) for d in exc.diagnostics[:5])
        more = f" (and {len(exc.diagnostics) - 5} more)" if len(exc.diagnostics) > 5 else ""
        return _failed(store, spec, firing, f"the manifest does not validate: {shown}{more}")
    except (WanBatchError, OSError) as exc:
        return _failed(store, spec, firing, f"could not start: {exc}")
    except Exception as exc:  # the schedule must not stay held by a firing that never started
        log.exception("schedule %s: firing %s could not start", spec.name, firing.id)
        return _failed(store, spec, firing, f"could not start: {type(exc).__name__}: {exc}")
    running = firing.model_copy(update={"outcome": "running", "folder": info.folder})
    store.save_firing(spec.name, running)
    log.info("schedule %s fired batch %s: %d job(s) in %s", spec.name, info.id, info.jobs, info.folder)
    return Fired(spec.name, running, batch_id=info.id)


def batch_ended(ctx: Context, batch_id: str) -> Fired:
    """Write the ended batch's report; for a scheduled one, store its summary and start what waited; for one
    with a notify URL, store its summary for the notification.

    Safe to repeat: the same report is written again.
    """
    info = ctx.ledger.batch(batch_id)
    if info is None or not info.report_when_done:
        return Fired("")
    result = write_report(ctx.ledger, info, (info.ended_at or ctx.clock()) - info.created_at, {})
    if info.schedule is None and info.notify is not None:
        ctx.ledger.set_batch_summary(batch_id, result.summary_with_paths)
        return Fired("", notify_batch=batch_id)
    if info.schedule is None:
        return Fired("")
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    firing = store.firing(info.schedule, batch_id)
    spec = store.spec(info.schedule)
    if firing is None or spec is None:  # the schedule was removed meanwhile
        return Fired(info.schedule)
    ended = firing.model_copy(update={"outcome": "done", "summary": result.summary_with_paths,
                                      "ended_at": ctx.clock()})  # fmt: skip
    store.save_firing(spec.name, ended)
    promoted = store.end(spec.name, batch_id)
    _purge_old_batches(ctx)
    return Fired(spec.name, ended, start=[promoted] if promoted else [], notify=spec.notify is not None)


def start_waiting(ctx: Context, name: str, firing_id: str) -> Fired:
    """Start a firing that waited for the one before it."""
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    spec, firing = store.spec(name), store.firing(name, firing_id)
    redelivered = firing is not None and firing.outcome == "starting" and firing.trigger == "waited"
    if spec is None or firing is None or not (firing.outcome == "waiting" or redelivered):
        return Fired(name)
    if spec.paused:
        return _skipped_waiting(store, spec, firing)
    started = firing.model_copy(update={"outcome": "starting", "trigger": "waited", "message": None,
                                        "started_at": firing.started_at if redelivered else ctx.clock()})  # fmt: skip
    store.save_firing(name, started)
    return start_firing(ctx, store, spec, started)


def _skipped_waiting(store: ScheduleStore, spec: ScheduleSpec, firing: Firing) -> Fired:
    """A firing that waited while its schedule was paused does not start; the schedule is free again."""
    skipped = firing.model_copy(update={"outcome": "skipped", "message": "skipped: the schedule was paused"})
    store.save_firing(spec.name, skipped)
    promoted = store.end(spec.name, firing.id)
    return Fired(spec.name, skipped, start=[promoted] if promoted else [])


def notify(ctx: Context, name: str, firing_id: str, tries: int) -> float | None:
    """POST the firing's summary to the schedule's notify URL; the delay before trying again, or None."""
    store = ScheduleStore(ctx.ledger.redis, ctx.ledger.keys)
    spec, firing = store.spec(name), store.firing(name, firing_id)
    if spec is None or firing is None or spec.notify is None:
        return None
    payload = {"schedule": name, **firing.model_dump(exclude={"notified"}), "late_s": round(firing.late_s, 1)}
    delivery = notify_try(ctx.http, Notice(spec.notify, payload, f"schedule {name}", f"firing {firing_id}"), tries)
    if delivery.retry_in_s is None:
        store.save_firing(name, firing.model_copy(update={"notified": delivery.shown}))
    return delivery.retry_in_s


def _firing_for(
    ctx: Context, store: ScheduleStore, spec: ScheduleSpec, slot: float, trigger: Trigger, sent_at: float | None,
    missed: int,
) -> Firing:  # fmt: skip
    """The firing of `slot`: the one already recorded (a redelivered message), or a new one."""
    base = f"{spec.name}-{slot_label(_utc(slot), spec.schedule.tz)}"
    if trigger == "run-now":
        base += "-now"
    candidate, n = base, 1
    while True:
        existing = store.firing(spec.name, candidate)
        if existing is not None and existing.slot == slot and existing.trigger == trigger:
            return existing
        if existing is None and ctx.ledger.batch(candidate) is None:
            now = ctx.clock()
            return Firing(id=candidate, slot=slot, fired_at=now, trigger=trigger, outcome="starting", sent_at=sent_at,
                          missed=missed, started_at=now)  # fmt: skip
        n += 1
        candidate = f"{base}-{n}"


def _running(ctx: Context, store: ScheduleStore, name: str, firing_id: str) -> bool:
    """Whether the firing's batch is still going (or being set up)."""
    firing = store.firing(name, firing_id)
    if firing is None:
        return False
    if firing.outcome == "starting":
        return ctx.clock() - (firing.started_at or firing.fired_at) < STARTING_STALE_S
    if firing.outcome != "running":
        return False
    counts = ctx.ledger.counts(firing_id)
    return any(n for status, n in counts.items() if not status.is_final)


def _failed(store: ScheduleStore, spec: ScheduleSpec, firing: Firing, message: str) -> Fired:
    log.warning("schedule %s: firing %s %s", spec.name, firing.id, message)
    failed = firing.model_copy(update={"outcome": "error", "message": message})
    store.save_firing(spec.name, failed)
    promoted = store.end(spec.name, firing.id)
    return Fired(spec.name, failed, start=[promoted] if promoted else [], notify=spec.notify is not None)


def _purge_old_batches(ctx: Context) -> None:
    """With WAN_BATCH_KEEP_DAYS, drop the ledger entries of scheduled batches that ended longer ago."""
    try:
        keep_days = keep_days_from_env()
    except ValueError as exc:
        log.warning("%s; nothing is purged", exc)
        return
    if keep_days is None:
        return
    removed, _ = purge_batches(ctx.ledger, keep_days * 86400, scheduled_only=True)
    for purged in removed:
        log.info("purged batch %s (%d job(s)) from the ledger: it ended over %g day(s) ago", purged.batch_id,
                 purged.jobs, keep_days)  # fmt: skip


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _when(epoch_s: float) -> str:
    return _utc(epoch_s).strftime("%Y-%m-%d %H:%M:%S UTC")
