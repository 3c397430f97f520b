"""A batch's local images, uploaded to fal storage once, where the manifest is, before any job is recorded.

Each distinct content (by SHA-256) is uploaded once and kept for every batch,
rerun and machine that shares the Redis while it may still be sent (see
`runner.ledger.uploads`); workers then send its URL and never read the file.
A file that cannot be uploaded is an error of the rows that name it: the
batch is refused, or with `--skip-invalid` those rows are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from threading import Lock
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from jobs.backoff import Backoff, backoff_delay_s
from jobs.batch import Batch
from jobs.diagnostics import Diagnostic, dedupe
from jobs.errors import ManifestError, StorageError
from jobs.job import Job
from runner.fal.local_images import job_image_refs, local_refs
from runner.fal.storage import StorageClient
from runner.ledger.uploads import LocalImage, Upload, Uploads

log = logging.getLogger(__name__)

#: Uploads at once: enough to fill a link, few enough not to be throttled.
UPLOADS_AT_ONCE = 4
#: Tries of an upload that failed in passing (5xx, 429, a dropped connection), with the project's one backoff.
UPLOAD_TRIES = 4
UPLOAD_BACKOFF = Backoff(base_s=0.5, factor=2.0, cap_s=10.0, jitter=0.5)
#: How long fal keeps an upload unless asked otherwise (`--upload-ttl`): a week outlasts a batch.
DEFAULT_UPLOAD_TTL_S = 7 * 86400.0

_STOP_CHECK_S = 0.2

T = TypeVar("T")

#: Called with the bytes uploaded so far and the bytes to upload.
UploadProgress = Callable[[int, int], None]


@dataclass
class UploadTally:
    """What putting a batch's local images on fal storage did."""

    #: Distinct contents the batch's local paths hold, and how many of them were uploaded now (the rest were
    #: still live from an earlier batch or run).
    contents: int = 0
    uploaded: int = 0
    reused: int = 0
    #: Where they are: the CDN base URL fal storage's token named (None: nothing was uploaded or reused).
    storage: str | None = None
    bytes_uploaded: int = 0
    #: Local path -> why it could not be read or uploaded.
    problems: dict[str, str] = field(default_factory=dict)


def read_images(jobs: list[Job], base_dir: Path) -> tuple[dict[str, LocalImage], dict[str, str]]:
    """What each local image path of the jobs (relative to `base_dir`) holds; why the others cannot be read."""
    images: dict[str, LocalImage] = {}
    problems: dict[str, str] = {}
    for ref in local_refs(jobs):
        try:
            images[ref] = read_image(base_dir / ref)
        except (UnidentifiedImageError, ValueError) as exc:  # before OSError, which the first is
            problems[ref] = f"not a readable image: {base_dir / ref} ({type(exc).__name__})"
        except OSError as exc:
            problems[ref] = f"cannot read {base_dir / ref}: {exc.strerror or type(exc).__name__}"
    return images, problems


