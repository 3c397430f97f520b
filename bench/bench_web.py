"""Response times of `wan-batch serve`'s dashboard on a 20,000-job batch, over real HTTP.

    python bench/bench_web.py [--jobs 20000] [--requests 50]

A real Redis (an embedded redis-server in a temp dir, fsync always, as a run
has it) holds one batch recorded with `Ledger.save_batch` and `sync_jobs` and
moved only by the ledger's own moves (`jobs.lifecycle.plan` + `Ledger.apply`),
in a window of 10 (--max-in-flight's default) whose freed slots admit the next
jobs as workers see them do: 3/4 of the jobs succeeded (one small PNG each
under the batch's images/, so thumbnails are made), 1/20 failed across 4
error types, 10 in flight (queued with a queue position, or running), the
rest waiting. Each move is counted as `runner.steps.moves.move` counts it
(`Metrics.moved`), so `/metrics` has counters and the two duration histograms.
The timeline is simulated: 15 hours of a batch ending now.

The app (`runner.web.app.create_app`) is served by uvicorn in a thread on
127.0.0.1 (`runner.web.serving`); each path gets 3 warm-ups, then N timed GETs
one at a time from an httpx.Client in this process (so the client's own time,
and its share of the GIL, is in the figures). Prints p50, p95 and max in ms,
and the body's size, per path.
"""

from __future__ import annotations

import argparse
import math
import random
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import redis
from PIL import Image
from starlette.applications import Starlette

from jobs.endpoints import WAN25_I2I
from jobs.job import Job, canonical_json, fingerprint
from jobs.lifecycle import JobUpdate, Move, plan
from jobs.record import JobRecord, OutputFile
from jobs.status import JobStatus
from runner.embedded.server import EmbeddedRedis
from runner.ledger.batch_info import BatchInfo
from runner.ledger.metrics import Metrics
from runner.ledger.store import Ledger
from runner.web.access import Access
from runner.web.app import create_app
from runner.web.serving import bind, serving_in_background
from runner.web.source import LedgerSource
from runner.web.views import thumb_url

BATCH = "night"
#: --max-in-flight's default: the jobs left in flight when the others have ended or wait.
WINDOW = 10
#: Failures by error type, as shares of the failed jobs.
ERRORS = {"content_policy_violation": 0.5, "request_timeout": 0.3, "invalid_response": 0.15, "transport": 0.05}
#: fal's queue, as its answers to a submit name a request's URLs.
QUEUE = "https://queue.fal.run/fal-ai/wan-25-preview/requests"
#: How long the simulated batch has run (its jobs' times are spread over it, ending now).
SPAN_S = 15 * 3600.0
IMAGE_PX = 128
WARM_UPS = 3
#: Per path: the timed GETs' milliseconds, the body's size, the first warm-up's milliseconds.
Rows = dict[str, tuple[list[float], int, float]]


class Mover:
    """Applies moves as a worker's `move` does: planned, applied to the revision read, then counted."""

    def __init__(self, ledger: Ledger, metrics: Metrics) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.applied = 0

    def __call__(self, record: JobRecord, what: Move, at: float, **values: Any) -> tuple[JobRecord, list[str]]:
        applied = self.ledger.apply(BATCH, plan(record, what, JobUpdate(**values), at), due_at=at)
        if applied is None:
            raise RuntimeError(f"{what.value} of {record.job.id} was not applied")
        self.metrics.moved(what, applied.record)
        self.applied += 1
        return applied.record, applied.admitted


def make_jobs(count: int) -> list[Job]:
    jobs = []
    for n in range(count):
        body = {"prompt": f"a lighthouse at dusk, take {n}", "image_urls": [f"https://cdn.example.test/in/{n:06d}.png"],
                "image_size": "square_hd", "seed": n}  # fmt: skip
        jobs.append(Job(f"j{n}", WAN25_I2I, body, fingerprint(WAN25_I2I, canonical_json(body)), "night.jsonl", n + 1,
                        n + 1))  # fmt: skip
    return jobs


