"""The Celery app: three thin tasks that run a pipeline step and schedule what it returns.

`create_app` builds an app; nothing connects until a worker starts or a task
is sent. The module-level `app` reads `REDIS_URL` when first configured, so
`celery -A runner.tasks worker` and `wan-batch worker` run the same tasks.
Polls are tasks sent with a countdown: no worker ever sleeps waiting for fal.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from celery import Celery, Task

from runner.batches import operations
from runner.fal.retry import retry_delay_s
from runner.ledger.connection import redis_py_url
from runner.ledger.keys import Keys
from runner.schedules import firings
from runner.schedules.store import Trigger
from runner.steps import pipeline
from runner.steps.context import Context, context_from_env
from runner.steps.dispatch import QUEUE, TASKS, send_steps
from runner.steps.pipeline import FollowUp

log = logging.getLogger(__name__)
T = TypeVar("T")
SWEEP_TASK = "wan_batch.sweep"
FIRE_TASK = "wan_batch.fire_schedule"
START_WAITING_TASK = "wan_batch.start_waiting"
NOTIFY_TASK = "wan_batch.notify"
#: How often beat looks at its schedule at most (seconds); RedBeat's lock lapses after 5 times this.
BEAT_MAX_INTERVAL_S = 5
#: How often `wan-batch beat` runs the sweep (seconds; WAN_BATCH_SWEEP_EVERY_S overrides).
SWEEP_EVERY_S = 60.0
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: Redis redelivers an unacknowledged message after this long; every poll delay is far shorter.
VISIBILITY_TIMEOUT_S = 3600


def create_app(broker_url: str | None = None, context_factory: Callable[[], Context] | None = None) -> Celery:
    """A Celery app with the runner's tasks.

    `context_factory` builds what the steps need, once per process; by
    default from the environment (`REDIS_URL`, `FAL_KEY` or
    `WAN_BATCH_GATEWAY_TOKEN`).
    """
    app = Celery("wan_batch", set_as_current=False)
    app.add_defaults(lambda: _config(broker_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL))
    contexts = _ContextCache(context_factory or (lambda: context_from_env(app.conf.broker_url)))

    def submit(batch_id: str, job_id: str, token: int = 0, tries: int = 0) -> None:
        run_step(app, contexts.get(), FollowUp("submit", job_id, token=token, tries=tries), batch_id)

    def poll(batch_id: str, job_id: str, token: int = 0, tries: int = 0) -> None:
        run_step(app, contexts.get(), FollowUp("poll", job_id, token=token, tries=tries), batch_id)

    def collect(batch_id: str, job_id: str, token: int = 0, tries: int = 0) -> None:
        run_step(app, contexts.get(), FollowUp("collect", job_id, token=token, tries=tries), batch_id)

    def sweep() -> None:
        context = contexts.get()
        for batch_id, follow in operations.sweep(context, context.settings.sweep_stale_after_s).items():
            send_steps(app, batch_id, follow)

    for kind, step in (("submit", submit), ("poll", poll), ("collect", collect)):
        app.task(name=TASKS[kind], ignore_result=True, shared=False)(step)
    app.task(name=SWEEP_TASK, ignore_result=True, shared=False)(sweep)
    _add_schedule_tasks(app, contexts)
    return app


def _add_schedule_tasks(app: Celery, contexts: _ContextCache) -> None:
    """The tasks around a batch's end and the schedules: report, fire, start what waited, notify."""

    def batch_end(batch_id: str, job_id: str, token: int = 0, tries: int = 0) -> None:
        step = FollowUp("end", job_id, tries=tries)
        fired = _guarded(app, contexts.get(), step, batch_id, lambda ctx: firings.batch_ended(ctx, batch_id))
        if fired is not None:
            send_fired(app, fired)

    def fire_schedule(self: Task, name: str, slot: float, trigger: Trigger = "schedule",
                      sent_at: float | None = None, missed: int = 0) -> None:  # fmt: skip
        token = self.request.id or f"{name}:{slot}"
        send_fired(app, firings.fire(contexts.get(), name, slot, trigger, token, sent_at, missed))

    def start_waiting(name: str, firing_id: str) -> None:
        send_fired(app, firings.start_waiting(contexts.get(), name, firing_id))

    def notify(name: str, firing_id: str, tries: int = 0) -> None:
        delay_s = firings.notify(contexts.get(), name, firing_id, tries)
        if delay_s is not None:
            app.send_task(NOTIFY_TASK, args=[name, firing_id], kwargs={"tries": tries + 1}, countdown=delay_s,
                          queue=QUEUE)  # fmt: skip

    app.task(name=TASKS["end"], ignore_result=True, shared=False)(batch_end)
    app.task(name=FIRE_TASK, ignore_result=True, shared=False, bind=True)(fire_schedule)
    app.task(name=START_WAITING_TASK, ignore_result=True, shared=False)(start_waiting)
    app.task(name=NOTIFY_TASK, ignore_result=True, shared=False)(notify)


