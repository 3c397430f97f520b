"""The Celery app: one task that runs a due timer, the scheduler's tasks, and the dispatcher of each worker.

`create_app` builds an app; nothing connects until a worker starts or a task
is sent, and importing this module builds none (`app` is made when Celery
asks for it: `celery -A runner.tasks worker -P threads` and `wan-batch worker`
run the same tasks). What must happen next to a job, a batch or a schedule is a
timer in Redis (`runner.ledger.timers`); every worker's dispatcher sends the
due ones as `wan_batch.timer` messages, and a worker that runs one holds it
under a lease. No worker ever sleeps waiting for fal.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, bootsteps
from celery.worker.consumer import Consumer

from jobs.backoff import Backoff, backoff_delay_s
from jobs.errors import UsageError
from jobs.lifecycle import STEP_OF
from runner.batches import notifications, operations
from runner.ledger.connection import redis_py_url
from runner.ledger.keys import Keys
from runner.ledger.timers import Timer, TimerKind, worker_mark
from runner.schedules import firings
from runner.schedules.store import Trigger
from runner.steps import pipeline
from runner.steps.context import Context, context_from_env
from runner.steps.dispatch import QUEUE, TIMER_TASK, Dispatcher

log = logging.getLogger(__name__)
SWEEP_TASK = "wan_batch.sweep"
FIRE_TASK = "wan_batch.fire_schedule"
#: How often beat looks at its schedule at most (seconds); RedBeat's lock lapses after 5 times this.
BEAT_MAX_INTERVAL_S = 5
#: How often `wan-batch beat` runs the sweep (seconds; WAN_BATCH_SWEEP_EVERY_S overrides).
SWEEP_EVERY_S = 60.0
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: Redis hands a message a worker took but never acknowledged to another after this long. Timers, not
#: messages, hold what must happen next, so this only bounds how late a firing held by a dead worker is.
VISIBILITY_TIMEOUT_S = 300
#: Pools whose tasks run in the worker's own process, beside its dispatcher (which renews their leases).
_POOLS = ("celery.concurrency.thread", "celery.concurrency.solo")
#: Between tries of writing an ended batch's report that failed (a full disk, a folder gone).
END_BACKOFF = Backoff(base_s=5.0, cap_s=300.0)


class Runtime:
    """What the tasks of one app share in a worker process: the context, and the dispatcher once it runs."""

    def __init__(self, app: Celery, factory: Callable[[], Context]) -> None:
        self.app = app
        self._factory = factory
        self._context: Context | None = None
        self._lock = threading.Lock()
        self.dispatcher: Dispatcher | None = None

    def context(self) -> Context:
        """Built on first use in each process (after a worker forks, not before)."""
        with self._lock:
            if self._context is None:
                self._context = self._factory()
                self._context.rng = random.Random()
            return self._context

    def start_dispatcher(self) -> None:
        ctx = self.context()
        self.dispatcher = Dispatcher(self.app, ctx.timers, ctx.settings.timers, ctx.clock)
        self.dispatcher.start()

    def stop_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None

    def wake_at(self, due_at: float | None) -> None:
        if self.dispatcher is not None and due_at is not None:
            self.dispatcher.wake_at(due_at)


def create_app(broker_url: str | None = None, context_factory: Callable[[], Context] | None = None) -> Celery:
    """A Celery app with the runner's tasks, whose workers run a dispatcher of due timers.

    `context_factory` builds what the steps need, once per process; by
    default from the environment (`REDIS_URL`, `FAL_KEY` or
    `WAN_BATCH_GATEWAY_TOKEN`).
    """
    app = Celery("wan_batch", set_as_current=False)
    app.add_defaults(lambda: _config(broker_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL))
    runtime = Runtime(app, context_factory or (lambda: context_from_env(app.conf.broker_url)))

    def timer(kind: str, owner: str, item: str = "") -> None:
        run_timer(runtime, Timer(TimerKind(kind), owner, item))

    def sweep() -> None:
        context = runtime.context()
        for batch_id, count in operations.sweep(context, context.settings.sweep_stale_after_s).items():
            log.warning("sweep: %d job(s) of batch %s had no timer; given one", count, batch_id)

    def fire_schedule(self: Task, name: str, slot: float, trigger: Trigger = "schedule",
                      sent_at: float | None = None, missed: int = 0) -> None:  # fmt: skip
        token = self.request.id or f"{name}:{slot}"
        context = runtime.context()
        after_firing(runtime, context, firings.fire(context, name, slot, trigger, token, sent_at, missed))

    class DispatcherStep(bootsteps.StartStopStep):  # type: ignore[misc]
        """Runs the dispatcher of due timers beside the worker's pool."""

        label = "wan-batch dispatcher"

        def start(self, worker: Any) -> None:
            pool = getattr(worker, "pool_cls", None)
            if getattr(pool, "__module__", "") not in _POOLS:  # the dispatcher's thread holds the leases
                raise UsageError("run wan-batch workers in one process with threads: `wan-batch worker`, or "
                                 "`celery -A runner.tasks worker -P threads`")  # fmt: skip
            runtime.start_dispatcher()

        def stop(self, worker: Any) -> None:
            runtime.stop_dispatcher()

    app.task(name=TIMER_TASK, ignore_result=True, shared=False)(timer)
    app.task(name=SWEEP_TASK, ignore_result=True, shared=False)(sweep)
    app.task(name=FIRE_TASK, ignore_result=True, shared=False, bind=True)(fire_schedule)
    app.steps["worker"].add(DispatcherStep)
    return app


