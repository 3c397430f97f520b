"""From a manifest to a recorded batch: validate it, pick the provider, record it, and write its report.

What `wan-batch run`, `submit` and a schedule's firing share. Nothing here
sends a Celery task: a recorded batch's first submits are timers in the
ledger, which the workers' dispatchers send.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx

from jobs import window
from jobs.batch import Batch
from jobs.errors import ManifestError, StorageError, UsageError
from jobs.job import Job
from jobs.manifest import ManifestOptions
from jobs.pricing import Price
from jobs.reconcile import start_timeout_s
from jobs.record import JobRecord
from jobs.report import Costs
from jobs.selection import first_jobs, sample_jobs
from jobs.status import JobStatus
from runner.batches.costs import Priced, cap_nusd, check_cap, estimate_jobs, price_options, prices_for
from runner.batches.manifests import load_manifest
from runner.batches.operations import resume_batch
from runner.batches.providers import api_url_of, check_same_provider, shown_url
from runner.batches.request import RunRequest
from runner.batches.uploads import (
    UploadProgress,
    UploadTally,
    read_images,
    refuse_or_skip,
    upload_images,
    with_retries,
)
from runner.fal.pricing import PriceList
from runner.fal.providers import WORKERS_CREDENTIAL, Provider
from runner.fal.storage import StorageClient, storage_url_for
from runner.ledger.batch_info import BatchInfo
from runner.ledger.metrics import Metrics
from runner.ledger.store import Ledger
from runner.ledger.uploads import READ_MARGIN_S, BatchImages, LocalImage, Uploads, image_sizes
from runner.settings import MIB, InputSettings
from runner.steps.context import Context
from runner.steps.folder import BatchFolder


def images_mode(request: RunRequest, provider: Provider) -> Literal["upload", "inline"]:
    """How the batch sends local images: as asked, else uploaded where a fal key is, and inline with a gateway's
    token (which cannot upload) or from a shell without a credential (`submit`: the workers hold it)."""
    if request.images is not None:
        return request.images
    key_here = provider.auth_scheme == "Key" and provider.credential.get_secret_value() != WORKERS_CREDENTIAL
    return "upload" if key_here else "inline"


def prepare_images(
    ledger: Ledger, request: RunRequest, batch: Batch, provider: Provider, http: httpx.Client,
    on_progress: UploadProgress | None = None, check_stop: Callable[[], None] = lambda: None,
) -> tuple[Batch, dict[str, LocalImage], UploadTally]:  # fmt: skip
    """Read the batch's local images (their content and pixel size) and, unless they are sent inline, upload
    those not on fal storage yet; before anything is recorded.

    The batch without the jobs of files that could not be read or uploaded (with `skip_invalid`), what each
    local path holds, and what was uploaded. Raises ManifestError when such a file fails the batch, UsageError
    when images are to be uploaded from a shell without a fal key.
    """
    check_rerun(ledger, request, provider)  # before anything is uploaded for a batch that may not be recorded
    base_dir = request.manifest.resolve().parent
    images, problems = read_images(batch.jobs, base_dir)
    tally = UploadTally()
    if images and images_mode(request, provider) == "upload":
        if provider.credential.get_secret_value() == WORKERS_CREDENTIAL:  # --images upload, asked for
            raise UsageError("--images upload: local images are uploaded to fal storage from where the manifest"
                             " is: set FAL_KEY here (or let workers send them inline: --images inline)")
        read_s = start_timeout_s(request.priority, request.start_timeout_s) + READ_MARGIN_S
        if request.upload_ttl_s < 2 * read_s:
            raise UsageError(f"--upload-ttl: give at least {2 * read_s / 3600:g}h: twice the start deadline of its"
                             " requests and 15 min, so that fal keeps an image until a request started late reads it")
        client = StorageClient(http, storage_url_for(request.storage_url, provider), provider)
        try:
            cdn_url = with_retries(client.cdn_url, "fal storage's token")
        except StorageError as exc:
            problems |= {ref: f"upload to fal storage failed: {exc}" for ref in images}
        else:
            uploads = Uploads(ledger.redis, ledger.keys, cdn_url)
            tally = upload_images(images, base_dir, uploads, client, int(request.upload_ttl_s), on_progress,
                                  check_stop)  # fmt: skip
            tally.storage = cdn_url
            metrics = Metrics(ledger.redis, ledger.keys)
            metrics.count("uploads", {}, tally.uploaded)
            metrics.count("upload_bytes", {}, tally.bytes_uploaded)
            problems |= tally.problems
    kept = {ref: image for ref, image in images.items() if ref not in problems}
    return refuse_or_skip(batch, problems, request.skip_invalid), kept, tally


@dataclass
class RunResult:
    batch_id: str
    folder: Path
    counts: dict[JobStatus, int]
    report_csv: Path
    report_json: Path
    summary: dict[str, object]
    synced: dict[str, int]
    failures: list[JobRecord]
    #: How the notification of its end went (`--notify`): "sent (HTTP 200)", "failed after 3 tries (...)".
    notified: str | None = None
    #: What this run uploaded of the batch's local images.
    uploads: UploadTally = field(default_factory=UploadTally)

    @property
    def summary_with_paths(self) -> dict[str, Any]:
        """The report's summary and where the report is: what a firing keeps and a notify URL is sent."""
        return {**self.summary, "report_csv": str(self.report_csv), "report_json": str(self.report_json)}