def send_fired(app: Celery, fired: firings.Fired) -> None:
    """Send what a firing step left: its batch's submits, firings that waited, the notification."""
    for batch_id, follow in fired.follow.items():
        send_steps(app, batch_id, follow)
    for firing_id in fired.start:
        app.send_task(START_WAITING_TASK, args=[fired.schedule, firing_id], queue=QUEUE)
    if fired.notify and fired.firing is not None:
        app.send_task(NOTIFY_TASK, args=[fired.schedule, fired.firing.id], queue=QUEUE)


def _guarded(app: Celery, context: Context, step: FollowUp, batch_id: str, work: Callable[[Context], T]) -> T | None:
    """Run `work`; when it blows up, send `step` again after a backoff, a few times, then give up loudly."""
    try:
        return work(context)
    except Exception:
        log.exception("%s of batch %s failed unexpectedly", step.task, batch_id)
        send_steps(app, batch_id, _again_later(context, step))
        return None


def run_step(app: Celery, context: Context, step: FollowUp, batch_id: str) -> None:
    """Run one pipeline step and schedule what it returns; a step that blows up never strands its job.

    An unexpected error runs the same step again after a backoff (steps are
    safe to repeat); when that keeps failing, the job fails as `internal_error`.
    """
    try:
        follow = _STEPS[step.task](context, batch_id, step.job_id, step.token, step.tries)
    except Exception as exc:
        log.exception("%s of job %s of batch %s failed unexpectedly", step.task, step.job_id, batch_id)
        follow = _again_later(context, step)
        if not follow:
            message = f"{step.task} failed {step.tries + 1} times: {type(exc).__name__}: {exc}"
            follow = pipeline.fail_job(context, batch_id, step.job_id, "internal_error", message[:500])
    send_steps(app, batch_id, follow)


def _again_later(context: Context, step: FollowUp) -> list[FollowUp]:
    """`step` once more after a backoff, while it has failed fewer than `max_call_retries` times; [] after."""
    if step.tries >= context.settings.max_call_retries:
        return []
    delay_s = retry_delay_s(step.tries + 1, context.settings.retry, None, context.rng)
    return [replace(step, delay_s=delay_s, tries=step.tries + 1)]


_STEPS: dict[str, Callable[[Context, str, str, int, int], list[FollowUp]]] = {
    "submit": lambda ctx, batch_id, job_id, _token, tries: pipeline.submit_job(ctx, batch_id, job_id, tries),
    "poll": pipeline.poll_job,
    "collect": pipeline.collect_job,
}


class _ContextCache:
    """Builds the context on first use in each process (after a worker forks, not before)."""

    def __init__(self, factory: Callable[[], Context]) -> None:
        self._factory = factory
        self._context: Context | None = None
        self._lock = threading.Lock()

    def get(self) -> Context:
        with self._lock:
            if self._context is None:
                self._context = self._factory()
                self._context.rng = random.Random()
            return self._context


def _config(broker_url: str) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        # A task that dies with its worker is delivered again; every step is safe to repeat.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # `wan-batch beat`: resume jobs of open batches that stopped moving (lost messages).
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
