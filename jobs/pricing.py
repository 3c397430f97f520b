"""What a job costs: a price per unit, the units a job's input makes, and exact sums of money.

Pure code. fal bills each endpoint by its own unit: per image, per megapixel
of output, per second (of video), or per request. `units_of` counts all of
them from a job's input once; `attempt_cost_nusd` prices one attempt of a job,
in whole nano-dollars rounded up, and every sum is of those integers, so an
estimate, a cap and a report agree to the last digit: a cap of exactly ten
jobs' worth admits ten.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import Enum
from typing import Any, TypeGuard

from jobs.endpoints import IMAGE_SIZE_PRESETS, WAN22_I2I, WAN25_I2I, is_endpoint_id

#: Money is kept in whole nano-dollars: exact in Redis's integers and in Lua's numbers up to $9,007,199.
NANO_PER_USD = 10**9
#: The most a cap (`--max-cost`) or a price (`--price`, per unit) may be: far within what is summed exactly.
MAX_CAP_USD = Decimal(1_000_000)
MAX_PRICE_USD = Decimal(10_000)
_NANO = Decimal(1) / NANO_PER_USD
#: What the built-in table is, and when it was taken: the price fal published then for each endpoint it lists.
TABLE_SOURCE = "built-in table: fal.ai model pages, as of 2026-12-01"
API_SOURCE = "fal pricing API"
OPTION_SOURCE = "--price"
_PRICE_OPTION = re.compile(
    r"^(?P<endpoint>[^=\s]+)=\s*\$?(?P<usd>[0-9]+(?:\.[0-9]+)?)\s*(?:/\s*(?P<unit>[A-Za-z ]+))?$"
)
_SECONDS = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*s?\s*$")


class Unit(str, Enum):
    """What fal bills an endpoint by."""

    #: Each output image.
    IMAGE = "image"
    #: Each million pixels of output (width x height / 1,000,000, not rounded).
    MEGAPIXEL = "megapixel"
    #: Each second of output (a video's duration).
    SECOND = "second"
    #: Each request, whatever it makes.
    REQUEST = "request"


_UNIT_NAMES = {
    "image": Unit.IMAGE, "images": Unit.IMAGE,
    "megapixel": Unit.MEGAPIXEL, "megapixels": Unit.MEGAPIXEL, "mp": Unit.MEGAPIXEL,
    "second": Unit.SECOND, "seconds": Unit.SECOND, "s": Unit.SECOND, "video second": Unit.SECOND,
    "video seconds": Unit.SECOND,
    "request": Unit.REQUEST, "requests": Unit.REQUEST, "call": Unit.REQUEST, "calls": Unit.REQUEST,
}  # fmt: skip


def parse_unit(text: str) -> Unit | None:
    """The unit fal (or a user) names, e.g. "images", "megapixels", "second"; None for one not counted here."""
    return _UNIT_NAMES.get(" ".join(text.lower().split()))


@dataclass(frozen=True)
class Price:
    """What one unit of an endpoint's output costs, in USD, and where that figure comes from."""

    endpoint: str
    usd: Decimal
    unit: Unit
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "usd": str(self.usd), "unit": self.unit.value, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Price:
        return cls(data["endpoint"], Decimal(data["usd"]), Unit(data["unit"]), data["source"])

    @property
    def shown(self) -> str:
        """`$0.05/image`."""
        return f"{shown_usd(self.usd)}/{self.unit.value}"


#: The prices fal published for the endpoints it first served to this project (Wan 2.2 A14B image-to-image had no
#: published figure: it is priced by fal's pricing API, or by --price).
BUILT_IN_PRICES: dict[str, Price] = {
    WAN25_I2I: Price(WAN25_I2I, Decimal("0.05"), Unit.IMAGE, TABLE_SOURCE),
}


@dataclass(frozen=True)
class PriceOption:
    """A `--price ENDPOINT=USD[/unit]`; without a unit: the endpoint's own (fal's, else the table's)."""

    endpoint: str
    usd: Decimal
    unit: Unit | None


