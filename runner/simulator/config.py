"""Settings of the fal queue simulator, and the run-time distributions it draws from."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from jobs.endpoints import WAN22_I2I, WAN25_I2I, is_endpoint_id
from jobs.pricing import PriceOption, Unit

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
#: Requests a simulator started from the command line runs at once (`sim --concurrency`, `run --sim-concurrency`).
SIM_CONCURRENCY = 4
#: A result body this large or larger is kept only `large_result_retention_s` (fal: "10 KB").
LARGE_RESULT_BYTES = 10 * 1024


class FaultRates(BaseModel):
    """How often each fault is injected: a probability per eligible call, 0..1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A 502/503/504 with an nginx HTML body and no `x-fal-request-id`, on queue calls.
    proxy_5xx: Rate = 0.0
    #: A 429 with `Retry-After`, on queue calls.
    rate_limit_429: Rate = 0.0
    #: The socket is closed without a response, before the call does anything.
    drop_connection: Rate = 0.0
    #: The inference fails: the result answers 500 `runner_server_error`.
    model_error: Rate = 0.0
    #: A download sends fewer bytes than its Content-Length says, then closes.
    truncated_download: Rate = 0.0
    #: A download dribbles its bytes with pauses.
    slow_download: Rate = 0.0
    #: A finished result answers 404 as if it had expired, from then on.
    expired_result: Rate = 0.0
    #: A submit creates the request, then the connection drops without a response.
    lost_submit_response: Rate = 0.0
    #: A storage upload (`POST /cdn/files/upload`) answers a proxy's 503, storing nothing.
    upload_5xx: Rate = 0.0
    #: A request submitted with `fal_webhook` ends, and its webhook is never delivered.
    webhook_drop: Rate = 0.0
    #: ... and its webhook is delivered twice.
    webhook_duplicate: Rate = 0.0