def run_timer(runtime: Runtime, timer: Timer) -> None:
    """Run a due timer this worker got a message for, if no other worker runs it now."""
    ctx = runtime.context()
    mark = worker_mark()
    if ctx.timers.begin(timer, mark, ctx.clock(), ctx.settings.timers.lease_s) != "ok":
        return  # another worker runs it, or the message is stale
    dispatcher = runtime.dispatcher
    if dispatcher is not None:
        dispatcher.hold(timer, mark)
    try:
        _HANDLERS[timer.kind](runtime, ctx, timer, mark)
    finally:
        if dispatcher is not None:
            dispatcher.release(timer)


def _run_step(runtime: Runtime, ctx: Context, timer: Timer, mark: str) -> None:
    admitted = pipeline.run_job_step(ctx, timer.owner, timer.item, mark)
    record = ctx.ledger.record(timer.owner, timer.item)
    # Still held: no move set the job's next step (it moved on meanwhile); set it from what the job is now.
    due = ctx.clock() + 1.0 if record is not None and record.status in STEP_OF else None
    ctx.timers.finish(timer, mark, due, count_try=False)
    if admitted:
        runtime.wake_at(ctx.clock())
    runtime.wake_at(ctx.timers.due_at(timer))


def _end_batch(runtime: Runtime, ctx: Context, timer: Timer, mark: str) -> None:
    try:
        fired = firings.batch_ended(ctx, timer.owner)
    except Exception:
        log.exception("writing the report of batch %s failed; trying again later", timer.owner)
        delay_s = backoff_delay_s(ctx.timers.tries(timer) + 1, END_BACKOFF, ctx.rng.random())
        ctx.timers.finish(timer, mark, ctx.clock() + delay_s)
        return
    ctx.timers.finish(timer, mark, None)
    after_firing(runtime, ctx, fired)


def _notify(runtime: Runtime, ctx: Context, timer: Timer, mark: str) -> None:
    delay_s = firings.notify(ctx, timer.owner, timer.item, ctx.timers.tries(timer))
    ctx.timers.finish(timer, mark, None if delay_s is None else ctx.clock() + delay_s)


def _notify_batch(runtime: Runtime, ctx: Context, timer: Timer, mark: str) -> None:
    delay_s = notifications.notify_batch(ctx, timer.owner, ctx.timers.tries(timer))
    ctx.timers.finish(timer, mark, None if delay_s is None else ctx.clock() + delay_s)