def parse_price_option(text: str) -> PriceOption:
    """`fal-ai/x=0.04`, `fal-ai/x=0.04/image`, `fal-ai/x=$0.002/megapixel`; raises ValueError saying what is wrong."""
    found = _PRICE_OPTION.match(text.strip())
    if found is None:
        raise ValueError(f"{text[:80]!r}: give ENDPOINT=USD or ENDPOINT=USD/UNIT, e.g. {WAN25_I2I}=0.05/image")
    endpoint, unit_text = found["endpoint"], found["unit"]
    if not is_endpoint_id(endpoint):
        raise ValueError(f"{text[:80]!r}: {endpoint[:80]!r} is not a fal endpoint id (owner/app[/path])")
    unit = None if unit_text is None else parse_unit(unit_text)
    if unit_text is not None and unit is None:
        known = ", ".join(u.value for u in Unit)
        raise ValueError(f"{text[:80]!r}: unknown unit {unit_text.strip()!r}; give one of {known}")
    if Decimal(found["usd"]) > MAX_PRICE_USD:
        raise ValueError(f"{text[:80]!r}: a price is at most {shown_usd(MAX_PRICE_USD)} a unit")
    return PriceOption(endpoint, Decimal(found["usd"]), unit)


def parse_usd(text: str) -> Decimal:
    """An amount of USD a user gives (`10`, `12.50`, `$3`), at most MAX_CAP_USD; raises ValueError for another text,
    a negative or a larger one."""
    cleaned = text.strip().removeprefix("$").strip()
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"{text[:40]!r} is not an amount of USD such as 25 or 12.50") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{text[:40]!r} is not an amount of USD such as 25 or 12.50")
    if amount > MAX_CAP_USD:
        raise ValueError(f"{text[:40]!r} is more than {shown_usd(MAX_CAP_USD)}")
    return amount


@dataclass(frozen=True)
class Units:
    """How much of each unit one attempt of a job makes; None where its input does not say."""

    images: int
    megapixels: Decimal | None
    seconds: Decimal | None

    def of(self, unit: Unit) -> Decimal | None:
        if unit is Unit.IMAGE:
            return Decimal(self.images)
        if unit is Unit.MEGAPIXEL:
            return self.megapixels
        if unit is Unit.SECOND:
            return self.seconds
        return Decimal(1)


def units_of(endpoint: str, body: Mapping[str, Any]) -> Units:
    """The units one attempt of a job with input `body` makes at `endpoint`, as fal counts them.

    Wan 2.2 A14B makes one image whose size follows its input image (its megapixels are unknown here);
    Wan 2.5 makes `num_images` (default 1) of `image_size` (default `square`). Any other endpoint is read by
    the names fal's models use: `num_images`, `image_size`, `width`/`height`, `duration`, `num_frames`/`fps`.
    """
    if endpoint == WAN22_I2I:
        return Units(1, None, None)
    images = body.get("num_images", 1)
    images = images if isinstance(images, int) and not isinstance(images, bool) and images >= 1 else 1
    default_size = "square" if endpoint == WAN25_I2I else None
    pixels = _pixels(body.get("image_size", default_size), body)
    megapixels = None if pixels is None else Decimal(pixels * images) / 1_000_000
    return Units(images, megapixels, _seconds(body))


def _pixels(size: Any, body: Mapping[str, Any]) -> int | None:
    if isinstance(size, str) and size in IMAGE_SIZE_PRESETS:
        return math.prod(IMAGE_SIZE_PRESETS[size])
    if isinstance(size, str) and (shorthand := re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)):
        return int(shorthand[1]) * int(shorthand[2])
    source = size if isinstance(size, Mapping) else body
    sides = source.get("width"), source.get("height")
    return sides[0] * sides[1] if _positive_int(sides[0]) and _positive_int(sides[1]) else None


def _seconds(body: Mapping[str, Any]) -> Decimal | None:
    duration = body.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool) and math.isfinite(duration) \
            and duration > 0:  # fmt: skip
        return Decimal(str(duration))
    if isinstance(duration, str) and (found := _SECONDS.match(duration)):
        return Decimal(found[1])
    frames, fps = body.get("num_frames"), body.get("frames_per_second", body.get("fps"))
    return Decimal(frames) / Decimal(fps) if _positive_int(frames) and _positive_int(fps) else None


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def attempt_cost_nusd(units: Units, price: Price) -> int | None:
    """One attempt's cost in nano-dollars (rounded up), or None when its input does not say how many units."""
    quantity = units.of(price.unit)
    if quantity is None:
        return None
    return int((quantity * price.usd / _NANO).to_integral_value(rounding=ROUND_CEILING))