def load_batch(request: RunRequest, data: bytes | None = None) -> Batch:
    """The validated manifest (or its kept content `data`); raises ManifestError unless it may run.

    A manifest with errors may run only with `skip_invalid`, only if some rows are valid, and only if it
    was read to its end (rows not read cannot be reported as skipped).
    """
    settings = InputSettings(max_image_bytes=int(request.max_image_mb * MIB))
    options = ManifestOptions(default_endpoint=request.endpoint, allowed_endpoints=frozenset(request.allowed_endpoints),
                              max_jobs=request.max_jobs)  # fmt: skip
    batch = load_manifest(request.manifest, options, settings, data)
    if (batch.errors and not (request.skip_invalid and batch.complete)) or not batch.jobs:
        raise ManifestError(batch.diagnostics)
    return batch


def trial_jobs(request: RunRequest, batch: Batch) -> Batch:
    """`batch` with only the jobs `--limit` or `--sample` take (all of them without either)."""
    if request.limit is not None:
        return replace(batch, jobs=first_jobs(batch.jobs, request.limit))
    if request.sample is not None:
        return replace(batch, jobs=sample_jobs(batch.jobs, request.sample))
    return batch


def batch_id_for(manifest: Path) -> str:
    """The batch id of a manifest: its file name without extension, made safe for paths and keys."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest.stem).strip("-.") or "batch"
    return stem[:80]


@dataclass(frozen=True)
class Prepared:
    """What was found for a batch before it is recorded."""

    #: What its local paths held (`prepare_images`).
    images: Mapping[str, LocalImage] = field(default_factory=dict)
    #: Where their uploads are.
    storage: str | None = None
    #: What its attempts are charged (`price_batch`).
    prices: PriceList = field(default_factory=PriceList)


def price_batch(ledger: Ledger | None, request: RunRequest, jobs: Sequence[Job], provider: Provider,
                http: httpx.Client) -> Priced:  # fmt: skip
    """The prices of the jobs' endpoints, what one attempt of each costs and the batch's cap (given, or kept by a
    rerun); raises UsageError for a bad `--price`. `check_cap` says whether the cap can hold."""
    options = price_options(request.prices)
    prices = prices_for({job.endpoint for job in jobs}, options, provider, api_url_of(request, provider), http, ledger)
    found = estimate_jobs(jobs, prices)
    existing = check_rerun(ledger, request, provider) if ledger is not None else None
    cap = cap_nusd(request.max_cost, existing)
    spent = ledger.spent_nusd(existing.id) if ledger is not None and existing is not None else 0
    return Priced(prices, found, cap, cap_kept=cap is not None and request.max_cost is None, spent_nusd=spent)


def record_batch(
    ledger: Ledger, request: RunRequest, batch: Batch, provider: Provider, unattended: Unattended | None = None,
    prepared: Prepared | None = None,
) -> BatchInfo:
    """Record the batch's settings, with what was `prepared` for it."""
    batch_id = request.batch_id or batch_id_for(request.manifest)
    folder = unattended.folder if unattended and unattended.folder else request.out / batch_id
    prepared = prepared or Prepared()
    existing = check_rerun(ledger, request, provider)
    info = BatchInfo(
        id=batch_id, manifest=str(request.manifest.resolve()), folder=str(folder.resolve()),
        created_at=existing.created_at if existing else time.time(), jobs=len(batch.jobs),
        max_in_flight=_window(request, existing), window_auto=request.max_in_flight == "auto",
        window_cap=request.window_cap, max_attempts=request.max_attempts, state="open",
        provider_url=provider.base_url, auth_scheme=provider.auth_scheme, priority=request.priority,
        start_timeout_s=start_timeout_s(request.priority, request.start_timeout_s),
        api_url=api_url_of(request, provider), max_image_bytes=int(request.max_image_mb * MIB),
        report_when_done=unattended is not None, schedule=unattended.schedule if unattended else None,
        notify=request.notify if unattended else None,  # a run that follows its batch notifies itself
        webhook_url=request.webhook_url,
        images=images_mode(request, provider),
        storage_url=prepared.storage or (existing.storage_url if existing else None),  # a rerun that uploaded nothing
        prices={**(existing.prices if existing else {}), **prepared.prices.stored()},  # a trial prices only its own
        max_cost_nusd=cap_nusd(request.max_cost, existing),
    )  # fmt: skip
    BatchImages(ledger.redis, ledger.keys).save(batch_id, prepared.images)  # before a job can be sent
    ledger.save_batch(info)
    ledger.save_skipped(batch_id, [error.to_dict() for error in batch.errors])  # only --skip-invalid runs have any
    ledger.forget_unknown_endpoints(batch_id)
    BatchFolder(Path(info.folder)).prepare()
    return info