def small_png() -> bytes:
    image = Image.effect_mandelbrot((IMAGE_PX, IMAGE_PX), (-2.0, -1.5, 1.0, 1.5), 100).convert("RGB")
    buffer = BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def send(move: Mover, record: JobRecord, at: float, position: int | None, rng: random.Random) -> JobRecord:
    """SEND then ACCEPT: fal has the request, queued at `position`."""
    sent, _ = move(record, Move.SEND, at, attempts=record.attempts + 1, sent_at=at, sent_digest=record.job.fingerprint)
    request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    url = f"{QUEUE}/{request_id}"
    queued, _ = move(sent, Move.ACCEPT, at + 0.3, request_id=request_id, status_url=f"{url}/status",
                     response_url=url, cancel_url=f"{url}/cancel", submitted_at=at + 0.3, queue_position=position,
                     started_at=None, completed_at=None, last_queued_at=None)  # fmt: skip
    return queued


def end(move: Mover, record: JobRecord, at: float, error: str | None, folder: Path, png: bytes,
        rng: random.Random) -> list[str]:  # fmt: skip
    """Take an admitted job to its end (succeeded, or failed with `error`); the jobs its freed slot admitted."""
    queued = send(move, record, at, 0, rng)
    started = at + 0.3 + rng.uniform(0.5, 6.0)
    running, _ = move(queued, Move.SEEN_RUNNING, started, started_at=started, queue_position=None,
                      last_log="step 12/30", polls=2)  # fmt: skip
    completed = started + rng.uniform(20.0, 45.0)
    if error is not None:
        _, admitted = move(running, Move.FAIL, completed, error_type=error, error_message=f"fal said: {error}",
                           finished_at=completed)  # fmt: skip
        return admitted
    collecting, _ = move(running, Move.COMPLETE, completed, completed_at=completed, polls=4, queue_position=None,
                         inference_s=completed - started - 0.4, started_at=started)  # fmt: skip
    path = f"images/{record.job.file_stem}_0.png"
    (folder / path).write_bytes(png)
    output = OutputFile(0, path, f"https://v3.fal.media/files/{record.job.id}.png", "image/png", IMAGE_PX, IMAGE_PX,
                        len(png), record.job.input["seed"])  # fmt: skip
    _, admitted = move(collecting, Move.SUCCEED, completed + 1.5, outputs=(output,), finished_at=completed + 1.5,
                       error_type=None, error_message=None)  # fmt: skip
    return admitted