def job_cost_nusd(endpoint: str, body: Mapping[str, Any], prices: Mapping[str, Price]) -> int | None:
    """One attempt's cost of a job with input `body` at `endpoint` (nano-dollars); None when it has no price, or
    its input does not say how many units."""
    price = prices.get(endpoint)
    return None if price is None else attempt_cost_nusd(units_of(endpoint, body), price)


def usd(nusd: int) -> Decimal:
    """Nano-dollars as USD, exactly."""
    return Decimal(nusd) / NANO_PER_USD


def to_nusd(amount: Decimal) -> int:
    """USD as whole nano-dollars, rounded down (a cap never grows by rounding)."""
    return int(amount * NANO_PER_USD)


def shown_usd(amount: Decimal) -> str:
    """`$1.50`, `$0.0125`, `$12,000.00`: cents always, and every digit an estimate has below them."""
    exponent = amount.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"${amount:,.{places}f}"


def count_units(jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Counter[Units]]:
    """The units of each (endpoint, input), counted per endpoint: few distinct ones, however many jobs."""
    counted: dict[str, Counter[Units]] = {}
    for endpoint, body in jobs:
        counted.setdefault(endpoint, Counter())[units_of(endpoint, body)] += 1
    return counted


@dataclass(frozen=True)
class EndpointCost:
    """The estimate of one endpoint's jobs: None where it has no price, or some job's units are not known."""

    endpoint: str
    jobs: int
    price: Price | None
    #: Units all its jobs make, in the price's unit.
    quantity: Decimal | None
    cost_nusd: int | None
    #: Why it has no estimate.
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint, "jobs": self.jobs,
            "unit": self.price.unit.value if self.price else None,
            "unit_price_usd": float(self.price.usd) if self.price else None,
            "price_source": self.price.source if self.price else None,
            "quantity": None if self.quantity is None else float(self.quantity),
            "estimated_cost_usd": None if self.cost_nusd is None else float(usd(self.cost_nusd)),
            "problem": self.problem,
        }  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    """What a batch's jobs cost, one attempt each, per endpoint and in all (of the endpoints it can price)."""

    endpoints: list[EndpointCost] = field(default_factory=list)

    @property
    def total_nusd(self) -> int:
        return sum(line.cost_nusd or 0 for line in self.endpoints)

    @property
    def complete(self) -> bool:
        """Every job has an estimate."""
        return all(line.cost_nusd is not None for line in self.endpoints)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimated_cost_usd": float(usd(self.total_nusd)),
            "complete": self.complete,
            "endpoints": [line.to_dict() for line in self.endpoints],
            "note": "estimates from the listed prices, one attempt per job",
        }


def estimate(units: Mapping[str, Counter[Units]], prices: Mapping[str, Price]) -> Estimate:
    """The cost of one attempt of every job counted in `units`, at `prices` (by endpoint)."""
    lines = []
    for endpoint, counted in sorted(units.items()):
        jobs = sum(counted.values())
        price = prices.get(endpoint)
        if price is None:
            lines.append(EndpointCost(endpoint, jobs, None, None, None, "no known price"))
            continue
        costs = {each: attempt_cost_nusd(each, price) for each in counted}
        unknown = sum(n for each, n in counted.items() if costs[each] is None)
        if unknown:
            problem = f"{unknown} job(s) do not say how many {price.unit.value}s they make"
            lines.append(EndpointCost(endpoint, jobs, price, None, None, problem))
            continue
        quantity = sum((each.of(price.unit) or Decimal(0)) * n for each, n in counted.items())
        cost = sum((costs[each] or 0) * n for each, n in counted.items())
        lines.append(EndpointCost(endpoint, jobs, price, Decimal(quantity), cost))
    return Estimate(lines)