class SimPrice(BaseModel):
    """What one unit of an endpoint's output costs, as fal's pricing API gives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_price: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
    #: What is billed: a word such as "image", "megapixels", "second".
    unit: Annotated[str, Field(min_length=1)]
    currency: Annotated[str, Field(min_length=1)] = "USD"


#: The prices the simulator serves unless told others (`SimConfig.prices`).
DEFAULT_PRICES: Mapping[str, SimPrice] = MappingProxyType({
    #: fal's published price.
    WAN25_I2I: SimPrice(unit_price=Decimal("0.05"), unit=Unit.IMAGE.value),
    #: A stand-in figure: fal published no price for Wan 2.2 A14B image-to-image.
    WAN22_I2I: SimPrice(unit_price=Decimal("0.04"), unit=Unit.IMAGE.value),
})  # fmt: skip


def sim_prices(options: Iterable[PriceOption]) -> dict[str, SimPrice]:
    """The default prices, each endpoint of an option (`--price`) set to it (per image when it names no unit)."""
    given = {option.endpoint: SimPrice(unit_price=option.usd, unit=(option.unit or Unit.IMAGE).value)
             for option in options}  # fmt: skip
    return {**DEFAULT_PRICES, **given}


class SimConfig(BaseModel):
    """Everything the simulator needs; `port=0` picks a free port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    #: Requests IN_PROGRESS at once; the rest wait IN_QUEUE.
    concurrency: Annotated[int, Field(ge=1)] = 2
    #: `fixed:S`, `uniform:A,B` or `lognormal:MEAN,SIGMA`, in seconds.
    run_time: str = "uniform:0.5,1.5"
    seed: int = 0
    #: A result answers 404 this long after its request completed (fal: 1 hour); its
    #: input, result and output files are then dropped; its timings stay for /_stats, and its
    #: input for the request history (fal keeps payloads 30 days).
    retention_s: Annotated[float, Field(gt=0)] = 3600.0
    #: The same for a result of LARGE_RESULT_BYTES or more (fal: 6 minutes).
    large_result_retention_s: Annotated[float, Field(gt=0)] = 360.0
    #: A finished request shows in the request history (Platform API) this long after it completed.
    history_lag_s: Annotated[float, Field(ge=0)] = 1.0
    #: A submit's answer comes this long after its request was created (a slow or far link): a client
    #: killed meanwhile never learns the request_id of a request fal has.
    submit_latency_s: Annotated[float, Field(ge=0)] = 0.0
    #: When set, only `Authorization: Key <key>` is accepted (or the token below).
    key: SecretStr | None = None
    #: When set, only `Authorization: Bearer <token>` is accepted (or the key above).
    token: SecretStr | None = None
    faults: FaultRates = Field(default_factory=FaultRates)
    #: Each fault kind stops after this many injections; None = no limit.
    fault_limit: Annotated[int, Field(ge=0)] | None = None
    #: The `Retry-After` a 429 carries.
    retry_after_s: Annotated[float, Field(ge=0)] = 1.0
    #: Total pause a slow download spreads over its chunks.
    slow_download_s: Annotated[float, Field(ge=0)] = 0.5
    #: Generated output files kept in memory; evicted ones are regenerated on demand.
    file_cache_mb: Annotated[float, Field(gt=0)] = 128.0
    #: Which http(s) input images are fetched, as fal's runner does, to fail a request (422) whose
    #: image cannot be read: "local" only those on 127.0.0.1, localhost or ::1 (the others are assumed
    #: readable), "all" every one, "none" none. Whatever this says, `data:` URIs are decoded and a
    #: value that is neither one nor an http(s) URL fails.
    fetch_inputs: Literal["local", "all", "none"] = "local"
    #: An input image not fetched within this long is unreadable.
    fetch_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    #: An input image larger than this is refused (`file_too_large`).
    fetch_max_mb: Annotated[float, Field(gt=0)] = 32.0
    #: A storage token (`POST /storage/auth/token`) uploads this long; its `expires_at` says until when.
    storage_token_ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    #: An upload whose `X-Fal-Object-Lifecycle` sets no positive expiration answers 404 this long after it was
    #: stored (fal's default retention: longer than any batch).
    storage_file_lifetime_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    #: Uploaded files kept in memory; an upload that would pass this while the others live answers 507.
    storage_mb: Annotated[float, Field(gt=0)] = 256.0
    #: An upload's body larger than this answers 413 (fal: 100 MiB; fal_client sends larger files in parts).
    upload_max_mb: Annotated[float, Field(gt=0)] = 100.0

    #: A webhook delivery that fails is tried again after this, doubling each time (fal: 10 tries in 2 hours).
    webhook_retry_s: Annotated[float, Field(gt=0)] = 0.5
    webhook_tries: Annotated[int, Field(ge=1)] = 10
    #: What the pricing API (`/v1/models/pricing`) says each endpoint costs; an endpoint not here has no price.
    prices: dict[str, SimPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    @field_validator("run_time")
    @classmethod
    def _check_run_time(cls, value: str) -> str:
        parse_run_time(value)
        return value

    @field_validator("prices")
    @classmethod
    def _check_endpoint_ids(cls, value: dict[str, SimPrice]) -> dict[str, SimPrice]:
        wrong = [endpoint for endpoint in value if not is_endpoint_id(endpoint)]
        if wrong:
            raise ValueError(f"not fal endpoint ids (owner/app[/path]): {', '.join(map(repr, wrong))}")
        return value


@dataclass(frozen=True)
class RunTime:
    """A distribution of run times, in seconds."""

    kind: Literal["fixed", "uniform", "lognormal"]
    a: float
    b: float = 0.0

    def draw_s(self, rng: random.Random) -> float:
        """One run time; `lognormal` has mean `a` and log-space sigma `b`."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        mu = math.log(self.a) - self.b**2 / 2
        return rng.lognormvariate(mu, self.b)


def parse_run_time(spec: str) -> RunTime:
    """`fixed:S`, `uniform:A,B` or `lognormal:MEAN,SIGMA` as a RunTime.

    Raises ValueError for another form, a negative time, or A > B.
    """
    kind, _, args = spec.partition(":")
    try:
        numbers = [float(part) for part in args.split(",")] if args else []
    except ValueError:
        raise ValueError(f"run time {spec!r}: arguments must be numbers") from None
    if any(not math.isfinite(n) or n < 0 for n in numbers):
        raise ValueError(f"run time {spec!r}: arguments must be finite and >= 0")
    if kind == "fixed" and len(numbers) == 1:
        return RunTime("fixed", numbers[0])
    if kind == "uniform" and len(numbers) == 2 and numbers[0] <= numbers[1]:
        return RunTime("uniform", numbers[0], numbers[1])
    if kind == "lognormal" and len(numbers) == 2 and numbers[0] > 0:
        return RunTime("lognormal", numbers[0], numbers[1])
    raise ValueError(f"run time {spec!r}: use fixed:S, uniform:A,B (A <= B) or lognormal:MEAN,SIGMA (MEAN > 0)")