def build(ledger: Ledger, folder: Path, jobs: int) -> dict[str, float]:
    """Record the batch and move its jobs to their mix of statuses; what it took."""
    succeeded, failed = jobs * 3 // 4, jobs // 20
    ending = succeeded + failed
    if ending + WINDOW > jobs:
        raise SystemExit(f"--jobs {jobs}: too few for {WINDOW} jobs in flight")
    rng = random.Random(7)
    now = time.time()
    created = now - SPAN_S - 120
    (folder / "images").mkdir(parents=True)
    started = time.perf_counter()
    info = BatchInfo(id=BATCH, manifest=str(folder.parent / "night.jsonl"), folder=str(folder), created_at=created,
                     max_in_flight=WINDOW, provider_url="https://queue.fal.run")  # fmt: skip
    ledger.save_batch(info)
    ledger.sync_jobs(BATCH, make_jobs(jobs), now=created)
    recorded_s = time.perf_counter() - started
    print(f"recorded {jobs:,} jobs in {recorded_s:.1f} s")
    move, png = Mover(ledger, Metrics(ledger.redis, ledger.keys)), small_png()
    errors = list(ERRORS)
    error_at = [sum(list(ERRORS.values())[: n + 1]) for n in range(len(ERRORS))]
    admitted = deque(ledger.admit(BATCH))
    started = time.perf_counter()
    for k in range(ending):
        record = ledger.record(BATCH, admitted.popleft())
        assert record is not None and record.status is JobStatus.ADMITTED
        error = None
        if (k + 1) * failed // ending > k * failed // ending:  # failures spread evenly among the ends
            share = (k * failed // ending) / failed
            error = errors[next(n for n, bound in enumerate(error_at) if share < bound)]
        admitted.extend(end(move, record, created + SPAN_S * k / ending, error, folder, png, rng))
        if (k + 1) % max(1, ending // 10) == 0:
            took = time.perf_counter() - started
            print(f"  {k + 1:,}/{ending:,} jobs ended: {move.applied:,} moves in {took:.1f} s "
                  f"({move.applied / took:.0f} moves/s)", flush=True)  # fmt: skip
    for position, job_id in enumerate(admitted):  # the window: queued with a position, the first 4 running
        record = ledger.record(BATCH, job_id)
        assert record is not None
        at = now - 40 + position * 3
        queued = send(move, record, at, position + 1 - 4 if position >= 4 else 0, rng)
        if position < 4:
            move(queued, Move.SEEN_RUNNING, at + 2, started_at=at + 2, queue_position=None, polls=1)
    moved_s = time.perf_counter() - started
    return {"recorded_s": recorded_s, "moved_s": moved_s, "moves": move.applied}


def percentile(values: list[float], share: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def timed_gets(http: httpx.Client, path: str, requests: int) -> tuple[list[float], int, float]:
    """Milliseconds of each timed GET, the body's size, and the first warm-up's milliseconds."""
    times, size, first_ms = [], 0, 0.0
    for n in range(WARM_UPS + requests):
        started = time.perf_counter()
        response = http.get(path)
        took_ms = 1000 * (time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text[:200]}")
        if n == 0:
            first_ms = took_ms
        if n >= WARM_UPS:
            times.append(took_ms)
            size = len(response.content)
    return times, size, first_ms


def measure(app: Starlette, sock: socket.socket, paths: list[str], requests: int) -> Rows:
    with serving_in_background(app, sock) as url, httpx.Client(base_url=url, timeout=60) as http:
        return {path: timed_gets(http, path, requests) for path in paths}


def print_table(title: str, rows: Rows) -> None:
    width = max(len(path) for path in rows)
    print(f"\n{title}")
    print(f"{'path':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}  {'max ms':>7}  {'bytes':>9}")
    for path, (times, size, _) in rows.items():
        print(f"{path:<{width}}  {percentile(times, 0.5):7.1f}  {percentile(times, 0.95):7.1f}  {max(times):7.1f}  "
              f"{size:>9,}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=50, help="Timed GETs per path (after 3 warm-ups).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        ledger = Ledger(redis.Redis(unix_socket_path=server.socket_path))
        built = build(ledger, Path(tmp) / "out" / BATCH, args.jobs)
        counts = {status.value: n for status, n in ledger.counts(BATCH).items() if n}
        print(f"moved to their statuses in {built['moved_s']:.1f} s ({built['moves']:,.0f} moves, "
              f"{built['moves'] / built['moved_s']:.0f}/s, each counted in Metrics): {counts}; failures "
              f"{ledger.failures_by_type(BATCH)}")  # fmt: skip
        app = create_app(LedgerSource(ledger, "a bench Redis"), Access.for_host("127.0.0.1", None, False))
        latest = ledger.records_with(BATCH, [JobStatus.SUCCEEDED], latest=1)[0]
        thumb = thumb_url(BATCH, latest.outputs[0].path)
        paths = ["/metrics", "/api/batches", f"/api/batches/{BATCH}", f"/batches/{BATCH}", thumb]
        rows = measure(app, bind("127.0.0.1", 0), paths, args.requests)
    print(f"\ncommand: python bench/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"{args.jobs:,} jobs, window {WINDOW}; {args.requests} timed GETs per path after {WARM_UPS} warm-ups, "
          f"one at a time, uvicorn in a thread of this process")  # fmt: skip
    print_table("served on runner.web.serving.bind's socket", rows)
    print(f"\n(the thumbnail's first GET, which made it: {rows[thumb][2]:.1f} ms; later GETs serve the file)")


if __name__ == "__main__":
    main()