def upload_images(
    images: dict[str, LocalImage], base_dir: Path, store: Uploads, client: StorageClient, lifetime_s: int,
    on_progress: UploadProgress | None = None, check_stop: Callable[[], None] = lambda: None,
) -> UploadTally:  # fmt: skip
    """Upload each distinct content of `images` (paths relative to `base_dir`) that has no live upload, and keep
    its URL for every batch. Never raises for a file or an upload: each problem is in the tally, by path.

    `check_stop` is called while they run; what it raises (Ctrl-C) stops them after those in progress.
    """
    tally = UploadTally()
    first_ref = {image.sha256: ref for ref, image in reversed(images.items())}
    tally.contents = len(first_ref)
    live = store.live(first_ref, needed_until=time.time() + lifetime_s / 2)  # half its life left, at least
    missing = {sha: ref for sha, ref in first_ref.items() if sha not in live}
    tally.reused = len(first_ref) - len(missing)
    progress = _Progress(sum(images[ref].bytes for ref in missing.values()), on_progress)

    def upload(sha: str) -> None:
        ref, started = missing[sha], time.time()  # fal's lifetime runs from the upload: this errs early
        try:
            url = _upload_one(client, base_dir / ref, images[ref], lifetime_s)
        except Exception as exc:  # one file's failure, whatever it is, is that file's rows' error: never the batch's
            reason = str(exc) if isinstance(exc, StorageError | OSError) else f"{type(exc).__name__}: {exc}"[:200]
            with progress.lock:
                tally.problems.update({r: f"upload to fal storage failed: {reason}" for r, i in images.items()
                                       if i.sha256 == sha})  # fmt: skip
            return
        store.remember(sha, Upload(url=url, expires_at=started + lifetime_s), time.time())
        progress.add(images[ref].bytes)
        with progress.lock:
            tally.uploaded += 1
            tally.bytes_uploaded += images[ref].bytes

    pool = ThreadPoolExecutor(UPLOADS_AT_ONCE, thread_name_prefix="upload")
    try:
        pending = {pool.submit(upload, sha) for sha in missing}
        while pending:
            _, pending = wait(pending, timeout=_STOP_CHECK_S)
            check_stop()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a stop: none starts, those in progress end
    return tally


def refuse_or_skip(batch: Batch, problems: dict[str, str], skip_invalid: bool) -> Batch:
    """`batch` without the jobs whose local images could not be uploaded, each a located error of its row;
    raises ManifestError (nothing recorded) unless `skip_invalid` and some job is left."""
    if not problems:
        return batch
    found, kept = [], []
    for job in batch.jobs:
        errors = [Diagnostic(job.file, job.line, _label(name, index), f"{ref}: {problems[ref]}")
                  for name, index, ref in job_image_refs(job) if ref in problems]  # fmt: skip
        found.extend(errors)
        if not errors:
            kept.append(job)
    diagnostics = sorted(dedupe(batch.diagnostics + found), key=lambda d: d.line or 0)
    if not skip_invalid or not kept:
        raise ManifestError(diagnostics)
    return replace(batch, jobs=kept, diagnostics=diagnostics)


def read_image(path: Path) -> LocalImage:
    """What the file holds: its SHA-256, size and pixel size (the bytes are not kept). Raises OSError or
    UnidentifiedImageError."""
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        size = handle.tell()
    with Image.open(path) as image:
        mime = Image.MIME.get(image.format or "") or "application/octet-stream"
        width, height = image.size
    return LocalImage(sha256=digest, bytes=size, width=width, height=height, mime=mime)


def _upload_one(client: StorageClient, path: Path, image: LocalImage, lifetime_s: int) -> str:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise OSError(0, f"{path} changed while the batch was being recorded; run it again")
    return with_retries(lambda: client.upload(data, image.mime, path.name, lifetime_s), f"upload of {path.name}")


def with_retries(call: Callable[[], T], what: str) -> T:
    """`call()`, tried again after a failure in passing (a transient StorageError) with the project's backoff."""
    for attempt in range(1, UPLOAD_TRIES + 1):
        try:
            return call()
        except StorageError as exc:
            if not exc.transient or attempt == UPLOAD_TRIES:
                raise
            delay_s = backoff_delay_s(attempt, UPLOAD_BACKOFF, random.random())
            log.info("%s failed (%s), try %d of %d; again in %.1f s", what, exc, attempt, UPLOAD_TRIES, delay_s)
            time.sleep(delay_s)  # before the batch is recorded (a schedule's firing too): seconds, bounded
    raise AssertionError("unreachable: the last try raises or returns")


class _Progress:
    def __init__(self, total: int, report: UploadProgress | None) -> None:
        self.total, self.done, self.report = total, 0, report
        self.lock = Lock()
        if report is not None and total:
            report(0, total)

    def add(self, sent: int) -> None:
        with self.lock:
            self.done += sent
            if self.report is not None:
                self.report(self.done, self.total)


def _label(name: str, index: int | None) -> str:
    return name if index is None else f"{name}[{index}]"
