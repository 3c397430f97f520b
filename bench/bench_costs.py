"""What the cost cap costs: the atomic check per send, and a capped run against an uncapped one of what it sends.

    python bench/bench_costs.py [--sends 20000] [--threads 8] [--jobs 1000] [--concurrency 20] [--run-time 0.5]

1. The ledger alone (a real redis-server): THREADS threads send SENDS admitted jobs (the SEND move, which
   charges each attempt in the same Lua step), without a cap, under a cap they all fit in, and under a cap of
   exactly half of them; moves per second each way, and whether exactly half went.
2. `wan-batch run` end to end against the simulator (C requests at once, L seconds each): JOBS jobs with
   `--max-cost` of exactly half of them, against JOBS/2 jobs with no cap. The difference in wall time is what
   ending the other half `budget_exceeded` costs; the simulator's submits must be exactly JOBS/2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

from jobs.endpoints import WAN25_I2I
from jobs.job import Job
from jobs.lifecycle import JobUpdate, Move, plan
from jobs.pricing import Price, Unit
from runner.embedded.server import EmbeddedRedis
from runner.ledger.batch_info import BatchInfo
from runner.ledger.connection import redis_client
from runner.ledger.store import Ledger, OverBudget
from runner.simulator import SimConfig, run_simulator

KEY = "bench-key"
CENTS_5 = 50_000_000


def sends_per_s(ledger: Ledger, batch_id: str, jobs: int, threads: int, cap_nusd: int | None) -> tuple[float, int]:
    """Record and admit `jobs` jobs, send them all from `threads` threads; (moves per second, jobs sent)."""
    price = Price(WAN25_I2I, Decimal("0.05"), Unit.IMAGE, "bench")
    ledger.save_batch(BatchInfo(id=batch_id, manifest="m", folder="/tmp/bench", created_at=0.0, max_in_flight=jobs,
                                prices={WAN25_I2I: price.to_dict()}, max_cost_nusd=cap_nusd))  # fmt: skip
    made = [Job(f"j{n}", WAN25_I2I, {"prompt": str(n)}, f"fp{n}", "m", n + 1, n) for n in range(jobs)]
    ledger.sync_jobs(batch_id, made, time.time())
    ledger.admit(batch_id)
    records = list(ledger.records(batch_id))
    sent = [0] * threads

    def send(part: int) -> None:
        for record in records[part::threads]:
            done = ledger.apply(batch_id, plan(record, Move.SEND, JobUpdate(attempts=1, sent_cost_nusd=CENTS_5),
                                               time.time()))  # fmt: skip
            if done is not None and not isinstance(done, OverBudget):
                sent[part] += 1

    workers = [threading.Thread(target=send, args=(part,)) for part in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return jobs / (time.perf_counter() - started), sum(sent)


def run_wall_s(folder: Path, sim_url: str, jobs: int, max_cost: str | None) -> tuple[float, dict[str, object]]:
    manifest = folder / f"bench-{jobs}-{max_cost}.jsonl"
    with manifest.open("w") as handle:
        for n in range(jobs):
            handle.write(json.dumps({"endpoint": WAN25_I2I, "prompt": f"bench {n}",
                                     "image_urls": [f"https://cdn.example.test/{n}.png"], "seed": n}) + "\n")
    env = {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, "FAL_KEY": KEY}
    command = [str(Path(sys.executable).parent / "wan-batch"), "run", str(manifest), "--base-url", sim_url,
               "--api-url", f"{sim_url}/v1", "--out", str(folder / "out"), "--json", "--max-in-flight", "25"]
    command += ["--max-cost", max_cost] if max_cost is not None else []
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall_s = time.monotonic() - started
    if done.returncode not in (0, 1):
        sys.exit(f"wan-batch run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary: dict[str, object] = json.loads(done.stdout)
    return wall_s, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--run-time", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        ledger = Ledger(redis_client(server.url))
        free, _ = sends_per_s(ledger, "free", args.sends, args.threads, None)
        roomy, _ = sends_per_s(ledger, "roomy", args.sends, args.threads, args.sends * CENTS_5)
        capped, sent = sends_per_s(ledger, "capped", args.sends, args.threads, args.sends // 2 * CENTS_5)
    print(f"ledger: {args.sends} sends from {args.threads} threads: {free:.0f}/s without a cap, {roomy:.0f}/s under"
          f" a cap all fit in, {capped:.0f}/s under one of half of them (the other half refused); {sent} sent"
          f" (exactly {args.sends // 2}: {sent == args.sends // 2})")  # fmt: skip

    config = SimConfig(concurrency=args.concurrency, run_time=f"fixed:{args.run_time}", key=KEY, seed=1)
    half = args.jobs // 2
    with tempfile.TemporaryDirectory() as tmp, run_simulator(config) as sim:
        plain_s, _ = run_wall_s(Path(tmp), sim.base_url, half, None)
        before = sim.stats()["submits"]
        capped_s, summary = run_wall_s(Path(tmp), sim.base_url, args.jobs, f"{half * 0.05:.2f}")
        submits = sim.stats()["submits"] - before
    cost = summary.get("cost")
    assert isinstance(cost, dict)
    print(f"run: {half} jobs, no cap: {plain_s:.1f} s; {args.jobs} jobs capped at {half} jobs' worth: {capped_s:.1f} s"
          f" ({capped_s - plain_s:+.1f} s to end {cost['budget_exceeded']} jobs budget_exceeded); submits {submits}"
          f" (exactly {half}: {submits == half}); estimated cost ${summary['estimated_cost_usd']}")  # fmt: skip


if __name__ == "__main__":
    main()
