"""A schedule's firings on a real Redis: one batch per slot, the overlap policy, the summary, the notification."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobs.endpoints import WAN25_I2I
from jobs.lifecycle import JobUpdate, Move, plan
from jobs.pricing import OPTION_SOURCE, Price, Unit
from jobs.schedule import When
from jobs.status import IN_FLIGHT, JobStatus
from runner.batches import operations
from runner.batches.notifications import WORKER_NOTIFY
from runner.ledger.store import Ledger
from runner.ledger.timers import Timer, TimerKind
from runner.schedules import beat, firings
from runner.schedules.store import STARTING_STALE_S, Firing, ScheduleSpec, ScheduleStore
from runner.settings import WorkerSettings
from runner.steps.context import Context
from runner.steps.dispatch import QUEUE
from runner.tasks import create_app
from tests.sim_world import run_until_quiet
from tests.test_run_e2e import NO_FAL_API, write_manifest

SLOT = datetime(2026, 11, 22, 1, 0, tzinfo=UTC).timestamp()  # 02:00 in Berlin
HOUR = 3600.0
NOTIFY_TRIES = WORKER_NOTIFY.tries


@pytest.fixture
def ctx(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    """A worker's context; no test here reaches fal (the batches are only enqueued, their images inline)."""
    monkeypatch.setenv("FAL_KEY", "schedule-test-key")
    with httpx.Client() as http:
        yield Context(Ledger(redis_client), http, queue_client=lambda _batch: pytest.fail("no call to fal expected"),
                      history_client=lambda _batch: pytest.fail("no call to fal expected"),
                      settings=WorkerSettings())  # fmt: skip


def add_schedule(ctx: Context, tmp_path: Path, jobs: int = 3, **spec: Any) -> tuple[ScheduleSpec, Path]:
    manifest = write_manifest(tmp_path, jobs)
    when = When.from_options("0 2 * * *", None, "Europe/Berlin", datetime(2026, 11, 21, tzinfo=UTC))
    values = {"name": "nightly", "when": when.to_dict(), "manifest": str(manifest), "out": str(tmp_path / "out"),
              "base_url": "http://127.0.0.1:9", "api_url": NO_FAL_API, "images": "inline", "created_at": time.time(),
              **spec}  # fmt: skip
    made = ScheduleSpec.model_validate(values)
    ScheduleStore(ctx.ledger.redis).add(made, manifest.read_bytes())
    return made, manifest


def end_batch(ctx: Context, batch_id: str, failed: int = 0) -> None:
    """End every job of the batch through its lifecycle, as workers would: the first `failed` as model errors."""
    ended = 0
    while True:
        ctx.ledger.admit(batch_id)
        live = ctx.ledger.records_with(batch_id, IN_FLIGHT)
        if not live:
            return
        for record in live:
            moves = [(Move.FAIL, JobUpdate(error_type="model_error", error_message="boom", finished_at=time.time()))]
            if ended >= failed:
                moves = [(Move.SEND, JobUpdate(attempts=1)), (Move.ACCEPT, JobUpdate(request_id=f"r-{record.job.id}")),
                         (Move.COMPLETE, JobUpdate()), (Move.SUCCEED, JobUpdate(finished_at=time.time()))]  # fmt: skip
            for what, update in moves:
                applied = ctx.ledger.apply(batch_id, plan(record, what, update, time.time()))
                assert applied is not None
                record = applied.record
            ended += 1


def store_of(ctx: Context) -> ScheduleStore:
    return ScheduleStore(ctx.ledger.redis)


def test_a_firing_enqueues_a_batch_in_its_dated_folder_with_low_priority(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path)
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="message-1")
    assert fired.firing is not None and fired.firing.outcome == "running"
    assert fired.firing.id == "nightly-2026-11-22T0200"
    info = ctx.ledger.batch(fired.firing.id)
    assert info is not None
    assert Path(info.folder) == (tmp_path / "out" / "nightly" / "2026-11-22T0200").resolve()
    assert (info.priority, info.schedule, info.report_when_done, info.jobs) == ("low", "nightly", True, 3)
    assert fired.batch_id == info.id
    assert ctx.ledger.counts(info.id)[JobStatus.ADMITTED] == 3, "the window admits them"
    assert [t.item for t in map(Timer.from_member, ctx.ledger.redis.zrange("wb:timers", 0, -1))] == ["job0", "job1", "job2"]
    assert "schedule-test-key" not in json.dumps(info.model_dump()), "no credential is stored with the batch"


