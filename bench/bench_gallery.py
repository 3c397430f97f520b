"""Time `report.html` and its thumbnails for a 10,000-job batch, and weigh the page.

    python bench/bench_gallery.py [--jobs 10000] [--size 512]

Writes one SIZE x SIZE PNG output per job (a Mandelbrot, not noise: 10,000 of
those would be gigabytes) and a local input shared by all, then renders the
page twice: first making every thumbnail, then again with them made (what each
later report costs). Page weight = report.html + thumbs/.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from jobs.job import Job
from jobs.record import JobRecord, OutputFile
from jobs.report import summarize
from jobs.status import JobStatus
from runner.steps.gallery import gallery_html


def make_records(folder: Path, jobs: int, size: int) -> list[JobRecord]:
    (folder / "images").mkdir(parents=True)
    noise = Image.effect_mandelbrot((size, size), (-2.0, -1.5, 1.0, 1.5), 100).convert("RGB")  # compresses, as real
    made = []
    for n in range(jobs):
        path = f"images/j{n}_0.png"
        noise.save(folder / path)
        job = Job(f"j{n}", "fal-ai/wan-25-preview/image-to-image", {"prompt": f"prompt {n}", "image_urls": ["in.png"]},
                  f"f{n}", "m.jsonl", n + 1, n + 1, matrix={"seed": n % 8})  # fmt: skip
        output = OutputFile(0, path, "http://x", "image/png", size, size, 1, n)
        made.append(JobRecord(job, JobStatus.SUCCEEDED, attempts=1, outputs=(output,), submitted_at=0.0,
                              finished_at=1.0))  # fmt: skip
    noise.save(folder / "in.png")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "batch"
        records = make_records(folder, args.jobs, args.size)
        summary = summarize(records, 1.0)
        for label in ("first (thumbnails made)", "again (thumbnails kept)"):
            started = time.perf_counter()
            page = gallery_html(records, summary, {"batch_id": "batch"}, folder, {"in.png": folder / "in.png"})
            print(f"{label}: {time.perf_counter() - started:.1f} s")
        thumbs = sum(p.stat().st_size for p in (folder / "thumbs").iterdir())
        print(f"report.html {len(page.encode()) / 1e6:.1f} MB, thumbs/ {thumbs / 1e6:.1f} MB for {args.jobs:,} jobs"
              f" ({(len(page.encode()) + thumbs) / args.jobs / 1e3:.1f} KB per job)")


if __name__ == "__main__":
    main()
