"""A batch's prices, its estimate and its cost cap, found when it is recorded (or validated, or tried dry).

What `run`, `run --dry-run`, `submit`, a schedule's firing and `validate`
share. Prices come from `runner.fal.pricing.resolve_prices`: the pricing API
is asked only with a fal key (a gateway's token cannot read it, and a shell
that leaves the key to its workers has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import httpx

from jobs.errors import UsageError
from jobs.job import Job
from jobs.pricing import (
    Estimate,
    PriceOption,
    count_units,
    estimate,
    job_cost_nusd,
    parse_price_option,
    shown_usd,
    to_nusd,
    usd,
)
from runner.fal.history import NO_API
from runner.fal.pricing import PriceCache, PriceList, PricingClient, resolve_prices
from runner.fal.providers import WORKERS_CREDENTIAL, Provider
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Ledger
from runner.settings import credential_from_env

#: `--max-cost none`: a rerun drops the cap its batch had.
NO_CAP = "none"
MaxCost = Decimal | Literal["none"] | None


@dataclass(frozen=True)
class Priced:
    """A batch priced for a run: its prices, what one attempt of each job costs, and the cap it is recorded with."""

    prices: PriceList
    estimate: Estimate
    cap_nusd: int | None = None
    #: The cap is its last run's, kept because none was given now.
    cap_kept: bool = False
    #: What a rerun's batch was charged already (nano-dollars).
    spent_nusd: int = 0


def price_options(texts: Iterable[str], option: str = "--price") -> list[PriceOption]:
    """`--price` values, parsed; raises UsageError naming the option and what is wrong with a value."""
    try:
        return [parse_price_option(text) for text in texts]
    except ValueError as exc:
        raise UsageError(f"{option} {exc}") from None


def prices_for(endpoints: Iterable[str], options: Sequence[PriceOption], provider: Provider | None, api_url: str,
               http: httpx.Client, ledger: Ledger | None = None) -> PriceList:  # fmt: skip
    """The price of each endpoint, asking fal's pricing API at `api_url` with `provider`'s fal key, if it has one
    (`provider` None: this shell has none); cached in the ledger's Redis when there is one."""
    client, why = None, ""
    if api_url == NO_API:
        why = "no fal Platform API (--api-url none)"
    elif provider is None or provider.credential.get_secret_value() == WORKERS_CREDENTIAL:
        why = "no FAL_KEY here"
    elif provider.auth_scheme != "Key":
        why = "a gateway's token cannot read fal's prices (give --price for its own)"
    else:
        client = PricingClient(http, Provider(base_url=api_url, auth_scheme="Key", credential=provider.credential))
    cache = None if ledger is None or client is None else PriceCache(ledger.redis, ledger.keys, api_url)
    return resolve_prices(endpoints, options, client, cache, why)


def prices_here(endpoints: Iterable[str], options: Sequence[PriceOption], api_url: str) -> PriceList:
    """The prices of `endpoints` as this shell sees them: fal's (with its FAL_KEY), else the built-in table."""
    key = credential_from_env("Key")
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as http:
        return prices_for(endpoints, options, Provider.fal(key) if key else None, api_url, http)


def estimate_jobs(jobs: Iterable[Job], prices: PriceList) -> Estimate:
    """What one attempt of each job costs, at `prices`."""
    return estimate(count_units((job.endpoint, job.input) for job in jobs), prices.prices)


def cap_nusd(max_cost: MaxCost, existing: BatchInfo | None) -> int | None:
    """The cap a batch is recorded with: as given (`none`: no cap), else the one it had (a rerun keeps it)."""
    if max_cost is None:
        return existing.max_cost_nusd if existing is not None else None
    return to_nusd(max_cost) if isinstance(max_cost, Decimal) else None


def check_cap(cap: int | None, found: Estimate) -> None:
    """Raise UsageError when a cap is to be kept and some job's cost cannot be estimated (it would pass unseen)."""
    if cap is None or found.complete:
        return
    problems = "; ".join(f"{line.endpoint} ({line.jobs} job(s)): {line.problem}" for line in found.endpoints
                         if line.cost_nusd is None)  # fmt: skip
    raise UsageError(f"--max-cost {shown_usd(usd(cap))}: the cost of some jobs cannot be estimated, so the cap could"
                     f" not hold: {problems}; give --price ENDPOINT=USD/UNIT for them")  # fmt: skip


def admitted_by_cap(jobs: Sequence[Job], prices: PriceList, cap: int) -> int:
    """How many of `jobs`, one attempt each in manifest order, a cap of `cap` nano-dollars lets through."""
    spent = admitted = 0
    for job in jobs:
        cost = job_cost_nusd(job.endpoint, job.input, prices.prices) or 0
        if spent + cost <= cap:
            spent, admitted = spent + cost, admitted + 1
    return admitted
