"""Lost submits at scale: a `wan-batch run` with connection resets and lost answers, against one without faults.

    python bench/bench_reconcile.py [--jobs 2000] [--resets 0.03] [--lost 0.02] [--start-timeout-s 10]

The simulator runs in this process (C requests at once, run times uniform in
0.5..1.5 s, its history 1 s behind); the runner is the real `wan-batch run`
in a subprocess, on its embedded Redis and worker, told the simulator's lag
(WAN_BATCH_RECONCILE__HISTORY_LAG_S=2, _CLOCK_SKEW_S=1). A reset closes any
call's connection before it does anything (a submit so reset never reached
fal: it is proven absent, then sent again); a lost answer creates the request
and drops the reply (it is found in fal's history and adopted). Prints, for
the faulty run: jobs adopted, jobs sent again after proof of absence, inputs
fal got more than once (must be 0), jobs left to a person (must be 0), and the
makespan against the run without faults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_run import KEY, makespan_s, write_manifest  # beside this script

from runner.simulator import FaultRates, SimConfig, run_simulator

#: What a person would have to settle by hand: a submit that may or may not have reached fal.
MANUAL = ("submit_unconfirmed",)


def run_once(args: argparse.Namespace, faults: FaultRates, folder: Path) -> dict[str, Any]:
    config = SimConfig(concurrency=args.concurrency, run_time="uniform:0.5,1.5", key=KEY, seed=7, faults=faults)
    with run_simulator(config) as sim:
        manifest = write_manifest(folder, args.jobs)
        env = {**{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FAL_API_URL")}, "FAL_KEY": KEY,
               "WAN_BATCH_RECONCILE__HISTORY_LAG_S": "2", "WAN_BATCH_RECONCILE__CLOCK_SKEW_S": "1"}  # fmt: skip
        command = [str(Path(sys.executable).parent / "wan-batch"), "run", str(manifest), "--base-url", sim.base_url,
                   "--api-url", f"{sim.base_url}/v1", "--start-timeout-s", str(args.start_timeout_s),
                   "--out", str(folder / "out"), "--json", "--max-in-flight", str(args.max_in_flight),
                   "--workers", str(args.workers)]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall_s = time.monotonic() - started
        stats = sim.stats()
    batch = folder / "out" / "bench"
    sidecars = [json.loads(path.read_text()) for path in (batch / "jobs").glob("*.json")]
    outcomes = Counter(entry["outcome"] for data in sidecars for entry in data["reconciled"])
    statuses = Counter(data["status"] for data in sidecars)
    failures = Counter(data["error_type"] for data in sidecars if data["status"] == "failed")
    return {
        "exit": done.returncode, "wall_s": wall_s, "makespan_s": makespan_s(batch), "stats": stats,
        "adopted": outcomes["adopted"], "absent": outcomes["absent"],
        "jobs_reconciled": sum(1 for data in sidecars if data["reconciled"]),
        "statuses": dict(statuses), "failures": dict(failures),
        "manual": sum(failures[kind] for kind in MANUAL),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--resets", type=float, default=0.03, help="Rate of connection resets, on every call.")
    parser.add_argument("--lost", type=float, default=0.02, help="Rate of lost submit answers.")
    parser.add_argument("--start-timeout-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    runs = {}
    faults_of = {"no faults": FaultRates(),
                 "faults": FaultRates(drop_connection=args.resets, lost_submit_response=args.lost)}  # fmt: skip
    for name, faults in faults_of.items():
        with tempfile.TemporaryDirectory() as tmp:
            runs[name] = run_once(args, faults, Path(tmp))
    clean, faulty = runs["no faults"], runs["faults"]
    stats = faulty["stats"]
    print(f"N={args.jobs} C={args.concurrency} max-in-flight={args.max_in_flight} workers={args.workers} "
          f"start deadline {args.start_timeout_s:g} s; faults: resets {args.resets:.0%} of calls, lost answers "
          f"{args.lost:.0%} of submits")  # fmt: skip
    print(f"faults injected: {stats['faults']['drop_connection']} resets, "
          f"{stats['faults']['lost_submit_response']} lost answers; history calls {stats['history_calls']}")
    print(f"jobs reconciled {faulty['jobs_reconciled']}: adopted {faulty['adopted']}, sent again after proof of "
          f"absence {faulty['absent']}")  # fmt: skip
    print(f"inputs submitted twice {stats['duplicate_submits']} (must be 0); jobs needing manual action "
          f"{faulty['manual']} (must be 0); statuses {faulty['statuses']}; failures {faulty['failures']}")
    print(f"exit codes: faults {faulty['exit']}, no faults {clean['exit']}")
    extra = faulty["makespan_s"] - clean["makespan_s"]
    print(f"makespan {faulty['makespan_s']:.1f} s with faults, {clean['makespan_s']:.1f} s without: "
          f"+{extra:.1f} s ({extra / clean['makespan_s']:+.0%}); wall {faulty['wall_s']:.1f} s / "
          f"{clean['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
