"""A batch's settings and state, as the ledger stores them with it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.errors import UsageError
from jobs.job import Job
from jobs.pricing import Price, job_cost_nusd

BatchState = Literal["open", "cancelled", "done"]
#: How this version lays a batch out in Redis; a batch stored with none is of format 1 (before timers).
LEDGER_FORMAT = 2


class BatchInfo(BaseModel):
    """A batch's settings and state, as stored with it."""

    id: str
    manifest: str
    #: The batch's output folder, OUT/<batch>.
    folder: str
    created_at: float
    jobs: int = 0
    max_in_flight: int = Field(gt=0)
    #: The window follows fal's concurrency (`jobs.window`), up to `window_cap`; else it stays as asked.
    window_auto: bool = False
    window_cap: int | None = None
    max_attempts: int = Field(default=3, gt=0)
    #: "open" admits jobs; "done" has every job final; "cancelled" admits none.
    state: BatchState = "open"
    #: When its last job became final (None while any is not).
    ended_at: float | None = None
    #: Where requests go (the queue's base URL; never a credential).
    provider_url: str = ""
    auth_scheme: Literal["Key", "Bearer"] = "Key"
    priority: Literal["normal", "low"] | None = None
    #: `X-Fal-Request-Timeout`: fal gives up on a request not started by then (None: recorded before every
    #: submit carried one).
    start_timeout_s: float | None = None
    #: Where fal's request history is read for lost submits (the Platform API's base URL, never a credential);
    #: "none": nowhere; None: recorded before this was stored (the worker's own choice applies).
    api_url: str | None = None
    #: Cap of a local image sent as a data URI.
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: How its local images are sent: "upload": as the URLs of their uploads to fal storage, made when it was
    #: recorded (`runner.ledger.uploads`); "inline": as data URIs a worker makes of the files (which it must see).
    images: Literal["upload", "inline"] = "inline"
    #: Where its uploads are: the CDN base URL fal storage's token named (never a credential); uploads are
    #: kept per storage. None: it has none (its images are inline, or it has no local image).
    storage_url: str | None = None
    #: A worker writes its report when it ends (batches nobody follows: submitted, scheduled).
    report_when_done: bool = False
    #: The schedule whose firing made this batch.
    schedule: str | None = None
    #: Where the worker that ends it POSTs its summary (`submit --notify`); its path and query may hold a
    #: token: shown only as its host (`runner.batches.notifications.shown_notify_url`).
    notify: str | None = None
    #: Where fal POSTs when each of its requests ends (`--webhook-url`): a `wan-batch serve` receiver; its jobs
    #: are then polled only as a safety net. None: polled.
    webhook_url: str | None = None
    #: The price of each of its endpoints that has one (`jobs.pricing.Price.to_dict`), as found when it was
    #: recorded: what each attempt is charged.
    prices: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: Its cost cap (`--max-cost`, nano-dollars): an attempt whose estimated cost would pass it is not sent.
    max_cost_nusd: int | None = Field(default=None, ge=0)
    #: Its report's summary and paths, stored by the worker that wrote the report, for the notification.
    summary: dict[str, Any] | None = None
    #: How it is laid out in Redis (`LEDGER_FORMAT`); an older batch is not run by this version.
    ledger_format: int = LEDGER_FORMAT

    def price_of(self, endpoint: str) -> Price | None:
        """The price its attempts of `endpoint` are charged at; None: it has none (they are charged nothing)."""
        stored = self.prices.get(endpoint)
        return None if stored is None else Price.from_dict(stored)

    def attempt_cost_nusd(self, job: Job) -> int | None:
        """What one attempt of `job` is charged (nano-dollars); None when it has no price, or no count of units."""
        price = self.price_of(job.endpoint)
        return None if price is None else job_cost_nusd(job.endpoint, job.input, {job.endpoint: price})

    def check_format(self) -> None:
        """Raise UsageError for a batch an earlier version recorded: this one cannot read its jobs."""
        if self.ledger_format != LEDGER_FORMAT:
            raise UsageError(
                f"batch {self.id!r} was recorded by an earlier version of wan-batch, whose ledger this one cannot"
                f" read; finish it with that version, or remove it from the ledger with `wan-batch purge --batch"
                f" {self.id}` (its files stay) and run its manifest again into another --out"
            )
