"""fal's prices (Platform API): `GET /v1/models/pricing` and `POST /v1/models/pricing/estimate`.

Both answer from the simulator's configured prices (`SimConfig.prices`). An
endpoint with no price is left out of a price list, as fal leaves out one it
does not bill, and makes an estimate answer 404. Money is summed in Decimal,
so an estimate is exact before it is rounded to the micro-dollar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.simulator.config import SimPrice

PRICING_PATH = "/v1/models/pricing"
ESTIMATE_PATH = "/v1/models/pricing/estimate"
#: The method each pricing path answers; another one answers 405.
PRICING_METHODS = {PRICING_PATH: "GET", ESTIMATE_PATH: "POST"}
#: The most endpoint ids one price list takes.
MAX_ENDPOINT_IDS = 50
#: An estimate's `total_cost` is rounded to this (a micro-dollar).
COST_QUANTUM = Decimal("0.000001")


@dataclass(frozen=True)
class PricingAnswer:
    """What a pricing call answers: a status code and its JSON body."""

    status: int
    body: dict[str, Any]


class _Quantity(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    unit_quantity: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]


class _EstimateBody(BaseModel):
    """The estimate's body as fal's API validates it; only `unit_price` estimates are served."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    estimate_type: Literal["unit_price"]
    endpoints: Annotated[dict[str, _Quantity], Field(min_length=1)]


def answer_pricing(path: str, query: Mapping[str, list[str]], body: bytes,
                   prices: Mapping[str, SimPrice]) -> PricingAnswer:  # fmt: skip
    """The answer of a pricing call to `path` (one of PRICING_METHODS, called with its own method)."""
    if path == ESTIMATE_PATH:
        return estimate_cost(body, prices)
    return list_prices(query, prices)


def list_prices(query: Mapping[str, list[str]], prices: Mapping[str, SimPrice]) -> PricingAnswer:
    """The prices of the `endpoint_id`s the query names, comma-separated and/or repeated, in the order named.

    No id, or more than MAX_ENDPOINT_IDS, answers 422 with a FastAPI-style detail list.
    """
    named = [part.strip() for value in query.get("endpoint_id", []) for part in value.split(",") if part.strip()]
    if not named:
        return _refused(["query", "endpoint_id"], "Field required", "missing")
    if len(named) > MAX_ENDPOINT_IDS:
        message = f"List should have at most {MAX_ENDPOINT_IDS} items after validation, not {len(named)}"
        return _refused(["query", "endpoint_id"], message, "too_long")
    listed = [price_item(endpoint, prices[endpoint]) for endpoint in dict.fromkeys(named) if endpoint in prices]
    return PricingAnswer(200, {"prices": listed})


def price_item(endpoint: str, price: SimPrice) -> dict[str, Any]:
    """One entry of `prices`; `unit_price` is a JSON number."""
    return {"endpoint_id": endpoint, "unit_price": float(price.unit_price), "unit": price.unit,
            "currency": price.currency}  # fmt: skip


def estimate_cost(body: bytes, prices: Mapping[str, SimPrice]) -> PricingAnswer:
    """The cost of `unit_quantity` units of each endpoint in the body.

    A malformed body answers 422 (FastAPI-style detail list), an endpoint with no price 404,
    prices in more than one currency or a total of 10^22 USD or more 422.
    """
    try:
        asked = _EstimateBody.model_validate_json(body)
    except ValidationError as exc:
        detail = [{"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
                  for error in exc.errors()]  # fmt: skip
        return PricingAnswer(422, {"detail": detail})
    unpriced = next((endpoint for endpoint in asked.endpoints if endpoint not in prices), None)
    if unpriced is not None:
        return PricingAnswer(404, {"detail": f"No price for endpoint {unpriced}"})
    currencies = {prices[endpoint].currency for endpoint in asked.endpoints}
    if len(currencies) > 1:
        return PricingAnswer(422, {"detail": f"The endpoints are priced in several currencies: {sorted(currencies)}"})
    total = sum((prices[endpoint].unit_price * each.unit_quantity for endpoint, each in asked.endpoints.items()),
                Decimal(0))  # fmt: skip
    try:
        rounded = total.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)
    except InvalidOperation:  # more digits than Decimal's precision holds: no bill is that large
        return PricingAnswer(422, {"detail": "The estimate is too large to price"})
    return PricingAnswer(200, {"estimate_type": "unit_price", "total_cost": float(rounded),
                               "currency": currencies.pop()})  # fmt: skip


def _refused(loc: list[str], message: str, kind: str) -> PricingAnswer:
    return PricingAnswer(422, {"detail": [{"loc": loc, "msg": message, "type": kind}]})