def _start_waiting(runtime: Runtime, ctx: Context, timer: Timer, mark: str) -> None:
    fired = firings.start_waiting(ctx, timer.owner, timer.item)
    ctx.timers.finish(timer, mark, None)
    after_firing(runtime, ctx, fired)


def after_firing(runtime: Runtime, ctx: Context, fired: firings.Fired) -> None:
    """Set the timers a firing step (or a batch's end) leaves: firings that waited start, notifications go out."""
    due = [Timer(TimerKind.START, fired.schedule, firing_id) for firing_id in fired.start]
    if fired.notify and fired.firing is not None:
        due.append(Timer(TimerKind.NOTIFY, fired.schedule, fired.firing.id))
    if fired.notify_batch is not None:
        due.append(Timer.batch_notify(fired.notify_batch))
    ctx.timers.schedule(due, ctx.clock())
    if due or fired.batch_id:
        runtime.wake_at(ctx.clock())


_HANDLERS: dict[TimerKind, Callable[[Runtime, Context, Timer, str], None]] = {
    TimerKind.STEP: _run_step,
    TimerKind.END: _end_batch,
    TimerKind.NOTIFY: _notify,
    TimerKind.START: _start_waiting,
    TimerKind.BATCH_NOTIFY: _notify_batch,
}


class RideOutConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, made to ride out a Redis restart instead of stopping its worker.

    On losing the broker, Celery 5.7 collects the connection (which drops its
    transport but may leave its default channel half closed, if the read it
    had in flight failed first) and then closes it, which closes that channel
    again; restoring the channel's unacknowledged messages then builds a Redis
    pool from a transport that is gone: "Unrecoverable error:
    AttributeError('NoneType' object has no attribute 'hostname')", and the
    worker stops. Forgetting the default channel after the collect lets the
    consumer reconnect. Messages it had taken come back as their timers do.
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        collect = connection.collect
        connection.collect = lambda *args, **kwargs: collect_and_forget(connection, collect, *args, **kwargs)
        super().on_connection_error_after_connected(exc)


def collect_and_forget(connection: Any, collect: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`collect()` a kombu connection whose broker is gone, then forget its default channel.

    kombu keeps the channel past the transport it closed, half closed when its last read failed first;
    closing the connection would then close it again and fail (see RideOutConsumer).
    """
    try:
        return collect(*args, **kwargs)
    finally:
        connection._default_channel = None


def _config(broker_url: str) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S, "connect_retries_timeout": 30,
                                     "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        # A message is acknowledged when its task starts: the timer, not the message, is the record of
        # what must happen, and it comes back when the worker that took it dies.
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        # Ride out a Redis restart: the consumer reconnects (see RideOutConsumer), and a message sent while
        # Redis is away is tried again for about half a minute.
        "worker_consumer": "runner.tasks:RideOutConsumer",
        "task_publish_retry_policy": {"max_retries": 20, "interval_start": 0.5, "interval_step": 0.5,
                                      "interval_max": 2},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # `wan-batch beat`: a safety net that gives timers back to jobs that lost theirs.
        "beat_schedule": {"sweep": {"task": SWEEP_TASK, "schedule": _sweep_every_s(), "options": {"queue": QUEUE}}},
        # ... and fire the schedules (`wan-batch schedule`), kept with RedBeat in the same Redis.
        "beat_scheduler": "runner.schedules.beat:Scheduler",
        "beat_max_loop_interval": BEAT_MAX_INTERVAL_S,
        "redbeat_redis_url": redis_py_url(broker_url),
        "redbeat_redis_options": {},
        "redbeat_key_prefix": Keys().beat_prefix,
    }


def _sweep_every_s() -> float:
    raw = os.environ.get("WAN_BATCH_SWEEP_EVERY_S", "").strip()
    return float(raw) if raw else SWEEP_EVERY_S


_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    """`app` for `celery -A runner.tasks worker|flower`, built from REDIS_URL when Celery asks, not at import."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