def test_each_firing_is_priced_and_capped_as_its_schedule_says(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, prices=(f"{WAN25_I2I}=0.03/image",), max_cost=Decimal("0.06"))
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="message-1")
    assert fired.firing is not None and fired.firing.outcome == "running"
    info = ctx.ledger.batch(fired.firing.id)
    assert info is not None and info.max_cost_nusd == 60_000_000
    assert info.price_of(WAN25_I2I) == Price(WAN25_I2I, Decimal("0.03"), Unit.IMAGE, OPTION_SOURCE)


def test_a_slot_fires_once_however_many_schedulers_send_it(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path)
    first = firings.fire(ctx, "nightly", SLOT, "schedule", token="from-beat-a")
    second = firings.fire(ctx, "nightly", SLOT, "schedule", token="from-beat-b")
    assert first.firing is not None and second.firing is None and second.batch_id is None
    redelivered = firings.fire(ctx, "nightly", SLOT, "schedule", token="from-beat-a")
    assert redelivered.firing == first.firing and redelivered.batch_id is None, "a redelivered message does not redo it"
    assert ctx.ledger.batch_ids() == ["nightly-2026-11-22T0200"]
    assert len(store_of(ctx).firings("nightly")) == 1


def test_overlap_skip_names_the_running_batch(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, overlap="skip")
    running = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    skipped = firings.fire(ctx, "nightly", SLOT + 24 * HOUR, "schedule", token="t2").firing
    assert running is not None and skipped is not None
    assert skipped.outcome == "skipped" and skipped.batch_id is None
    assert skipped.message == f"skipped: {running.id} was still running (overlap: skip)"
    assert ctx.ledger.batch(skipped.id) is None
    end_batch(ctx, running.id)
    assert firings.batch_ended(ctx, running.id).start == []
    third = firings.fire(ctx, "nightly", SLOT + 48 * HOUR, "schedule", token="t3").firing
    assert third is not None and third.outcome == "running", "once the last batch ended, the next one runs"


def test_overlap_queue_waits_for_the_running_batch_then_starts(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, overlap="queue")
    running = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    waiting = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t2").firing
    extra = firings.fire(ctx, "nightly", SLOT + 2 * HOUR, "schedule", token="t3").firing
    assert running is not None and waiting is not None and extra is not None
    assert waiting.outcome == "waiting" and waiting.message == f"waits for {running.id} to end (overlap: queue)"
    assert extra.outcome == "skipped" and "one firing already waits" in (extra.message or "")
    end_batch(ctx, running.id)
    ended = firings.batch_ended(ctx, running.id)
    assert ended.start == [waiting.id]
    started = firings.start_waiting(ctx, "nightly", waiting.id)
    assert started.firing is not None and started.firing.outcome == "running" and started.firing.trigger == "waited"
    assert ctx.ledger.batch(waiting.id) is not None
    assert firings.start_waiting(ctx, "nightly", waiting.id).firing is None, "a repeated start does nothing"


def test_a_waiting_firing_starts_even_if_the_end_of_the_one_before_was_never_told(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, overlap="queue")
    running = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    waiting = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t2").firing
    assert running is not None and waiting is not None
    end_batch(ctx, running.id)  # ... and its end task is lost
    later = firings.fire(ctx, "nightly", SLOT + 2 * HOUR, "schedule", token="t3")
    assert later.start == [waiting.id], "the waiting firing goes first"
    assert later.firing is not None and later.firing.outcome == "waiting"


