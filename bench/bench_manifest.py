"""Time and memory of validating a generated 100,000-row manifest.

    python bench/bench_manifest.py [--rows 100000] [--repeat 3]

Generates CSV, JSONL and YAML manifests of the same jobs (half Wan 2.2, half
Wan 2.5, every fifth row with a local image), and a YAML matrix of as many
jobs (prompts x 100 seeds), then times `load_manifest`:
reading, parsing, schema validation, id hashing and the local-image checks.
Targets: under 10 s for 100,000 rows on a 2-core machine; validation
(`wan-batch validate`, which keeps no job) under 0.5 KB of memory per row for
CSV and JSONL, which stream (peak Python allocations, by tracemalloc, in a run
of its own). YAML is read whole: its time is shown beside CSV's.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import yaml
from PIL import Image

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.manifest import ManifestOptions
from runner.batches.manifests import load_manifest
from runner.settings import InputSettings


def make_rows(count: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for n in range(count):
        image = "images/in.png" if n % 5 == 0 else f"https://cdn.example.test/in/{n}.png"
        if n % 2:
            rows.append({"id": f"r{n}", "endpoint": WAN22_I2I, "prompt": f"prompt number {n}", "image_url": image,
                         "strength": round((n % 100) / 100, 2), "num_inference_steps": 27,
                         "enable_safety_checker": True, "acceleration": "regular"})  # fmt: skip
        else:
            rows.append({"id": f"r{n}", "endpoint": WAN25_I2I, "prompt": f"prompt number {n}", "image_urls": [image],
                         "image_size": "square_hd", "num_images": 1 + n % 4, "seed": n})  # fmt: skip
    return rows


def write_manifests(folder: Path, rows: list[dict[str, object]]) -> list[Path]:
    (folder / "images").mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "images" / "in.png")
    columns = sorted({key for row in rows for key in row})
    with (folder / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    with (folder / "rows.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    with (folder / "rows.yaml").open("w") as handle:
        yaml.safe_dump({"jobs": rows}, handle, sort_keys=False)
    with (folder / "matrix.yaml").open("w") as handle:  # the way large YAML batches are written
        prompts = [f"prompt number {n}" for n in range(len(rows) // 100)]
        matrix = {"prompt": prompts, "seed": list(range(100))}
        yaml.safe_dump({"endpoint": WAN25_I2I, "defaults": {"image_urls": ["images/in.png"]}, "matrix": matrix}, handle)
    return [folder / "rows.csv", folder / "rows.jsonl", folder / "rows.yaml", folder / "matrix.yaml"]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "|".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    options, settings = ManifestOptions(max_jobs=max(args.rows, 100_000)), InputSettings()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_manifests(Path(tmp), make_rows(args.rows))
        times = {}
        for path in paths:
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                batch = load_manifest(path, options, settings)
                best = min(best, time.perf_counter() - started)
            assert not batch.errors, batch.errors[:3]
            assert len(batch.jobs) == args.rows
            del batch
            times[path.name] = best
            per_row_kb = _validation_peak_bytes(path, options, settings) / args.rows / 1024
            ratio = f", {best / times['rows.csv']:.1f}x CSV's time" if path.name != "rows.csv" else ""
            size_mb = path.stat().st_size / 1e6
            print(f"{path.name:>11}: {args.rows:,} rows ({size_mb:.1f} MB) in {best:.2f} s (best of {args.repeat}),"
                  f" {args.rows / best:,.0f} rows/s{ratio}; validation peak {per_row_kb:.2f} KB/row")  # fmt: skip
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB (of the whole run, jobs kept)")


def _validation_peak_bytes(path: Path, options: ManifestOptions, settings: InputSettings) -> int:
    """Peak memory Python allocates while validating `path` as `wan-batch validate` does (jobs counted, not kept)."""
    tracemalloc.start()
    try:
        batch = load_manifest(path, options, settings, keep_jobs=False)
        assert not batch.errors and batch.made.jobs > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


if __name__ == "__main__":
    main()
