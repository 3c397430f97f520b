"""The prices a batch is charged at: `--price`, else fal's pricing API (cached a day), else the built-in table.

fal's Platform API serves the account's own prices (`GET /v1/models/pricing`)
to a fal key. What it says of an endpoint is kept in Redis for a day when a
Redis is at hand (`Keys.price`). An endpoint it does not list, or every
endpoint when it cannot be asked (no fal key here, a gateway's token, an API
that does not answer), is priced from the built-in table, and one that is
in neither has no price: that is said, never guessed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import redis

from jobs.errors import QueueAPIError
from jobs.pricing import API_SOURCE, BUILT_IN_PRICES, OPTION_SOURCE, Price, PriceOption, parse_unit
from runner.fal.queue_api import FalHttp
from runner.ledger.keys import Keys

log = logging.getLogger(__name__)
#: How long fal's price of an endpoint is kept.
PRICE_TTL_S = 24 * 3600
#: Endpoint ids asked for in one call.
_PER_CALL = 50
_TIMEOUT_S = 15.0


class PricingClient(FalHttp):
    """fal's pricing API at `provider.base_url` (e.g. `https://api.fal.ai/v1`)."""

    def prices(self, endpoints: Sequence[str]) -> tuple[dict[str, Price], dict[str, str]]:
        """fal's prices of `endpoints` it lists, and why each price it lists but cannot be used is left out.

        Raises a QueueAPIError as classified.
        """
        found: dict[str, Price] = {}
        unusable: dict[str, str] = {}
        for start in range(0, len(endpoints), _PER_CALL):
            chunk = list(endpoints[start : start + _PER_CALL])
            url = f"{self._provider.base_url}/models/pricing"
            response = self._send("pricing", "GET", url, timeout_s=_TIMEOUT_S, params={"endpoint_id": ",".join(chunk)})
            items = self._success_body("pricing", response).get("prices")
            if not isinstance(items, list):
                raise QueueAPIError(f"pricing: HTTP {response.status_code} without a list of prices",
                                    status_code=response.status_code, error_type="invalid_response")  # fmt: skip
            for item in items:
                read = _read(item, chunk)
                if isinstance(read, Price):
                    found[read.endpoint] = read
                elif read is not None:
                    unusable[read[0]] = read[1]
        return found, unusable


def _read(item: Any, asked: list[str]) -> Price | tuple[str, str] | None:
    """One listed price; (endpoint, why) for one that cannot be used; None for an item of no endpoint asked for."""
    if not isinstance(item, dict) or item.get("endpoint_id") not in asked:
        return None
    endpoint = str(item["endpoint_id"])
    unit = parse_unit(str(item.get("unit") or ""))
    if unit is None:
        return endpoint, f"fal bills it per {str(item.get('unit'))[:40]!r}, which wan-batch cannot count from a job"
    if str(item.get("currency") or "USD").upper() != "USD":
        return endpoint, f"fal prices it in {str(item.get('currency'))[:10]}, not USD"
    try:
        amount = Decimal(str(item.get("unit_price")))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0 or isinstance(item.get("unit_price"), bool):
        return endpoint, "fal's price of it is not an amount"
    return Price(endpoint, amount, unit, API_SOURCE)


@dataclass
class PriceList:
    """The price of each endpoint that has one, why the others have none, and what was said of where they come from."""

    prices: dict[str, Price] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def stored(self) -> dict[str, dict[str, str]]:
        """As a batch stores them (`BatchInfo.prices`)."""
        return {endpoint: price.to_dict() for endpoint, price in self.prices.items()}


@dataclass(frozen=True)
class PriceCache:
    """fal's prices in Redis for a day, per pricing API (a simulator's are not fal's)."""

    client: redis.Redis
    keys: Keys
    api_url: str

    def get(self, endpoints: Iterable[str]) -> dict[str, Price]:
        wanted = list(endpoints)
        try:
            found = self.client.mget([self.keys.price(self.api_url, e) for e in wanted]) if wanted else []
        except redis.RedisError:
            return {}
        return {e: Price.from_dict(json.loads(raw)) for e, raw in zip(wanted, found, strict=True) if raw}

    def put(self, prices: Iterable[Price]) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for price in prices:
                    pipe.set(self.keys.price(self.api_url, price.endpoint), json.dumps(price.to_dict()), ex=PRICE_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:  # a cache: the prices are in hand
            log.warning("fal's prices were not cached (%s)", type(exc).__name__)


def resolve_prices(endpoints: Iterable[str], options: Sequence[PriceOption], client: PricingClient | None,
                   cache: PriceCache | None = None, why_no_api: str = "") -> PriceList:  # fmt: skip
    """The price of each endpoint: `--price`, else fal's (`client`, through `cache`), else the built-in table.

    `why_no_api`: what to say when there is no `client` (no fal key here, a gateway's token).
    """
    wanted = sorted(set(endpoints))
    listed = PriceList()
    given = {option.endpoint: option for option in options}
    listed.notes += [f"--price {e}: no job here is of that endpoint" for e in sorted(set(given) - set(wanted))]
    asked = [e for e in wanted if e not in given or given[e].unit is None]  # an option without a unit takes fal's
    from_fal, unusable = _from_fal(asked, client, cache, listed, why_no_api)
    for endpoint in wanted:
        # A price fal lists but that cannot be used is the account's all the same: the table's would be a guess.
        known = from_fal.get(endpoint) or (None if endpoint in unusable else BUILT_IN_PRICES.get(endpoint))
        option = given.get(endpoint)
        if option is not None:
            _priced_by_option(listed, option, known)
        elif known is not None:
            listed.prices[endpoint] = known
        else:
            listed.missing[endpoint] = unusable.get(endpoint, "no known price")
    return listed


def _priced_by_option(listed: PriceList, option: PriceOption, known: Price | None) -> None:
    """A `--price` in its unit, else in the unit known for the endpoint; with neither, the endpoint has no price."""
    unit = option.unit or (known.unit if known is not None else None)
    if unit is None:
        listed.missing[option.endpoint] = f"--price names no unit, and none is known for it: give {option.endpoint}" \
            "=USD/UNIT"
    else:
        listed.prices[option.endpoint] = Price(option.endpoint, option.usd, unit, OPTION_SOURCE)


def _from_fal(endpoints: list[str], client: PricingClient | None, cache: PriceCache | None, listed: PriceList,
              why_no_api: str) -> tuple[dict[str, Price], dict[str, str]]:  # fmt: skip
    """fal's prices of `endpoints` (cached ones first), and why any it lists cannot be used; notes what failed."""
    if not endpoints:
        return {}, {}
    if client is None:
        listed.notes.append(f"{why_no_api or 'fal pricing API not asked'}: prices from the built-in table")
        return {}, {}
    found = cache.get(endpoints) if cache is not None else {}
    unusable: dict[str, str] = {}
    rest = [e for e in endpoints if e not in found]
    if rest:
        try:
            fetched, unusable = client.prices(rest)
        except QueueAPIError as exc:
            listed.notes.append(f"fal's pricing API did not answer ({exc}): prices from the built-in table")
            return found, {}
        if cache is not None:
            cache.put(fetched.values())
        found.update(fetched)
    return found, unusable