def test_redelivered_messages_of_a_waiting_firing_lose_nothing(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, overlap="queue")
    running = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    waiting = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t2").firing
    assert running is not None and waiting is not None
    store = store_of(ctx)
    store.save_firing("nightly", waiting.model_copy(update={"outcome": "starting"}))  # cut off before "waiting"
    again = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t2").firing
    assert again is not None and again.outcome == "waiting", "the firing recognises its own place in line"
    end_batch(ctx, running.id)
    assert firings.batch_ended(ctx, running.id).start == [waiting.id]
    # The worker starting it dies after marking it as starting; its message is delivered again.
    store.save_firing("nightly", waiting.model_copy(update={"outcome": "starting", "trigger": "waited"}))
    started = firings.start_waiting(ctx, "nightly", waiting.id).firing
    assert started is not None and started.outcome == "running" and ctx.ledger.batch(waiting.id) is not None


def test_a_firing_held_up_in_setup_still_holds_the_schedule(ctx: Context, tmp_path: Path) -> None:
    """Staleness counts from when setting up began (after waiting), not from when the firing came."""
    add_schedule(ctx, tmp_path, overlap="skip")
    store = store_of(ctx)
    now = time.time()
    long_waited = Firing(id="nightly-long-waited", slot=SLOT, fired_at=now - 2 * STARTING_STALE_S,
                         trigger="waited", outcome="starting", started_at=now - 5)  # fmt: skip
    store.save_firing("nightly", long_waited)
    assert store.begin("nightly", long_waited.id, "skip", lambda _f: False)[0] == "go"
    later = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t9").firing
    assert later is not None and later.outcome == "skipped"
    store.save_firing("nightly", long_waited.model_copy(update={"started_at": now - 2 * STARTING_STALE_S}))
    latest = firings.fire(ctx, "nightly", SLOT + 2 * HOUR, "schedule", token="t10").firing
    assert latest is not None and latest.outcome == "running", "a setup cut off long ago holds nothing"


