"""The Celery layer: thin tasks, timers given out by dispatchers, and a step that blows up never strands its job."""

from __future__ import annotations

import base64
import gc
import json
import random
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import redis

from jobs.decisions import Limits
from jobs.job import Job
from jobs.status import JobStatus
from runner.ledger.batch_info import BatchInfo
from runner.ledger.connection import redis_py_url
from runner.ledger.store import Ledger
from runner.ledger.timers import Timer
from runner.settings import TimerSettings, WorkerSettings
from runner.steps.context import Context
from runner.steps.dispatch import QUEUE, TIMER_TASK, Dispatcher
from runner.tasks import Runtime, create_app, run_timer
from tests.sim_world import EVERYTHING_DUE


def broken_context(client: redis.Redis, tmp_path: Path, step_errors: int) -> Context:
    ledger = Ledger(client)
    ledger.save_batch(BatchInfo(id="b", manifest=str(tmp_path / "m.csv"), folder=str(tmp_path / "b"),
                                created_at=0.0, max_in_flight=1))  # fmt: skip
    ledger.sync_jobs("b", [Job("j0", "fal-ai/x/y", {"prompt": "p"}, "f0", "m.csv", 2, 1),
                           Job("j1", "fal-ai/x/y", {"prompt": "q"}, "f1", "m.csv", 3, 2)], now=0.0)  # fmt: skip
    ledger.admit("b")

    def no_client(_batch: BatchInfo) -> Any:
        raise RuntimeError("the queue client could not be built")

    settings = WorkerSettings(limits=Limits(step_errors=step_errors))
    return Context(ledger, httpx.Client(), no_client, lambda _batch: None, settings, random.Random(1))


def queued_messages(client: redis.Redis) -> list[dict[str, Any]]:
    messages = []
    for raw in client.lrange(QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args, "kwargs": kwargs,
                         "eta": envelope["headers"]["eta"]})  # fmt: skip
    return messages


def run_due(context: Context, timer: Timer) -> None:
    context.timers.claim_due(EVERYTHING_DUE, 30.0, 100)
    run_timer(Runtime(create_app("redis://unused:1/0"), lambda: context), timer)


def test_an_unexpected_error_runs_the_step_again_later(redis_client: redis.Redis, tmp_path: Path) -> None:
    context = broken_context(redis_client, tmp_path, step_errors=3)
    before = time.time()
    run_due(context, Timer.step("b", "j0"))
    record = context.ledger.record("b", "j0")
    assert record is not None and record.status is JobStatus.ADMITTED and record.step_errors == 1
    due_at = context.timers.due_at(Timer.step("b", "j0"))
    assert due_at is not None and due_at > before + 0.5, "after a backoff, not at once"
    context.http.close()


def test_a_step_that_keeps_failing_fails_its_job_and_frees_the_slot(redis_client: redis.Redis, tmp_path: Path) -> None:
    context = broken_context(redis_client, tmp_path, step_errors=2)
    for _ in range(3):
        run_due(context, Timer.step("b", "j0"))
    record = context.ledger.record("b", "j0")
    assert record is not None and record.status is JobStatus.FAILED and record.error_type == "internal_error"
    assert "RuntimeError: the queue client could not be built" in (record.error_message or "")
    assert context.ledger.record("b", "j1").status is JobStatus.ADMITTED, "the freed slot admitted j1"  # type: ignore[union-attr]
    assert context.timers.due_at(Timer.step("b", "j1")) is not None and context.timers.due_at(Timer.step("b", "j0")) is None
    context.http.close()


