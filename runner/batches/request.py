"""What a run, a submit or a schedule's firing is asked to do: the options of one batch, checked by pydantic."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from runner.batches.uploads import DEFAULT_UPLOAD_TTL_S
from runner.simulator.config import SIM_CONCURRENCY

#: The most an automatic window grows to (`--max-in-flight-cap`): fal runs at most 40 of an account's requests at
#: once, and the window also holds two waiting there and the jobs downloading their outputs.
WINDOW_CAP = 48


class RunRequest(BaseModel):
    manifest: Path
    out: Path = Path("out")
    batch_id: str | None = None
    endpoint: str | None = None
    #: Endpoint ids close to a known one that are meant as written (`--allow-endpoint`).
    allowed_endpoints: tuple[str, ...] = ()
    #: A manifest that would make more jobs is refused (`--max-jobs`).
    max_jobs: int = Field(default=100_000, gt=0)
    skip_invalid: bool = False
    sim: bool = False
    sim_concurrency: int = Field(default=SIM_CONCURRENCY, gt=0)
    sim_run_time: str = "uniform:0.5,1.5"
    base_url: str | None = None
    redis_url: str | None = None
    #: The window of jobs at fal (`--max-in-flight`): a number, or "auto" (`jobs.window`), up to `window_cap`.
    max_in_flight: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    window_cap: int = Field(default=WINDOW_CAP, gt=0)
    workers: int = Field(default=8, gt=0)
    max_attempts: int = Field(default=3, gt=0)
    max_image_mb: float = Field(default=10.0, gt=0)
    priority: Literal["normal", "low"] | None = None
    start_timeout_s: float | None = None
    #: fal's Platform API, where lost submits are looked for ("none": nowhere); default: fal's for a FAL_KEY.
    api_url: str | None = None
    #: Try the manifest on its first N jobs, or on N spread over it (stable across reruns).
    limit: int | None = Field(default=None, gt=0)
    sample: int | None = Field(default=None, gt=0)
    #: With a shared Redis: seconds without any job changing status before hinting that no worker runs.
    stall_hint_s: float = Field(default=60.0, gt=0)
    #: POST the batch's summary here when it ends (`--notify`): by `run` at its end, by a worker for `submit`.
    notify: str | None = None
    #: Where fal POSTs as each request ends (`--webhook-url`): polls are then a safety net only.
    webhook_url: str | None = None
    #: Where the receiver of `run --serve` reads fal's webhook keys; None: fal's (with --sim: the simulator's).
    jwks_url: str | None = None
    #: How local images are sent (`--images`): uploaded to fal storage once, or inline as data URIs in every
    #: submit; None: uploaded with a fal key, inline with a gateway's token (which cannot upload).
    images: Literal["upload", "inline"] | None = None
    #: Where fal storage is (`--storage-url`, FAL_STORAGE_URL); None: fal's, or the stand-in at `base_url`.
    storage_url: str | None = None
    #: How long fal keeps an upload (`--upload-ttl`): longer than the batch may take.
    upload_ttl_s: float = Field(default=DEFAULT_UPLOAD_TTL_S, ge=3600)
    #: `--price ENDPOINT=USD[/UNIT]` values as given, over fal's and the built-in table's (`runner.batches.costs`).
    prices: tuple[str, ...] = ()
    #: The batch's cost cap in USD (`--max-cost`); "none" drops the cap a rerun's batch had; None keeps it.
    max_cost: Decimal | Literal["none"] | None = None
    #: With --sim: what its pricing API says (`--sim-price`, written as `--price`).
    sim_prices: tuple[str, ...] = ()
