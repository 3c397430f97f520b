"""Local images uploaded to fal storage once versus inlined in every submit: bytes sent to fal, and wall time.

    python bench/bench_uploads.py [--jobs 1000] [--images 50] [--image-mb 2] [--concurrency 20] [--run-time 0.5]

Writes IMAGES local PNGs of about IMAGE_MB each (noise, so they do not
compress) and a manifest of JOBS jobs that use them in turn, then runs the
real `wan-batch run` (embedded Redis and worker, in a subprocess) against the
simulator twice: `--images upload` and `--images inline`. Bytes sent to fal =
upload bodies + submit bodies, from the simulator's counters; wall time is the
whole command, uploads included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from runner.simulator import SimConfig, run_simulator

KEY = "bench-key"


def write_inputs(folder: Path, jobs: int, images: int, image_mb: float) -> Path:
    (folder / "in").mkdir()
    side = int((image_mb * 1e6 / 3) ** 0.5)  # RGB noise: about 3 bytes a pixel as PNG
    for n in range(images):
        Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(folder / "in" / f"{n}.png")
    path = folder / "bench.jsonl"
    with path.open("w") as handle:
        for n in range(jobs):
            row = {"endpoint": "fal-ai/wan-25-preview/image-to-image", "prompt": f"bench prompt {n}",
                   "image_urls": [f"in/{n % images}.png"], "seed": n}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path


def run(manifest: Path, sim_url: str, out: Path, mode: str, max_in_flight: int) -> float:
    env = {**os.environ, "FAL_KEY": KEY}
    command = [str(Path(sys.executable).parent / "wan-batch"), "run", str(manifest), "--base-url", sim_url,
               "--out", str(out), "--images", mode, "--max-in-flight", str(max_in_flight), "--quiet",
               "--max-image-mb", "20", "--api-url", "none"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stdout}\n{done.stderr}")
    return wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--image-mb", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--run-time", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_inputs(Path(tmp), args.jobs, args.images, args.image_mb)
        image_bytes = sum(p.stat().st_size for p in (Path(tmp) / "in").iterdir())
        print(f"{args.jobs} jobs over {args.images} local images, {image_bytes / 1e6:.1f} MB in all")
        for mode in ("upload", "inline"):
            config = SimConfig(concurrency=args.concurrency, run_time=f"fixed:{args.run_time}", key=KEY, seed=1,
                               fetch_max_mb=20, storage_mb=2048)  # fmt: skip
            with run_simulator(config) as sim:
                wall_s = run(manifest, sim.base_url, Path(tmp) / f"out-{mode}", mode, args.concurrency + 5)
                stats = sim.stats()
            sent = stats["upload_bytes"] + stats["submit_bytes"]
            print(f"{mode:>6}: {sent / 1e6:9.1f} MB sent to fal ({stats['upload_bytes'] / 1e6:.1f} MB in"
                  f" {stats['uploads']} uploads, {stats['submit_bytes'] / 1e6:.1f} MB in {stats['submits']} submits),"
                  f" {sent / args.jobs / 1e3:8.1f} KB per job; wall {wall_s:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
