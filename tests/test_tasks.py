"""The Celery layer: thin tasks, and a step that blows up never strands its job."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import httpx
import redis

from jobs.job import Job
from jobs.status import JobStatus
from runner.ledger.connection import redis_py_url
from runner.ledger.store import BatchInfo, Ledger
from runner.settings import WorkerSettings
from runner.steps.context import Context
from runner.steps.dispatch import QUEUE, TASKS
from runner.steps.pipeline import FollowUp
from runner.tasks import create_app, run_step


def broken_context(client: redis.Redis, tmp_path: Path, max_call_retries: int) -> Context:
    ledger = Ledger(client)
    ledger.save_batch(BatchInfo(id="b", manifest=str(tmp_path / "m.csv"), folder=str(tmp_path / "b"),
                                created_at=0.0, max_in_flight=1))  # fmt: skip
    ledger.sync_jobs("b", [Job("j0", "fal-ai/x/y", {"prompt": "p"}, "f0", "m.csv", 2, 1),
                           Job("j1", "fal-ai/x/y", {"prompt": "q"}, "f1", "m.csv", 3, 2)], now=0.0)  # fmt: skip
    ledger.admit("b")

    def no_client(_batch: BatchInfo) -> Any:
        raise RuntimeError("the queue client could not be built")

    return Context(ledger, httpx.Client(), no_client, WorkerSettings(max_call_retries=max_call_retries), random.Random(1))


def queued_messages(client: redis.Redis) -> list[dict[str, Any]]:
    messages = []
    for raw in client.lrange(QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args, "kwargs": kwargs,
                         "eta": envelope["headers"]["eta"]})  # fmt: skip
    return messages


def test_an_unexpected_error_runs_the_step_again_later(redis_client: redis.Redis, redis_server: Any, tmp_path: Path) -> None:
    context = broken_context(redis_client, tmp_path, max_call_retries=3)
    app = create_app(redis_server.broker_url, context_factory=lambda: context)
    run_step(app, context, FollowUp("submit", "j0", tries=1), "b")
    [message] = queued_messages(redis_client)
    assert message["task"] == TASKS["submit"] and message["args"] == ["b", "j0"]
    assert message["kwargs"] == {"token": 0, "tries": 2}
    assert message["eta"] is not None, "after a backoff, not at once"
    assert context.ledger.record("b", "j0").status is JobStatus.ADMITTED  # type: ignore[union-attr]
    context.http.close()


def test_a_step_that_keeps_failing_fails_its_job_and_frees_the_slot(
    redis_client: redis.Redis, redis_server: Any, tmp_path: Path
) -> None:
    context = broken_context(redis_client, tmp_path, max_call_retries=3)
    app = create_app(redis_server.broker_url, context_factory=lambda: context)
    run_step(app, context, FollowUp("submit", "j0", tries=3), "b")
    record = context.ledger.record("b", "j0")
    assert record is not None and record.status is JobStatus.FAILED and record.error_type == "internal_error"
    assert "RuntimeError: the queue client could not be built" in (record.error_message or "")
    [message] = queued_messages(redis_client)
    assert message["task"] == TASKS["submit"] and message["args"] == ["b", "j1"], "the freed slot admitted j1"
    context.http.close()


def test_kombu_socket_urls_become_redis_py_urls() -> None:
    assert redis_py_url("redis+socket:///tmp/r.sock") == "unix:///tmp/r.sock"
    assert redis_py_url("redis://h:6379/0") == "redis://h:6379/0"


def test_beat_sends_the_sweep(redis_client: redis.Redis, redis_server: Any, tmp_path: Path) -> None:
    """`wan-batch beat`, for real, publishes the sweep task on its schedule."""
    import os
    import subprocess
    import sys
    import time

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
