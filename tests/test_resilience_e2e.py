"""Promises that hold when things break, with real processes: a worker SIGKILLed mid-batch, Redis killed and
restarted from its append-only file. No beat, no `resume`: the workers that are left carry on by themselves.

The simulator keeps results for less time than the 60 s the issue allows for a stall, so a job stranded
past that would fetch an expired result and be submitted again: a second submit shows up in its counts.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.status import IN_FLIGHT, JobStatus
from runner.embedded.server import EmbeddedRedis
from runner.ledger.store import Ledger
from runner.simulator import FaultRates
from tests.test_run_e2e import WAN_BATCH, cli_env, run_cli, write_manifest

JOBS = 30
#: A stall longer than this would have let results expire at the simulator (and be paid for again).
RETENTION_S = 50.0
#: What the issue allows between a worker's death and its jobs moving again.
MOVE_AGAIN_WITHIN_S = 60.0


class Workers:
    """`wan-batch worker` processes on one Redis, each logging to its own file."""

    def __init__(self, cwd: Path, broker_url: str, count: int) -> None:
        self.logs = [cwd / f"worker-{n}.log" for n in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for log in self.logs:
            with log.open("wb") as out:
                command = [WAN_BATCH, "worker", "--redis", broker_url, "--concurrency", "4", "--loglevel", "INFO"]
                self.processes.append(subprocess.Popen(command, cwd=cwd, env=cli_env(), stdout=out, stderr=out))

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class StallWatch:
    """Watches the batch from its ledger: the longest any job holding a slot stayed unchanged."""

    def __init__(self, ledger: Ledger, batch_id: str) -> None:
        self._ledger, self._batch_id = ledger, batch_id
        self._seen: dict[str, tuple[int, float]] = {}
        self.longest_s = 0.0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._look()
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # Redis is restarting: a stall is measured from what was last seen

    def _look(self) -> None:
        now = time.monotonic()
        live = {r.job.id: r.revision for r in self._ledger.records_with(self._batch_id, IN_FLIGHT)}
        for job_id, revision in live.items():
            last = self._seen.get(job_id)
            if last is None or last[0] != revision:
                self._seen[job_id] = (revision, now)
            else:
                self.longest_s = max(self.longest_s, now - last[1])
        for job_id in set(self._seen) - set(live):
            del self._seen[job_id]
        info = self._ledger.batch(self._batch_id)
        if info is not None and info.state == "done":
            self.done.set()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of its own (append-only file, fsync always) that a test may kill and start again."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def submit_batch(tmp_path: Path, broker_url: str, sim: Any) -> None:
    write_manifest(tmp_path, JOBS)
    done = run_cli(["submit", "batch.jsonl", "--redis", broker_url, "--base-url", sim.base_url,
                    "--max-in-flight", "8"], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr


def wait_for(condition: Any, timeout_s: float, what: str, workers: Workers) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{workers.output()}"
        time.sleep(0.1)


def assert_paid_once_and_finished(ledger: Ledger, sim: Any, workers: Workers) -> dict[JobStatus, int]:
    stats = sim.stats()
    counts = ledger.counts("batch")
    context = f"counts {counts}, failures {ledger.failures_by_type('batch')}\n{workers.output()}"
    assert sum(counts[s] for s in JobStatus if s.is_final) == JOBS, context
    assert stats["duplicate_submits"] == 0 and max(stats["submits_per_input"].values()) == 1, context
    assert set(ledger.failures_by_type("batch")) <= {"submit_unconfirmed"}, context
    return counts


def test_a_killed_worker_strands_nothing_and_pays_for_nothing_twice(
    tmp_path: Path, sim_factory: Any, restartable_redis: EmbeddedRedis
) -> None:
    sim = sim_factory(concurrency=4, run_time="fixed:0.8", retention_s=RETENTION_S,
                      large_result_retention_s=RETENTION_S)  # fmt: skip
    ledger = Ledger(redis.Redis(unix_socket_path=restartable_redis.socket_path))
    workers = Workers(tmp_path, restartable_redis.broker_url, 3)
    try:
        submit_batch(tmp_path, restartable_redis.broker_url, sim)
        wait_for(lambda: sim.stats()["submits"] >= 8, 60, "8 submits", workers)
        with StallWatch(ledger, "batch") as watch:
            workers.processes[0].send_signal(signal.SIGKILL)  # with steps running and taken
            assert workers.processes[0].wait(timeout=10) == -signal.SIGKILL
            wait_for(watch.done.is_set, 240, "the batch to end", workers)
        alive = [p.poll() is None for p in workers.processes[1:]]
    finally:
        workers.stop()
    counts = assert_paid_once_and_finished(ledger, sim, workers)
    assert watch.longest_s < MOVE_AGAIN_WITHIN_S, f"a job stood still {watch.longest_s:.1f} s\n{workers.output()}"
    assert counts[JobStatus.SUCCEEDED] >= JOBS - 1, "only a submit cut off by the kill may be written off"
    assert alive == [True, True]


def test_workers_ride_out_a_redis_restart(tmp_path: Path, sim_factory: Any, restartable_redis: EmbeddedRedis) -> None:
    # Slow downloads keep every worker thread busy, so each worker has taken messages it has not begun
    # (unacknowledged) when Redis goes: the case that stopped Celery 5.7 workers for good.
    sim = sim_factory(concurrency=4, run_time="fixed:0.8", retention_s=RETENTION_S, large_result_retention_s=RETENTION_S,
                      faults=FaultRates(slow_download=1.0), slow_download_s=1.0)  # fmt: skip
    ledger = Ledger(redis.Redis(unix_socket_path=restartable_redis.socket_path))
    workers = Workers(tmp_path, restartable_redis.broker_url, 3)
    try:
        submit_batch(tmp_path, restartable_redis.broker_url, sim)
        with StallWatch(ledger, "batch") as watch:
            for submits in (8, 16):
                wait_for(lambda n=submits: sim.stats()["submits"] >= n, 120, f"{submits} submits", workers)  # type: ignore[misc]
                restartable_redis.kill()
                restartable_redis.start()  # the same socket, the same append-only file
            wait_for(watch.done.is_set, 240, "the batch to end", workers)
        alive = [p.poll() is None for p in workers.processes]
    finally:
        workers.stop()
    counts = assert_paid_once_and_finished(ledger, sim, workers)
    assert alive == [True, True, True], f"every worker rode it out\n{workers.output()}"
    assert counts[JobStatus.SUCCEEDED] == JOBS, f"nothing lost\n{workers.output()}"
    assert watch.longest_s < MOVE_AGAIN_WITHIN_S, f"a job stood still {watch.longest_s:.1f} s\n{workers.output()}"
    assert "Unrecoverable error" not in workers.output()
