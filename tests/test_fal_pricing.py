"""fal's prices as the runner reads them: the pricing API (the simulator's, over real HTTP), its cache, the fallbacks."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.pricing import API_SOURCE, OPTION_SOURCE, TABLE_SOURCE, PriceOption, Unit
from runner.batches.costs import cap_nusd, prices_for
from runner.fal.history import NO_API
from runner.fal.pricing import PRICE_TTL_S, PriceCache, PricingClient, resolve_prices
from runner.fal.providers import WORKERS_CREDENTIAL, Provider
from runner.ledger.batch_info import BatchInfo
from runner.ledger.keys import Keys
from runner.simulator import SimConfig, run_simulator
from runner.simulator.config import DEFAULT_PRICES, SimPrice

KEY = "pricing-test-key"


@pytest.fixture
def sim() -> Iterator[Any]:
    prices = {**DEFAULT_PRICES, "fal-ai/tokens": SimPrice(unit_price=Decimal("0.001"), unit="1k tokens"),
              "fal-ai/euro": SimPrice(unit_price=Decimal("0.05"), unit="image", currency="EUR"),
              "fal-ai/flux": SimPrice(unit_price=Decimal("0.025"), unit="megapixels")}  # fmt: skip
    with run_simulator(SimConfig(key=KEY, prices=prices)) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def client_of(sim: Any, http: httpx.Client, key: str = KEY) -> PricingClient:
    return PricingClient(http, Provider(base_url=f"{sim.base_url}/v1", auth_scheme="Key", credential=key))


def test_the_api_s_prices_are_read_and_those_it_cannot_be_used_for_say_why(sim: Any, http: httpx.Client) -> None:
    found, unusable = client_of(sim, http).prices([WAN25_I2I, "fal-ai/flux", "fal-ai/tokens", "fal-ai/euro", "x/y"])
    assert (found[WAN25_I2I].usd, found[WAN25_I2I].unit, found[WAN25_I2I].source) == (Decimal("0.05"), Unit.IMAGE,
                                                                                     API_SOURCE)  # fmt: skip
    assert (found["fal-ai/flux"].usd, found["fal-ai/flux"].unit) == (Decimal("0.025"), Unit.MEGAPIXEL)
    assert set(found) == {WAN25_I2I, "fal-ai/flux"}, "an endpoint the API does not list has no price from it"
    assert unusable == {"fal-ai/tokens": "fal bills it per '1k tokens', which wan-batch cannot count from a job",
                        "fal-ai/euro": "fal prices it in EUR, not USD"}  # fmt: skip


def test_option_then_api_then_table_and_an_unknown_endpoint_has_no_price(sim: Any, http: httpx.Client) -> None:
    options = [PriceOption("fal-ai/flux", Decimal("0.03"), None), PriceOption("fal-ai/own", Decimal("0.2"), None),
               PriceOption("fal-ai/mine", Decimal("0.2"), Unit.REQUEST), PriceOption("fal-ai/typo", Decimal("1"), None)]
    listed = resolve_prices([WAN25_I2I, WAN22_I2I, "fal-ai/flux", "fal-ai/own", "fal-ai/mine", "fal-ai/none"],
                            options, client_of(sim, http))  # fmt: skip
    sources = {endpoint: (price.source, price.unit, price.usd) for endpoint, price in listed.prices.items()}
    assert sources == {
        WAN25_I2I: (API_SOURCE, Unit.IMAGE, Decimal("0.05")), WAN22_I2I: (API_SOURCE, Unit.IMAGE, Decimal("0.04")),
        "fal-ai/flux": (OPTION_SOURCE, Unit.MEGAPIXEL, Decimal("0.03")),  # an option without a unit takes fal's
        "fal-ai/mine": (OPTION_SOURCE, Unit.REQUEST, Decimal("0.2")),
    }  # fmt: skip
    assert listed.missing == {"fal-ai/none": "no known price", "fal-ai/own": "--price names no unit, and none is"
                              " known for it: give fal-ai/own=USD/UNIT"}  # never a guessed unit
    assert listed.notes == ["--price fal-ai/typo: no job here is of that endpoint"]


def test_a_price_fal_lists_in_a_unit_or_currency_it_cannot_use_is_no_price_not_the_table_s(http: httpx.Client) -> None:
    """The account's own price stands: the table's $0.05 for Wan 2.5 would be a guess (here 4x too low)."""
    euro = {**DEFAULT_PRICES, WAN25_I2I: SimPrice(unit_price=Decimal("0.20"), unit="image", currency="EUR")}
    with run_simulator(SimConfig(key=KEY, prices=euro)) as running:
        listed = resolve_prices([WAN25_I2I], [], client_of(running, http))
    assert listed.prices == {} and listed.missing == {WAN25_I2I: "fal prices it in EUR, not USD"}


def test_an_option_with_its_own_unit_is_not_asked_of_fal(sim: Any, http: httpx.Client) -> None:
    listed = resolve_prices([WAN25_I2I], [PriceOption(WAN25_I2I, Decimal("0.1"), Unit.REQUEST)], client_of(sim, http))
    assert listed.prices[WAN25_I2I].unit is Unit.REQUEST and sim.stats()["pricing_calls"] == 0


def test_an_api_that_refuses_the_key_leaves_the_table_and_a_note_without_the_key(sim: Any, http: httpx.Client) -> None:
    key = "wrong-key-that-must-not-show"
    listed = resolve_prices([WAN25_I2I, WAN22_I2I], [], client_of(sim, http, key))
    assert listed.prices[WAN25_I2I].source == TABLE_SOURCE and WAN22_I2I in listed.missing
    assert len(listed.notes) == 1 and "HTTP 401" in listed.notes[0] and key not in listed.notes[0]
    assert listed.notes[0].endswith(": prices from the built-in table")


def test_fal_s_prices_are_cached_a_day_per_api(sim: Any, http: httpx.Client, redis_client: redis.Redis) -> None:
    cache = PriceCache(redis_client, Keys(), f"{sim.base_url}/v1")
    first = resolve_prices([WAN25_I2I, WAN22_I2I], [], client_of(sim, http), cache)
    again = resolve_prices([WAN25_I2I, WAN22_I2I], [], client_of(sim, http), cache)
    assert first.prices == again.prices and sim.stats()["pricing_calls"] == 1
    assert 0 < redis_client.ttl(Keys().price(f"{sim.base_url}/v1", WAN25_I2I)) <= PRICE_TTL_S
    other = PriceCache(redis_client, Keys(), "http://127.0.0.1:1/v1")  # another API's prices are not these
    assert other.get([WAN25_I2I]) == {}


@pytest.mark.parametrize(
    ("provider", "api_url", "note"),
    [
        (None, "https://api.fal.ai/v1", "no FAL_KEY here"),
        (Provider.fal(WORKERS_CREDENTIAL), "https://api.fal.ai/v1", "no FAL_KEY here"),
        (Provider.gateway("https://gw.example.test", "t" * 20), "https://api.fal.ai/v1", "a gateway's token cannot"),
        (Provider.fal("k"), NO_API, "no fal Platform API (--api-url none)"),
    ],
)  # fmt: skip
def test_without_a_fal_key_or_an_api_fal_is_not_asked(provider: Provider | None, api_url: str, note: str,
                                                      http: httpx.Client) -> None:  # fmt: skip
    listed = prices_for([WAN25_I2I], [], provider, api_url, http)
    assert listed.prices[WAN25_I2I].source == TABLE_SOURCE
    assert len(listed.notes) == 1 and listed.notes[0].startswith(note)
    assert listed.notes[0].endswith(": prices from the built-in table")


def test_a_rerun_keeps_its_cap_unless_told() -> None:
    info = BatchInfo(id="b", manifest="m", folder="f", created_at=0.0, max_in_flight=1, max_cost_nusd=7)
    assert cap_nusd(None, info) == 7 and cap_nusd("none", info) is None and cap_nusd(Decimal("0.5"), info) == 5 * 10**8
    assert cap_nusd(None, None) is None