def test_a_dispatcher_sends_due_timers_once_and_again_when_their_message_is_lost(
    redis_client: redis.Redis, redis_server: Any
) -> None:
    app = create_app(redis_server.broker_url)
    context = Ledger(redis_client)
    from runner.ledger.timers import Timers

    timers = Timers(context.redis)
    settings = TimerSettings(tick_s=0.05, claim_s=0.5, lease_s=0.5)
    dispatcher = Dispatcher(app, timers, settings)
    timers.schedule([Timer.step("b", "j0")], time.time())
    dispatcher.start()
    try:
        deadline = time.monotonic() + 30
        while len(queued_messages(redis_client)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the message is never taken: its claim lapses and it is sent again
    finally:
        dispatcher.stop()
    messages = queued_messages(redis_client)
    assert len(messages) >= 2, messages
    assert {m["task"] for m in messages} == {TIMER_TASK} and messages[0]["args"] == ["step", "b", "j0"]
    assert all(m["eta"] is None for m in messages), "sent when due: no countdown held in a worker's memory"


def test_kombu_socket_urls_become_redis_py_urls() -> None:
    assert redis_py_url("redis+socket:///tmp/r.sock") == "unix:///tmp/r.sock"
    assert redis_py_url("redis://h:6379/0") == "redis://h:6379/0"


def test_beat_sends_the_sweep(redis_client: redis.Redis, redis_server: Any, tmp_path: Path) -> None:
    """`wan-batch beat`, for real, publishes the sweep task on its schedule."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WAN_BATCH_SWEEP_EVERY_S": "1"}
    command = [str(Path(sys.executable).parent / "wan-batch"), "beat", "--redis", redis_server.broker_url,
               "--loglevel", "WARNING"]  # fmt: skip
    beat = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not queued_messages(redis_client) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert [m["task"] for m in queued_messages(redis_client)][:1] == ["wan_batch.sweep"]


def broken_broker_connection(tmp_path: Path) -> tuple[Any, Any]:
    """A kombu connection as a worker's is when its Redis is SIGKILLed: a channel with an unacknowledged
    message and a read in flight, and a second channel with an auto-delete fanout queue (Celery's gossip
    and remote control have one). Returns the connection and that channel; its Redis is dead."""
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    from runner.embedded.server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "broker")
    server.start()
    connection = Connection(server.broker_url, transport_options={"visibility_timeout": 3600})
    queue = Queue("q", Exchange("q", type="direct"), "q")
    channel = connection.default_channel
    Producer(channel).publish({"x": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
    taken: list[Any] = []
    Consumer(channel, [queue], callbacks=[lambda _body, message: taken.append(message)], no_ack=False).consume()
    broadcast = Queue("bcast", Exchange("bcast", type="fanout"), auto_delete=True)
    Consumer(connection.channel(), [broadcast], callbacks=[lambda _b, _m: None]).consume()
    deadline = time.monotonic() + 10
    while not taken:
        assert time.monotonic() < deadline
        connection.drain_events(timeout=0.5)
    if channel._in_poll is None:
        channel._brpop_start()  # a worker's event loop always has a read in flight
    server.kill()
    return connection, channel


def test_a_consumer_that_lost_its_broker_can_close_and_reconnect(tmp_path: Path) -> None:
    """The workaround RideOutConsumer applies, on the state that stopped Celery 5.7 workers for good."""
    import pytest

    from runner.tasks import collect_and_forget

    plain, plain_channel = broken_broker_connection(tmp_path / "plain")
    plain.collect(socket_timeout=0.1)
    with pytest.raises(AttributeError, match="hostname"):  # if kombu fixes this, RideOutConsumer may go
        plain.close()
    fixed, fixed_channel = broken_broker_connection(tmp_path / "fixed")
    collect_and_forget(fixed, fixed.collect, socket_timeout=0.1)
    fixed.close()
    assert fixed._default_channel is None
    for channel in (plain_channel, fixed_channel):
        channel.do_restore = False  # else kombu tries to put the message back at exit, and prints why it cannot
    del plain, plain_channel, fixed, fixed_channel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the sockets of the dead broker's connections, by design
        gc.collect()


def test_a_worker_of_processes_is_refused(tmp_path: Path) -> None:
    """The dispatcher renews the leases of the steps its own process runs: a prefork worker could not."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    command = [str(Path(sys.executable).parent / "celery"), "-A", "runner.tasks", "worker", "--loglevel", "WARNING"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "run wan-batch workers in one process with threads" in done.stderr + done.stdout