def test_a_firing_that_blows_up_while_starting_is_an_error_and_frees_the_schedule(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_schedule(ctx, tmp_path)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(firings, "enqueue_batch", broken)  # no real peer fails this way on demand
    failed = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert failed is not None and failed.outcome == "error"
    assert failed.message == "could not start: RuntimeError: disk on fire"
    monkeypatch.undo()
    monkeypatch.setenv("FAL_KEY", "schedule-test-key")
    again = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t2").firing
    assert again is not None and again.outcome == "running"


def test_a_firing_that_waited_while_its_schedule_was_paused_does_not_start(ctx: Context, tmp_path: Path) -> None:
    spec, _ = add_schedule(ctx, tmp_path, overlap="queue")
    running = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    waiting = firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t2").firing
    assert running is not None and waiting is not None
    store_of(ctx).save(spec.model_copy(update={"paused": True}))
    end_batch(ctx, running.id)
    assert firings.batch_ended(ctx, running.id).start == [waiting.id]
    skipped = firings.start_waiting(ctx, "nightly", waiting.id).firing
    assert (
        skipped is not None and skipped.outcome == "skipped" and skipped.message == "skipped: the schedule was paused"
    )
    assert ctx.ledger.batch(waiting.id) is None
    store_of(ctx).save(spec)
    assert firings.fire(ctx, "nightly", SLOT + 2 * HOUR, "schedule", token="t3").firing.outcome == "running"  # type: ignore[union-attr]


def test_the_stored_manifest_is_fired_unless_follow_file(ctx: Context, tmp_path: Path) -> None:
    _, manifest = add_schedule(ctx, tmp_path, jobs=3)
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")  # the file now has one row
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert fired is not None and ctx.ledger.batch(fired.id).jobs == 3  # type: ignore[union-attr]
    store_of(ctx).save(store_of(ctx).get("nightly").model_copy(update={"follow_file": True}))
    end_batch(ctx, fired.id)
    firings.batch_ended(ctx, fired.id)
    followed = firings.fire(ctx, "nightly", SLOT + 24 * HOUR, "schedule", token="t2").firing
    assert followed is not None and ctx.ledger.batch(followed.id).jobs == 1  # type: ignore[union-attr]


def test_a_manifest_that_broke_makes_an_error_firing_and_frees_the_schedule(ctx: Context, tmp_path: Path) -> None:
    _, manifest = add_schedule(ctx, tmp_path, follow_file=True, notify="https://hooks.example.test/T0K3N")
    row = json.loads(manifest.read_text().splitlines()[0])
    manifest.write_text(json.dumps({**row, "num_images": 9}) + "\n")
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1")
    assert fired.firing is not None and fired.firing.outcome == "error" and fired.notify
    assert fired.firing.message is not None and fired.firing.message.startswith("the manifest does not validate: ")
    assert f"{manifest}:1: " in fired.firing.message and "num_images" in fired.firing.message
    assert ctx.ledger.batch_ids() == [], "nothing was submitted"
    manifest.write_text(json.dumps(row) + "\n")
    again = firings.fire(ctx, "nightly", SLOT + 24 * HOUR, "schedule", token="t2").firing
    assert again is not None and again.outcome == "running", "the failed firing holds nothing"


def test_paused_and_removed_schedules_fire_nothing_scheduled(ctx: Context, tmp_path: Path) -> None:
    spec, _ = add_schedule(ctx, tmp_path)
    store = store_of(ctx)
    store.save(spec.model_copy(update={"paused": True}))
    assert firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing is None
    now = firings.fire(ctx, "nightly", SLOT + 60, "run-now", token="t2").firing
    assert now is not None and now.id == "nightly-2026-11-22T0201-now", "run-now fires a paused schedule"
    store.remove("nightly")
    assert firings.fire(ctx, "nightly", SLOT + HOUR, "schedule", token="t3").firing is None
    assert store.names() == [] and store.firings("nightly") == []


def test_two_firings_in_one_minute_get_their_own_batches(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, overlap="queue")
    first = firings.fire(ctx, "nightly", SLOT + 1.25, "run-now", token="t1").firing
    second = firings.fire(ctx, "nightly", SLOT + 1.5, "run-now", token="t2").firing
    assert first is not None and second is not None
    assert (first.id, second.id) == ("nightly-2026-11-22T0200-now", "nightly-2026-11-22T0200-now-2")


def test_the_end_of_a_scheduled_batch_stores_its_summary_and_report(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, jobs=3)
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert fired is not None
    end_batch(ctx, fired.id, failed=1)
    assert ctx.timers.due_at(Timer.end(fired.id)) is not None, "the step that ended its last job set its end"
    ended = firings.batch_ended(ctx, fired.id)
    firing = store_of(ctx).firing("nightly", fired.id)
    assert firing is not None and ended.firing == firing and not ended.notify
    assert firing.outcome == "done" and firing.summary is not None and firing.ended_at is not None
    assert firing.summary["counts"]["succeeded"] == 2 and firing.summary["counts"]["failed"] == 1
    assert firing.summary["failures_by_error_type"] == {"model_error": 1}
    report = json.loads(Path(firing.summary["report_json"]).read_text())
    assert report["batch_id"] == fired.id and Path(firing.summary["report_csv"]).is_file()


def test_the_end_of_an_unattended_batch_is_set_once_and_again_after_a_retry(ctx: Context, tmp_path: Path) -> None:
    add_schedule(ctx, tmp_path, jobs=2)
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert fired is not None
    end = Timer.end(fired.id)
    assert ctx.timers.due_at(end) is None, "jobs are still waiting"
    end_batch(ctx, fired.id, failed=1)
    assert ctx.timers.due_at(end) is not None
    requeued = operations.retry_jobs(ctx, fired.id)
    assert len(requeued) == 1 and ctx.timers.due_at(end) is None, "retried: it has not ended"
    end_batch(ctx, fired.id)
    assert ctx.timers.due_at(end) is not None, "the retried batch ends again"


def test_workers_end_an_unattended_batch_once_with_its_report(world_factory: Any) -> None:
    world = world_factory(jobs=3, max_in_flight=2, report_when_done=True)
    world.ctx.ledger.admit("b")
    ran = run_until_quiet(world)
    assert [t for t in ran if t.kind is TimerKind.END] == [Timer.end("b")], "exactly once"
    report = json.loads((world.folder / "report.json").read_text())
    assert report["summary"]["counts"]["succeeded"] == 3


def test_an_end_whose_report_cannot_be_written_is_tried_again_later(world_factory: Any, tmp_path: Path) -> None:
    world = world_factory(jobs=1, report_when_done=True)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    info = world.ctx.ledger.batch("b")
    world.ctx.ledger.save_batch(info.model_copy(update={"folder": str(blocker / "b")}))
    world.ctx.ledger.admit("b")
    world.force("j0", Move.FAIL, error_type="x")
    before = time.time()
    world.run(Timer.end("b"))
    due_at = world.ctx.timers.due_at(Timer.end("b"))
    assert due_at is not None and due_at > before + 2, "again after a backoff"
    assert world.ctx.timers.tries(Timer.end("b")) == 1


def test_notify_posts_the_summary_and_retries_a_failed_delivery(
    ctx: Context, tmp_path: Path, hook: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = hook
    caplog.set_level(logging.INFO)
    add_schedule(ctx, tmp_path, jobs=2, notify=url)
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert fired is not None
    end_batch(ctx, fired.id, failed=1)
    assert firings.batch_ended(ctx, fired.id).notify
    handler.answers = [503]
    assert firings.notify(ctx, "nightly", fired.id, tries=0) == 5.0, "a failed delivery is tried again later"
    assert firings.notify(ctx, "nightly", fired.id, tries=1) is None
    firing = store_of(ctx).firing("nightly", fired.id)
    assert firing is not None and firing.notified == "sent (HTTP 200)"
    payload = handler.received[-1]["json"]
    assert handler.received[-1]["path"] == "/hooks/S3CR3T"
    assert payload["schedule"] == "nightly" and payload["id"] == fired.id and payload["outcome"] == "done"
    assert payload["summary"]["failures_by_error_type"] == {"model_error": 1}
    assert "schedule-test-key" not in json.dumps(payload)
    assert "HTTP Request: POST http://127.0.0.1:" in caplog.text, "httpx logs the call..."
    assert "S3CR3T" not in caplog.text, "... without the webhook's token"
    assert f"of firing {fired.id}, try 1 of {NOTIFY_TRIES}: HTTP 503" in caplog.text, "each try is logged"
    assert f"try 2 of {NOTIFY_TRIES}: HTTP 200" in caplog.text


def test_notify_gives_up_after_its_tries_without_showing_the_url(
    ctx: Context, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = "http://127.0.0.1:9/hooks/S3CR3T"  # nothing listens on the discard port
    add_schedule(ctx, tmp_path, notify=url)
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert fired is not None
    last = NOTIFY_TRIES - 1
    assert firings.notify(ctx, "nightly", fired.id, tries=last) is None
    firing = store_of(ctx).firing("nightly", fired.id)
    assert firing is not None and firing.notified is not None
    assert firing.notified.startswith(f"failed after {NOTIFY_TRIES} tries (ConnectError from http://127.0.0.1:9/")
    assert "S3CR3T" not in firing.notified and "S3CR3T" not in caplog.text


def test_a_late_firing_knows_how_late_the_scheduler_sent_it() -> None:
    firing = Firing(id="x", slot=SLOT, fired_at=SLOT + 3 * HOUR, trigger="schedule", outcome="running")
    assert firing.late_s == 3 * HOUR and firing.batch_id == "x"
    sent_on_time = firing.model_copy(update={"sent_at": SLOT + 0.5})
    assert sent_on_time.late_s == 0.5, "a busy worker does not make the scheduler late"
    assert firing.model_copy(update={"trigger": "run-now"}).late_s == 0.0
    assert Firing(id="y", slot=SLOT, fired_at=SLOT, trigger="schedule", outcome="skipped").batch_id is None


# --- RedBeat entries ---------------------------------------------------------------------------------------------


def test_an_entry_round_trips_through_redis_and_fires_after_its_start(redis_client: redis.Redis) -> None:
    app = create_app("redis://unused")
    app.conf.redbeat_redis_url = f"unix://{redis_client.connection_pool.connection_kwargs['path']}"
    now = datetime.now(UTC)
    when = When.from_options("0 2 * * *", None, "Europe/Berlin", now)
    beat.install(app, "nightly", when, QUEUE, since=now)
    entry = beat.load(app, "nightly")
    assert entry is not None and isinstance(entry.schedule, beat.WhenSchedule)
    assert entry.schedule.when == when and entry.args == ["nightly"] and entry.options == {"queue": QUEUE}
    due = beat.next_due(app, "nightly")
    assert due == when.next_after(now) and due is not None
    score = redis_client.zscore("wb:beat::schedule", "wb:beat:schedule:nightly")
    assert score == pytest.approx(due.timestamp(), abs=1), "RedBeat looks at it when it is due, not before"
    beat.set_enabled(app, "nightly", False, since=now)
    assert redis_client.zscore("wb:beat::schedule", "wb:beat:schedule:nightly") is None, "paused: not looked at"
    later = now + timedelta(days=3)
    beat.set_enabled(app, "nightly", True, since=later)
    assert beat.next_due(app, "nightly") == when.next_after(later), "slots passed while paused are not made up"
    beat.uninstall(app, "nightly")
    assert beat.load(app, "nightly") is None and not redis_client.keys("wb:beat:schedule:*")


def test_after_missed_slots_the_latest_one_fires_and_the_others_are_counted() -> None:
    now = datetime(2026, 11, 21, 12, 40, tzinfo=UTC)
    hourly = beat.WhenSchedule(When.from_options("10 * * * *", None, "UTC", now - timedelta(days=1)))
    latest, missed = hourly.latest_slot(now - timedelta(hours=3), now)
    assert (latest, missed) == (datetime(2026, 11, 21, 12, 10, tzinfo=UTC), 2)
    assert hourly.latest_slot(now - timedelta(minutes=45), now) == (datetime(2026, 11, 21, 12, 10, tzinfo=UTC), 0)
    assert hourly.latest_slot(now - timedelta(minutes=20), now) == (None, 0)


def test_a_when_schedule_is_due_once_for_all_the_slots_it_missed() -> None:
    now = datetime.now(UTC)
    hourly = beat.WhenSchedule(When.from_options("0 * * * *", None, "UTC", now - timedelta(days=1)))
    due, next_check_s = hourly.is_due(now - timedelta(hours=5))
    assert due and 0 < next_check_s <= HOUR, "due now; the next check is at the next slot"
    assert not hourly.is_due(now)[0]
    assert beat.WhenSchedule(When.from_options(None, (now + timedelta(hours=1)).isoformat(), "UTC", now)).is_due(
        now + timedelta(hours=2)
    ) == (False, None), "a one-off that fired is never due again"


def test_workers_purge_scheduled_batches_older_than_keep_days(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_schedule(ctx, tmp_path, jobs=1, overlap="queue")
    old = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert old is not None
    end_batch(ctx, old.id)
    firings.batch_ended(ctx, old.id)
    ctx.timers.forget([Timer.end(old.id)])  # as the worker that ran its end does once the report is written
    info = ctx.ledger.batch(old.id)
    assert info is not None and info.ended_at is not None
    ctx.ledger.save_batch(info.model_copy(update={"ended_at": info.ended_at - 3 * 86400}))  # it ended 3 days ago
    unscheduled = "by-hand"
    ctx.ledger.save_batch(info.model_copy(update={"id": unscheduled, "schedule": None, "ended_at": 1.0}))
    new = firings.fire(ctx, "nightly", SLOT + 24 * HOUR, "schedule", token="t2").firing
    assert new is not None
    end_batch(ctx, new.id)
    monkeypatch.setenv("WAN_BATCH_KEEP_DAYS", "2")
    firings.batch_ended(ctx, new.id)
    assert ctx.ledger.batch(old.id) is None, "ended 3 days ago: its ledger entries are gone"
    assert Path(info.folder, "report.json").is_file(), "... but never its files"
    assert ctx.ledger.batch(new.id) is not None and ctx.ledger.batch(unscheduled) is not None
    assert store_of(ctx).firing("nightly", old.id) is not None, "the schedule's history keeps the firing"


def test_a_bad_keep_days_purges_nothing(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    add_schedule(ctx, tmp_path, jobs=1)
    fired = firings.fire(ctx, "nightly", SLOT, "schedule", token="t1").firing
    assert fired is not None
    end_batch(ctx, fired.id)
    monkeypatch.setenv("WAN_BATCH_KEEP_DAYS", "a week")
    firings.batch_ended(ctx, fired.id)
    assert ctx.ledger.batch(fired.id) is not None
    assert "WAN_BATCH_KEEP_DAYS must be a number of days" in caplog.text
