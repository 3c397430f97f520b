"""fal's prices (Platform API) in the simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from runner.cli import main
from runner.simulator import FaultRates, RunningSimulator, SimConfig, run_simulator
from runner.simulator.config import SimPrice
from tests.test_sim_cli import sim_process
from tests.test_simulator import serve

PRICING = "/v1/models/pricing"
ESTIMATE = "/v1/models/pricing/estimate"
UNKNOWN = "someone/unpriced"
DEFAULT_ITEMS = {
    WAN25_I2I: {"endpoint_id": WAN25_I2I, "unit_price": 0.05, "unit": "image", "currency": "USD"},
    WAN22_I2I: {"endpoint_id": WAN22_I2I, "unit_price": 0.04, "unit": "image", "currency": "USD"},
}
MISSING = [{"loc": ["query", "endpoint_id"], "msg": "Field required", "type": "missing"}]


def list_prices(client: httpx.Client, sim: RunningSimulator, *endpoint_ids: str) -> httpx.Response:
    """A price list call with one `endpoint_id` parameter per id given (none: the parameter left out)."""
    return client.get(f"{sim.base_url}{PRICING}", params=[("endpoint_id", each) for each in endpoint_ids])


def listed(client: httpx.Client, sim: RunningSimulator, *endpoint_ids: str) -> list[dict[str, Any]]:
    response = list_prices(client, sim, *endpoint_ids)
    assert response.status_code == 200, response.text
    prices: list[dict[str, Any]] = response.json()["prices"]
    return prices


def estimate(client: httpx.Client, sim: RunningSimulator, quantities: dict[str, Any]) -> httpx.Response:
    endpoints = {endpoint: {"unit_quantity": quantity} for endpoint, quantity in quantities.items()}
    return client.post(f"{sim.base_url}{ESTIMATE}", json={"estimate_type": "unit_price", "endpoints": endpoints})


# --- price lists -------------------------------------------------------------------------


def test_default_prices_are_served_as_json_numbers() -> None:
    with serve() as (sim, client):
        response = list_prices(client, sim, f"{WAN25_I2I},{WAN22_I2I}")
        assert response.json() == {"prices": [DEFAULT_ITEMS[WAN25_I2I], DEFAULT_ITEMS[WAN22_I2I]]}
        assert '"unit_price": 0.05,' in response.text


def test_configured_prices_replace_the_defaults() -> None:
    prices = {
        WAN25_I2I: SimPrice(unit_price=Decimal("0.0012"), unit="megapixels"),
        "owner/app/video": SimPrice(unit_price=Decimal("1.5"), unit="second", currency="EUR"),
    }
    with serve(prices=prices) as (sim, client):
        assert listed(client, sim, WAN25_I2I, WAN22_I2I, "owner/app/video") == [
            {"endpoint_id": WAN25_I2I, "unit_price": 0.0012, "unit": "megapixels", "currency": "USD"},
            {"endpoint_id": "owner/app/video", "unit_price": 1.5, "unit": "second", "currency": "EUR"},
        ]


@pytest.mark.parametrize(
    ("endpoint_ids", "expected"),
    [
        ((WAN22_I2I,), [WAN22_I2I]),
        ((f"{WAN22_I2I},{WAN25_I2I}",), [WAN22_I2I, WAN25_I2I]),
        ((WAN25_I2I, WAN22_I2I), [WAN25_I2I, WAN22_I2I]),
        ((f" {WAN25_I2I} , {UNKNOWN}", WAN22_I2I), [WAN25_I2I, WAN22_I2I]),
        ((f"{WAN25_I2I},{WAN25_I2I}", WAN25_I2I), [WAN25_I2I]),
        ((UNKNOWN,), []),
        ((f"{UNKNOWN},other/app", "a/b"), []),
    ],
)
def test_ids_comma_separated_or_repeated_and_unpriced_ones_left_out(endpoint_ids: tuple[str, ...],
                                                                    expected: list[str]) -> None:  # fmt: skip
    with serve() as (sim, client):
        assert listed(client, sim, *endpoint_ids) == [DEFAULT_ITEMS[each] for each in expected]


@pytest.mark.parametrize("endpoint_ids", [(), ("",), (" , ",), (",", "")])
def test_endpoint_id_is_required(endpoint_ids: tuple[str, ...]) -> None:
    with serve() as (sim, client):
        response = list_prices(client, sim, *endpoint_ids)
        assert (response.status_code, response.json()) == (422, {"detail": MISSING})


@pytest.mark.parametrize(("count", "status"), [(50, 200), (51, 422)])
def test_at_most_fifty_ids(count: int, status: int) -> None:
    with serve() as (sim, client):
        response = list_prices(client, sim, ",".join(f"owner/app-{n}" for n in range(count - 1)), WAN25_I2I)
        assert response.status_code == status
        if status == 422:
            [error] = response.json()["detail"]
            assert (error["loc"], error["type"]) == (["query", "endpoint_id"], "too_long")
        else:
            assert response.json()["prices"] == [DEFAULT_ITEMS[WAN25_I2I]]


# --- estimates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantities", "total"),
    [
        ({WAN25_I2I: 3, WAN22_I2I: 2.5}, 0.25),  # 0.25000000000000006 in floats
        ({WAN25_I2I: 1}, 0.05),
        ({WAN22_I2I: 0.1}, 0.004),
        ({WAN25_I2I: "7"}, 0.35),
        ({WAN22_I2I: 1_000_000}, 40000.0),
        ({WAN22_I2I: 0.0000125}, 0.000001),  # 0.0000005 rounds up to the micro-dollar
    ],
)
def test_estimate_is_exact(quantities: dict[str, Any], total: float) -> None:
    with serve() as (sim, client):
        response = estimate(client, sim, quantities)
        assert response.status_code == 200, response.text
        assert response.json() == {"estimate_type": "unit_price", "total_cost": total, "currency": "USD"}


def test_estimate_uses_the_configured_prices() -> None:
    prices = {"owner/app": SimPrice(unit_price=Decimal("0.003"), unit="megapixel")}
    with serve(prices=prices) as (sim, client):
        assert estimate(client, sim, {"owner/app": 4.2}).json()["total_cost"] == 0.0126
        assert estimate(client, sim, {WAN25_I2I: 1}).status_code == 404


def test_estimate_of_an_unpriced_endpoint_is_404() -> None:
    with serve() as (sim, client):
        response = estimate(client, sim, {WAN25_I2I: 1, UNKNOWN: 2})
        assert (response.status_code, response.json()) == (404, {"detail": f"No price for endpoint {UNKNOWN}"})


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[]",
        b'{"endpoints": {"fal-ai/wan-25-preview/image-to-image": {"unit_quantity": 1}}}',
        b'{"estimate_type": "historical_api_price", "endpoints": {"a/b": {"call_quantity": 1}}}',
        b'{"estimate_type": "unit_price"}',
        b'{"estimate_type": "unit_price", "endpoints": {}}',
        b'{"estimate_type": "unit_price", "endpoints": [1]}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": 3}}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": {}}}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": {"unit_quantity": 0}}}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": {"unit_quantity": -1}}}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": {"unit_quantity": true}}}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": {"unit_quantity": "x"}}}',
        b'{"estimate_type": "unit_price", "endpoints": {"fal-ai/wan-25-preview/image-to-image": {"unit_quantity": NaN}}}',
    ],
)
def test_a_malformed_estimate_is_422(body: bytes) -> None:
    with serve() as (sim, client):
        response = client.post(f"{sim.base_url}{ESTIMATE}", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail and all(error["loc"][0] == "body" and error["msg"] for error in detail)


def test_an_estimate_past_what_decimal_holds_is_422_not_a_crash() -> None:
    with serve() as (sim, client):
        response = estimate(client, sim, {WAN25_I2I: 1e300})
        assert response.status_code == 422 and "too large" in response.json()["detail"]
        assert estimate(client, sim, {WAN25_I2I: 1}).status_code == 200


def test_an_estimate_in_two_currencies_is_422() -> None:
    prices = {"a/b": SimPrice(unit_price=Decimal(1), unit="image"),
              "c/d": SimPrice(unit_price=Decimal(1), unit="image", currency="EUR")}  # fmt: skip
    with serve(prices=prices) as (sim, client):
        response = estimate(client, sim, {"a/b": 1, "c/d": 1})
        assert response.status_code == 422 and "currencies" in response.json()["detail"]


# --- auth, routes, faults and stats ---------------------------------------------------------


@pytest.mark.parametrize("path", [PRICING, ESTIMATE])
@pytest.mark.parametrize(
    ("key", "header", "status"),
    [
        (None, "Key anything", 200),
        (None, "Bearer anything", 401),
        (None, None, 401),
        ("sim-key", "Key sim-key", 200),
        ("sim-key", "Key wrong-key", 401),
        ("sim-key", "Bearer sim-key", 401),
    ],
)
def test_pricing_takes_only_a_fal_key(path: str, key: str | None, header: str | None, status: int) -> None:
    with run_simulator(SimConfig(key=key)) as sim, httpx.Client(timeout=10) as client:
        headers = {"Authorization": header} if header is not None else {}
        if path == PRICING:
            response = client.get(f"{sim.base_url}{PRICING}", params={"endpoint_id": WAN25_I2I}, headers=headers)
        else:
            body = {"estimate_type": "unit_price", "endpoints": {WAN25_I2I: {"unit_quantity": 1}}}
            response = client.post(f"{sim.base_url}{ESTIMATE}", json=body, headers=headers)
        assert response.status_code == status
        if header is not None and header.startswith("Bearer"):
            assert "fal key" in response.json()["detail"]
        if header is not None and status == 401:
            assert header.partition(" ")[2] not in response.text
        assert sim.stats()["pricing_calls"] == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", PRICING, 405),
        ("PUT", PRICING, 405),
        ("GET", ESTIMATE, 405),
        ("GET", f"{PRICING}/other", 404),
        ("POST", f"{ESTIMATE}/more", 404),
    ],
)
def test_other_methods_and_paths_answer_json_errors(method: str, path: str, status: int) -> None:
    with serve() as (sim, client):
        response = client.request(method, sim.base_url + path, params={"endpoint_id": WAN25_I2I},
                                  json={} if method != "GET" else None)  # fmt: skip
        assert (response.status_code, bool(response.json()["detail"])) == (status, True)
        assert sim.stats()["pricing_calls"] == 0


def test_queue_faults_strike_pricing_calls_too() -> None:
    with serve(faults=FaultRates(rate_limit_429=1.0), fault_limit=1) as (sim, client):
        assert list_prices(client, sim, WAN25_I2I).status_code == 429
        assert listed(client, sim, WAN25_I2I) == [DEFAULT_ITEMS[WAN25_I2I]]
        stats = sim.stats()
        assert (stats["faults"]["rate_limit_429"], stats["pricing_calls"]) == (1, 1)


def test_pricing_calls_are_counted_and_reset() -> None:
    with serve() as (sim, client):
        list_prices(client, sim, WAN25_I2I)
        list_prices(client, sim)  # refused, yet answered
        estimate(client, sim, {WAN25_I2I: 1})
        estimate(client, sim, {UNKNOWN: 1})
        stats = sim.stats()
        assert (stats["pricing_calls"], stats["history_calls"]) == (4, 0)
        assert client.post(f"{sim.base_url}/_stats/reset").json()["pricing_calls"] == 0
        estimate(client, sim, {WAN22_I2I: 1})
        assert client.get(f"{sim.base_url}/_stats").json()["pricing_calls"] == 1


# --- the setting and the CLI option -----------------------------------------------------------


def test_default_prices_setting() -> None:
    assert SimConfig().prices == {
        WAN25_I2I: SimPrice(unit_price=Decimal("0.05"), unit="image", currency="USD"),
        WAN22_I2I: SimPrice(unit_price=Decimal("0.04"), unit="image", currency="USD"),
    }


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ({"a/b": {"unit_price": "-0.01", "unit": "image"}}, "unit_price"),
        ({"a/b": {"unit_price": "NaN", "unit": "image"}}, "unit_price"),
        ({"a/b": {"unit_price": "Infinity", "unit": "image"}}, "unit_price"),
        ({"a/b": {"unit_price": "0.01", "unit": ""}}, "unit"),
        ({"a/b": {"unit_price": "0.01", "unit": "image", "currency": ""}}, "currency"),
        ({"a/b": {"unit_price": "0.01", "unit": "image", "per": "x"}}, "per"),
        ({"not an endpoint": {"unit_price": "0.01", "unit": "image"}}, "not fal endpoint ids"),
    ],
)
def test_prices_are_checked(prices: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        SimConfig.model_validate({"prices": prices})


def test_cli_prices_reach_the_simulator() -> None:
    args = ["--price", f"{WAN22_I2I}=0.03", "--price", "owner/app=$1.25/megapixels", "--price", "owner/app=2/s"]
    with sim_process(args) as served, httpx.Client(timeout=10, headers={"Authorization": "Key k"}) as client:
        ids = [("endpoint_id", f"{WAN25_I2I},{WAN22_I2I}"), ("endpoint_id", "owner/app")]
        response = client.get(f"{served.base_url}{PRICING}", params=ids)
        assert response.json()["prices"] == [
            DEFAULT_ITEMS[WAN25_I2I],
            {**DEFAULT_ITEMS[WAN22_I2I], "unit_price": 0.03},
            {"endpoint_id": "owner/app", "unit_price": 2.0, "unit": "second", "currency": "USD"},  # the last one given
        ]
    assert "prices: 3 endpoint(s)" in served.output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nonsense", "give ENDPOINT=USD"),
        (f"{WAN25_I2I}=abc", "give ENDPOINT=USD"),
        (f"{WAN25_I2I}=-1", "give ENDPOINT=USD"),
        (f"{WAN25_I2I}=0.1/parsec", "unknown unit 'parsec'"),
        ("not-an-endpoint=0.1", "is not a fal endpoint id"),
    ],
)
def test_cli_refuses_a_bad_price(value: str, message: str) -> None:
    refused = CliRunner().invoke(main, ["sim", "--price", f"{WAN22_I2I}=0.03", "--price", value], terminal_width=200)
    assert refused.exit_code == 2
    assert "--price" in refused.output and message in refused.output
