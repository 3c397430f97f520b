"""Time `wan-batch run` against the simulator: makespan against the ideal, and HTTP calls per job.

    python bench/bench_run.py [--jobs 1000] [--concurrency 20] [--run-time 2] [--max-in-flight 25] [--webhooks]

The simulator runs in this process (C requests at once, each L seconds); the
runner is the real `wan-batch run` in a subprocess, on its embedded Redis and
worker. ideal = ceil(N / C) * L. Makespan = first submit to the last job's
files on disk (from the job sidecars). Targets at N=1000, C=20, L=2 s:
makespan / ideal <= 1.10 and at most 3 status polls per job. With --webhooks the
run serves its receiver (`--serve` and `--webhook-url` on a free port) and the
simulator calls it as each request ends, instead of being polled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.simulator import SimConfig, run_simulator

KEY = "bench-key"


def write_manifest(folder: Path, jobs: int) -> Path:
    path = folder / "bench.jsonl"
    with path.open("w") as handle:
        for n in range(jobs):
            row = {"endpoint": "fal-ai/wan-25-preview/image-to-image", "prompt": f"bench prompt {n}",
                   "image_urls": [f"https://cdn.example.test/{n}.png"], "seed": n}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path


def makespan_s(batch_folder: Path) -> float:
    starts, ends = [], []
    for sidecar in (batch_folder / "jobs").glob("*.json"):
        data = json.loads(sidecar.read_text())
        first = data["history"][0]["submitted_at"] if data["history"] else data["submitted_at"]
        starts.append(first)
        ends.append(data["finished_at"])
    return max(ends) - min(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--run-time", type=float, default=2.0)
    parser.add_argument("--spread", type=float, default=0.0,
                        help="Run times uniform over RUN_TIME +- SPREAD/2 (the ideal then takes RUN_TIME, the mean)")
    parser.add_argument("--max-in-flight", default="25", help="A number, or auto")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--webhooks", action="store_true", help="fal calls back; polls are a safety net only")
    args = parser.parse_args()
    half = args.spread / 2
    run_time = f"uniform:{args.run_time - half},{args.run_time + half}" if half else f"fixed:{args.run_time}"
    config = SimConfig(concurrency=args.concurrency, run_time=run_time, key=KEY, seed=1)
    with tempfile.TemporaryDirectory() as tmp, run_simulator(config) as sim:
        manifest = write_manifest(Path(tmp), args.jobs)
        env = {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, "FAL_KEY": KEY}
        command = [str(Path(sys.executable).parent / "wan-batch"), "run", str(manifest), "--base-url", sim.base_url,
                   "--out", str(Path(tmp) / "out"), "--json", "--max-in-flight", str(args.max_in_flight),
                   "--workers", str(args.workers)]  # fmt: skip
        if args.webhooks:  # a free port, named in full: a path --webhook-url is for --sim only
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            command += ["--serve", f"127.0.0.1:{port}", "--webhook-url", f"http://127.0.0.1:{port}/fal/webhook",
                        "--jwks-url", f"{sim.base_url}/.well-known/jwks.json"]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall_s = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"wan-batch run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        stats = sim.stats()
        span_s = makespan_s(Path(tmp) / "out" / "bench")
    ideal_s = math.ceil(args.jobs / args.concurrency) * args.run_time
    calls = {name: stats[name] for name in ("submits", "status_polls", "result_fetches", "downloads", "cancels",
                                            "webhooks_sent")}  # fmt: skip
    per_job = {name: count / args.jobs for name, count in calls.items()}
    print(f"N={args.jobs} C={args.concurrency} L={run_time} max-in-flight={args.max_in_flight} "
          f"workers={args.workers} {'webhooks' if args.webhooks else 'polling'}")  # fmt: skip
    print(f"makespan {span_s:.1f} s, ideal {ideal_s:.1f} s, ratio {span_s / ideal_s:.3f} (target <= 1.10)")
    print(f"wall time of the command {wall_s:.1f} s (start-up, validation and report included)")
    print("HTTP requests per job: " + ", ".join(f"{name} {value:.2f}" for name, value in per_job.items())
          + f"; total {sum(per_job.values()):.2f}")  # fmt: skip
    print(f"status polls per job {per_job['status_polls']:.2f} (target <= 3); duplicate submits "
          f"{stats['duplicate_submits']}; max in progress at the simulator {stats['max_in_progress']}")  # fmt: skip
    print(f"peak RSS of this process (simulator) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
          f"of the runner {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