def _window(request: RunRequest, existing: BatchInfo | None) -> int:
    """The batch's window now: the number asked for; automatic, what a rerun's batch had learned, else the start."""
    if request.max_in_flight != "auto":
        return request.max_in_flight
    learned = existing.max_in_flight if existing is not None and existing.window_auto else window.START
    return min(learned, request.window_cap)


def check_rerun(ledger: Ledger, request: RunRequest, provider: Provider) -> BatchInfo | None:
    """The batch the request records again, if any; raises UsageError when it may not be: another manifest's,
    an earlier version's, or sent to another provider."""
    batch_id = request.batch_id or batch_id_for(request.manifest)
    existing = ledger.batch(batch_id)
    if existing is None:
        return None
    if existing.manifest != str(request.manifest.resolve()):
        raise UsageError(
            f"{request.out / batch_id} holds batch {batch_id!r} of another manifest ({existing.manifest});"
            " pass --batch-id or another --out"
        )
    existing.check_format()
    check_same_provider(existing, provider, request.sim)
    return existing


def write_report(ledger: Ledger, info: BatchInfo, wall_s: float | None, synced: dict[str, int]) -> RunResult:
    """Write the batch's `report.csv` and `report.json` from its ledger."""
    records = list(ledger.records(info.id))
    folder = BatchFolder(Path(info.folder))
    provider_url = shown_url(info.provider_url)
    extra = {"batch_id": info.id, "manifest": info.manifest, "provider_url": provider_url, "wall_s": wall_s}
    for record in records:  # a final job has its sidecar (written before it became final): this is a net
        if record.status.is_final and not folder.sidecar_path(record.job.file_stem).exists():
            folder.write_sidecar(record)
    images = BatchImages(ledger.redis, ledger.keys).of(info.id)
    input_files = {ref: Path(info.manifest).parent / ref for ref in images}
    costs = Costs([Price.from_dict(price) for price in info.prices.values()], info.max_cost_nusd)
    csv_path, json_path, summary = folder.write_reports(records, extra, ledger.skipped(info.id), image_sizes(images),
                                                        input_files, costs)  # fmt: skip
    failures = [r for r in records if r.status is JobStatus.FAILED]
    return RunResult(info.id, folder.path, ledger.counts(info.id), csv_path, json_path, summary, synced, failures)


@dataclass(frozen=True)
class Unattended:
    """A batch nobody follows: the worker that ends its last job writes its report."""

    #: Its output folder, when not OUT/<batch id> (a schedule's OUT/<schedule>/<date-time>).
    folder: Path | None = None
    #: The schedule whose firing makes it.
    schedule: str | None = None


def enqueue_batch(
    context: Context, request: RunRequest, batch: Batch, provider: Provider, unattended: Unattended | None = None
) -> tuple[BatchInfo, dict[str, int], Priced]:
    """Record `batch` for workers (unattended): its jobs wait in the ledger, the window's first are due now.

    It is priced first (raises as `price_batch` and `check_cap`), then its local images are uploaded (raises as
    `prepare_images`).
    Returns the batch, what recording its jobs did, and how it was priced.
    """
    priced = price_batch(context.ledger, request, batch.jobs, provider, context.http)
    check_cap(priced.cap_nusd, priced.estimate)
    batch, images, uploads = prepare_images(context.ledger, request, batch, provider, context.http)
    prepared = Prepared(images, uploads.storage, priced.prices)
    info = record_batch(context.ledger, request, batch, provider, unattended or Unattended(), prepared)
    synced = context.ledger.sync_jobs(info.id, batch.jobs, time.time())
    resume_batch(context, info.id)
    return info, dict(synced), priced
