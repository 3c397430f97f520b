"""Every Redis key the runner uses, built here and nowhere else."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DEFAULT_PREFIX = "wb"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix, so several deployments can share a Redis."""

    prefix: str = DEFAULT_PREFIX

    @property
    def batches(self) -> str:
        """Sorted set of batch ids, scored by creation time."""
        return f"{self.prefix}:batches"

    def batch(self, batch_id: str) -> str:
        """Hash: the batch's settings and state."""
        return f"{self.prefix}:batch:{batch_id}"

    def counts(self, batch_id: str) -> str:
        """Hash: jobs per status, kept by every transition, so progress is one read."""
        return f"{self.prefix}:batch:{batch_id}:counts"

    def job_order(self, batch_id: str) -> str:
        """List: job ids in manifest order."""
        return f"{self.prefix}:batch:{batch_id}:jobs"

    def waiting(self, batch_id: str) -> str:
        """List: ids of jobs waiting for a slot, oldest first."""
        return f"{self.prefix}:batch:{batch_id}:waiting"

    def in_flight(self, batch_id: str) -> str:
        """Set: ids of jobs holding a slot of the in-flight window."""
        return f"{self.prefix}:batch:{batch_id}:inflight"

    def run_times(self, batch_id: str) -> str:
        """List: the latest run times (seconds) seen, newest first; feeds the poll delay."""
        return f"{self.prefix}:batch:{batch_id}:runtimes"

    def status_index(self, batch_id: str, status: str) -> str:
        """Sorted set: ids of the jobs in `status`, scored by when they last changed (the index by last update)."""
        return f"{self.status_index_prefix(batch_id)}{status}"

    def status_index_prefix(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:status:"

    def side(self, batch_id: str, field: str) -> str:
        """Hash: job id -> one large field of its record (its input, outputs, messages), kept apart from the
        job's hash so that that one stays small (Redis then packs it) and a null is never stored."""
        return f"{self.side_prefix(batch_id)}{field}"

    def side_prefix(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:field:"

    def request_bases(self, batch_id: str) -> str:
        """Hash: endpoint -> the start of its requests' URLs (`.../requests/`), so a job stores only its request_id."""
        return f"{self.prefix}:batch:{batch_id}:bases"

    def skipped(self, batch_id: str) -> str:
        """Hash: manifest line -> the errors (JSON) of a row `--skip-invalid` left out, for the report."""
        return f"{self.prefix}:batch:{batch_id}:skipped"

    def unknown_endpoints(self, batch_id: str) -> str:
        """Hash: endpoint -> why fal said it has no such app, so the batch's other jobs of it are not sent."""
        return f"{self.prefix}:batch:{batch_id}:unknown"

    def tallies(self, batch_id: str) -> str:
        """Hash: how the batch's latest cancel ended for its jobs (at fal, already finished...), kept by the moves."""
        return f"{self.prefix}:batch:{batch_id}:tallies"

    def longest_run(self, batch_id: str) -> str:
        """Sorted set of one member scored by the longest run time (seconds) the batch has seen: how long a lost
        submit may still run at fal."""
        return f"{self.prefix}:batch:{batch_id}:longest"

    def names(self, batch_id: str) -> str:
        """Hash: a file name (`Job.name`) -> the job that holds it, so that no other job of the batch writes it."""
        return f"{self.prefix}:batch:{batch_id}:names"

    def images(self, batch_id: str) -> str:
        """Hash: a local image path as the manifest names it -> the content it had when the batch was recorded
        (JSON: sha256, size in bytes and pixels), so that workers send its upload and the report its size."""
        return f"{self.prefix}:batch:{batch_id}:images"

    def upload(self, storage_url: str, sha256: str) -> str:
        """String: the URL of an image of this content uploaded to the storage at `storage_url` (JSON, with when
        it may last be sent); it expires with the upload, so no batch, rerun or machine is handed a dead URL."""
        storage = hashlib.sha256(storage_url.encode()).hexdigest()[:12]
        return f"{self.prefix}:upload:{storage}:{sha256}"

    def spent(self, batch_id: str) -> str:
        """The estimated cost charged so far for the batch's attempts that fal may bill, in nano-dollars
        (`jobs.pricing`): what its cost cap is checked against."""
        return f"{self.prefix}:batch:{batch_id}:spent"

    def price(self, api_url: str, endpoint: str) -> str:
        """String: fal's price of `endpoint` as its pricing API at `api_url` said it (JSON; it expires in a day)."""
        api = hashlib.sha256(api_url.encode()).hexdigest()[:12]
        return f"{self.prefix}:price:{api}:{endpoint}"

    def errors(self, batch_id: str) -> str:
        """Hash: failed jobs per error type (the stored JSON of the type), kept by every transition."""
        return f"{self.prefix}:batch:{batch_id}:errors"

    def early_webhook(self, request_id: str) -> str:
        """String: fal's webhook for this request came before its job stored it; the job's step is due once it
        does (it expires: a request no job ever stores is not one of ours)."""
        return f"{self.prefix}:hooked:{request_id}"

    @property
    def requests(self) -> str:
        """Hash: fal's request_id -> the job that holds it (JSON [batch id, job id]), for every attempt."""
        return f"{self.prefix}:requests"

    @property
    def metrics(self) -> str:
        """Hash: what workers did, as counters for `/metrics` (JSON [name, labels] -> count)."""
        return f"{self.prefix}:metrics"

    @property
    def metric_histograms(self) -> str:
        """Hash: observed durations, per bucket with their sum and count (JSON [name, labels, bucket] -> value)."""
        return f"{self.prefix}:metrics:histograms"

    @property
    def timers(self) -> str:
        """Sorted set: what must happen later (see `Timer`), scored by when it is due."""
        return f"{self.prefix}:timers"

    @property
    def timer_wake(self) -> str:
        """Pub/sub channel: a timer was set due now by a process that runs no dispatcher (a webhook's receiver)."""
        return f"{self.prefix}:timers:wake"

    @property
    def timer_claims(self) -> str:
        """Hash: timer -> who holds it: "d" (a dispatcher sent it) or "r:<token>" (a worker runs it)."""
        return f"{self.prefix}:timers:claims"

    @property
    def timer_tries(self) -> str:
        """Hash: timer -> how many times it came due again after it ran (ends of batches, notifications)."""
        return f"{self.prefix}:timers:tries"

    @property
    def schedules(self) -> str:
        """Set: names of the schedules."""
        return f"{self.prefix}:schedules"

    def schedule(self, name: str) -> str:
        """Hash: a schedule's settings (`spec`), state (`current`, `waiting`) and stored manifest."""
        return f"{self.prefix}:schedule:{name}"

    def firings(self, name: str) -> str:
        """Hash: the schedule's firings by id, each as JSON."""
        return f"{self.prefix}:schedule:{name}:firings"

    def firing_order(self, name: str) -> str:
        """Sorted set: firing ids scored by when they fired."""
        return f"{self.prefix}:schedule:{name}:order"

    def slot(self, name: str, slot: float) -> str:
        """String: set by the one firing of a schedule's slot (however many schedulers sent it)."""
        return f"{self.prefix}:schedule:{name}:slot:{slot:.3f}"

    @property
    def beat_prefix(self) -> str:
        """celery-redbeat's keys: the scheduler's entries, its schedule and its lock."""
        return f"{self.prefix}:beat:"

    def job_prefix(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:job:"

    def job(self, batch_id: str, job_id: str) -> str:
        """Hash: one job's record."""
        return f"{self.job_prefix(batch_id)}{job_id}"
