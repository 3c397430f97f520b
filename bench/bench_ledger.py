"""A large batch on a shared Redis: what the ledger costs, and how fast a dead worker's jobs move again.

    python bench/bench_ledger.py [--jobs 20000] [--workers 3] [--concurrency 64] [--run-time 0.2]

Real parts: a redis-server (append-only file, fsync always, as docker-compose runs it), the
simulator of fal in this process, `wan-batch worker` processes, and `wan-batch submit` and
`status` as a user runs them. Measured:

- Redis memory per job (INFO used_memory over an empty server, divided by the jobs) with the
  batch recorded, the most seen while it runs (sampled every 0.5 s), and when it has ended;
  MEMORY USAGE of one job's hash;
- append-only file bytes per job when the batch has ended (and how many rewrites Redis did);
- the time of `wan-batch status` (the whole command, and the reading of the ledger it does) and of
  one sweep, while the batch runs;
- the time from a worker's SIGKILL, mid-batch, until every job it held moves again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from jobs.status import IN_FLIGHT
from runner.batches import operations
from runner.embedded.server import EmbeddedRedis
from runner.ledger.store import Ledger
from runner.simulator import SimConfig, run_simulator
from runner.steps.context import make_context

KEY = "bench-key"
WAN_BATCH = str(Path(sys.executable).parent / "wan-batch")


def write_manifest(folder: Path, jobs: int) -> Path:
    path = folder / "night.jsonl"
    with path.open("w") as handle:
        for n in range(jobs):
            row = {"endpoint": "fal-ai/wan-25-preview/image-to-image", "prompt": f"a lighthouse at dusk, take {n}",
                   "image_urls": [f"https://cdn.example.test/inputs/{n:06d}.png"], "seed": n}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def timed(call: object) -> float:
    started = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - started


def revisions(ledger: Ledger) -> dict[str, int]:
    return {r.job.id: r.revision for r in ledger.records_with("night", IN_FLIGHT)}


def until_moved(ledger: Ledger, before: dict[str, int], timeout_s: float) -> dict[str, float]:
    """Seconds until each job of `before` changed (or left the window)."""
    started, moved = time.monotonic(), {}  # type: float, dict[str, float]
    while len(moved) < len(before) and time.monotonic() - started < timeout_s:
        now = revisions(ledger)
        for job_id, revision in before.items():
            if job_id not in moved and now.get(job_id) != revision:
                moved[job_id] = time.monotonic() - started
        time.sleep(0.1)
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64, help="requests the simulator runs at once")
    parser.add_argument("--run-time", type=float, default=0.2)
    parser.add_argument("--max-in-flight", type=int, default=64)
    args = parser.parse_args()
    config = SimConfig(concurrency=args.concurrency, run_time=f"fixed:{args.run_time}", key=KEY, seed=1,
                       file_cache_mb=16)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, run_simulator(config) as sim:
        folder = Path(tmp)
        server = EmbeddedRedis(folder / "redis")
        server.start()
        client = redis.Redis(unix_socket_path=server.socket_path)
        client.config_set("auto-aof-rewrite-percentage", 0)  # to measure what is written; rewritten at the end
        ledger = Ledger(client)
        empty = used_memory(client)
        env = {**os.environ, "FAL_KEY": KEY, "REDIS_URL": server.broker_url}
        manifest = write_manifest(folder, args.jobs)
        submit_s = timed(lambda: subprocess.run(
            [WAN_BATCH, "submit", str(manifest), "--base-url", sim.base_url, "--out", str(folder / "out"),
             "--max-in-flight", str(args.max_in_flight)], env=env, check=True, capture_output=True))  # fmt: skip
        recorded = used_memory(client)
        waiting_job = client.memory_usage(ledger.keys.job("night", _first_id(ledger)))
        started = time.monotonic()
        workers = [subprocess.Popen([WAN_BATCH, "worker", "--concurrency", str(args.worker_threads), "--loglevel",
                                     "WARNING"], env=env, cwd=folder, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for _ in range(args.workers)]  # fmt: skip
        peak = [0]
        try:
            results = _while_running(args, ledger, client, env, workers, empty)
            while ledger.batch("night").state != "done":  # type: ignore[union-attr]
                peak[0] = max(peak[0], used_memory(client))
                time.sleep(0.5)
            wall_s = time.monotonic() - started
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        ended = used_memory(client)
        done_job = client.memory_usage(ledger.keys.job("night", _first_id(ledger)))
        aof = server.folder / "appendonly.aof"
        aof_bytes = aof.stat().st_size
        client.bgrewriteaof()
        while any(client.info("persistence")[k] for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")):
            time.sleep(0.1)
        rewritten_bytes = aof.stat().st_size
        server.stop()
        stats = sim.stats()
    jobs = args.jobs
    print(f"{jobs} jobs, {args.workers} workers x {args.worker_threads} threads, simulator C={args.concurrency} "
          f"at {args.run_time} s, window {args.max_in_flight}: ended in {wall_s:.1f} s "
          f"({jobs / wall_s:.0f} jobs/s); submit took {submit_s:.1f} s")  # fmt: skip
    running = max(results["running_per_job"], (peak[0] - empty) / jobs)
    print(f"Redis memory per job: recorded {(recorded - empty) / jobs:.0f} B, running {running:.0f} B (the most "
          f"seen), ended {(ended - empty) / jobs:.0f} B; one job hash: {waiting_job} B waiting, {done_job} B "
          f"succeeded")  # fmt: skip
    print(f"append-only file: {aof_bytes / jobs:.0f} B per job as written ({aof_bytes / 1e6:.1f} MB), "
          f"{rewritten_bytes / jobs:.0f} B per job once rewritten")
    print(f"wan-batch status: {results['status_s']:.2f} s (the whole command; its reading of the ledger "
          f"{results['view_ms']:.1f} ms); one sweep: {results['sweep_ms']:.1f} ms; at {results['progress']} jobs final")
    print(f"SIGKILL of a worker: {results['held']} job(s) in flight at the kill; every one moved again within "
          f"{results['recovery_s']:.1f} s (median {results['median_s']:.1f} s)")
    print(f"submits {stats['submits']}, duplicate submits {stats['duplicate_submits']}")


def _first_id(ledger: Ledger) -> str:
    first = ledger.redis.lindex(ledger.keys.job_order("night"), 0)
    assert first is not None
    return first.decode() if isinstance(first, bytes) else str(first)


def _while_running(args: argparse.Namespace, ledger: Ledger, client: redis.Redis, env: dict[str, str],
                   workers: list[subprocess.Popen[bytes]], empty: int) -> dict[str, float]:  # fmt: skip
    """Measure at a third of the batch: status, a sweep, memory; then kill a worker and time its jobs."""
    def final() -> int:
        counts = ledger.counts("night")
        return sum(n for status, n in counts.items() if status.is_final)

    while final() < args.jobs // 3:
        time.sleep(0.2)
    progress = final()
    status_s = timed(lambda: subprocess.run([WAN_BATCH, "status", "night"], env=env, check=True,
                                            capture_output=True))  # fmt: skip
    view_ms = 1000 * timed(lambda: operations.view_batch(ledger, "night"))
    with httpx.Client() as http:
        context = make_context(ledger, http)
        sweep_ms = 1000 * timed(lambda: operations.sweep(context, context.settings.sweep_stale_after_s))
    running = used_memory(client)
    before = revisions(ledger)
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    moved = until_moved(ledger, before, timeout_s=180)
    times = sorted(moved.values())
    running = max(running, used_memory(client))
    return {"status_s": status_s, "view_ms": view_ms, "sweep_ms": sweep_ms, "progress": progress, "held": len(before),
            "recovery_s": times[-1] if len(times) == len(before) else float("inf"),
            "median_s": times[len(times) // 2] if times else 0.0, "running_per_job": (running - empty) / args.jobs}


if __name__ == "__main__":
    main()
