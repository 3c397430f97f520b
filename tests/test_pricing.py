"""Prices, the units a job's input makes, and estimates summed exactly."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.pricing import (
    BUILT_IN_PRICES,
    OPTION_SOURCE,
    Price,
    PriceOption,
    Unit,
    Units,
    attempt_cost_nusd,
    count_units,
    estimate,
    parse_price_option,
    parse_unit,
    parse_usd,
    shown_usd,
    to_nusd,
    units_of,
    usd,
)

WAN25 = Price(WAN25_I2I, Decimal("0.05"), Unit.IMAGE, "test")
WAN22 = Price(WAN22_I2I, Decimal("0.04"), Unit.IMAGE, "test")


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (WAN25_I2I, {}, Units(1, Decimal("0.262144"), None)),  # its default: one `square`, 512x512
        (WAN25_I2I, {"num_images": 4, "image_size": "square_hd"}, Units(4, Decimal("4.194304"), None)),
        (WAN25_I2I, {"num_images": 2, "image_size": {"width": 1280, "height": 720}}, Units(2, Decimal("1.8432"), None)),
        (WAN22_I2I, {"aspect_ratio": "16:9"}, Units(1, None, None)),  # its size follows the input image
        ("fal-ai/other", {}, Units(1, None, None)),
        ("fal-ai/other", {"image_size": "1000x500", "num_images": 3}, Units(3, Decimal("1.5"), None)),
        ("fal-ai/other", {"width": 2000, "height": 1000}, Units(1, Decimal("2"), None)),
        ("fal-ai/other", {"num_images": True, "width": -5, "height": 10}, Units(1, None, None)),
        ("fal-ai/video", {"duration": "5"}, Units(1, None, Decimal("5"))),
        ("fal-ai/video", {"duration": "10s"}, Units(1, None, Decimal("10"))),
        ("fal-ai/video", {"duration": 2.5}, Units(1, None, Decimal("2.5"))),
        ("fal-ai/video", {"num_frames": 81, "frames_per_second": 16}, Units(1, None, Decimal("5.0625"))),
        ("fal-ai/video", {"duration": "long"}, Units(1, None, None)),
    ],
)
def test_units_of_a_job(endpoint: str, body: dict[str, object], expected: Units) -> None:
    assert units_of(endpoint, body) == expected


@pytest.mark.parametrize(
    ("units", "price", "nusd"),
    [
        (Units(3, None, None), WAN25, 150_000_000),
        (Units(1, Decimal("1.8432"), None), Price("a/b", Decimal("0.025"), Unit.MEGAPIXEL, "t"), 46_080_000),
        (Units(4, None, None), Price("a/b", Decimal("0.03"), Unit.REQUEST, "t"), 30_000_000),
        (Units(1, None, Decimal("5")), Price("a/b", Decimal("0.1"), Unit.SECOND, "t"), 500_000_000),
        # a fraction of a nano-dollar is rounded up: the estimate never undercounts
        (Units(1, None, None), Price("a/b", Decimal("0.0000000001"), Unit.IMAGE, "t"), 1),
        (Units(1, None, None), Price("a/b", Decimal("0.1"), Unit.MEGAPIXEL, "t"), None),
    ],
)
def test_attempt_cost(units: Units, price: Price, nusd: int | None) -> None:
    assert attempt_cost_nusd(units, price) == nusd


def test_the_estimate_of_a_mixed_manifest_matches_a_hand_computation() -> None:
    """Wan 2.5 rows with 1, 2, 3 and 4 images and three Wan 2.2 rows: 10 x $0.05 + 3 x $0.04 = $0.62."""
    jobs = [(WAN25_I2I, {"num_images": n}) for n in (1, 2, 3, 4)] + [(WAN22_I2I, {})] * 3
    found = estimate(count_units(jobs), {WAN25_I2I: WAN25, WAN22_I2I: WAN22})
    assert usd(found.total_nusd) == Decimal("0.62") and found.complete
    by_endpoint = {line.endpoint: line for line in found.endpoints}
    assert (by_endpoint[WAN25_I2I].jobs, by_endpoint[WAN25_I2I].quantity) == (4, Decimal(10))
    assert usd(by_endpoint[WAN25_I2I].cost_nusd or 0) == Decimal("0.50")
    assert usd(by_endpoint[WAN22_I2I].cost_nusd or 0) == Decimal("0.12")
    assert found.to_dict()["estimated_cost_usd"] == 0.62


def test_an_endpoint_without_a_price_or_a_count_of_units_says_so_and_is_left_out_of_the_total() -> None:
    jobs = [(WAN25_I2I, {})] * 2 + [("fal-ai/unpriced", {})] + [(WAN22_I2I, {})]
    per_megapixel = Price(WAN22_I2I, Decimal("0.02"), Unit.MEGAPIXEL, "t")
    found = estimate(count_units(jobs), {WAN25_I2I: WAN25, WAN22_I2I: per_megapixel})
    assert usd(found.total_nusd) == Decimal("0.10") and not found.complete
    problems = {line.endpoint: line.problem for line in found.endpoints}
    assert problems == {WAN25_I2I: None, "fal-ai/unpriced": "no known price",
                        WAN22_I2I: "1 job(s) do not say how many megapixels they make"}  # fmt: skip


def test_many_jobs_count_as_few_distinct_units() -> None:
    counted = count_units([(WAN25_I2I, {"num_images": n % 4 + 1, "prompt": str(n)}) for n in range(10_000)])
    assert len(counted[WAN25_I2I]) == 4 and sum(counted[WAN25_I2I].values()) == 10_000
    assert usd(estimate(counted, {WAN25_I2I: WAN25}).total_nusd) == Decimal("1250.00")


def test_the_built_in_table_has_wan_25_at_five_cents_an_image_and_names_its_source() -> None:
    price = BUILT_IN_PRICES[WAN25_I2I]
    assert (price.usd, price.unit) == (Decimal("0.05"), Unit.IMAGE) and "2026" in price.source
    assert WAN22_I2I not in BUILT_IN_PRICES  # fal published no figure: never guessed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{WAN25_I2I}=0.04", PriceOption(WAN25_I2I, Decimal("0.04"), None)),
        (f"{WAN25_I2I}=$0.04/image", PriceOption(WAN25_I2I, Decimal("0.04"), Unit.IMAGE)),
        ("fal-ai/x=0.002/megapixels", PriceOption("fal-ai/x", Decimal("0.002"), Unit.MEGAPIXEL)),
        ("fal-ai/x = 1/ Request", None),  # spaces around `=` are not an endpoint id's
        ("fal-ai/x=1/request", PriceOption("fal-ai/x", Decimal("1"), Unit.REQUEST)),
    ],
)
def test_parse_price_option(text: str, expected: PriceOption | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="ENDPOINT=USD"):
            parse_price_option(text)
    else:
        assert parse_price_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("fal-ai/x", "ENDPOINT=USD"), ("fal-ai/x=-1", "ENDPOINT=USD"), ("fal-ai/x=1/token", "unknown unit 'token'"),
     ("nope=1", "not a fal endpoint id"), ("fal-ai/x=1e3", "ENDPOINT=USD"),
     ("fal-ai/x=10001/image", r"at most \$10,000.00 a unit")],
)  # fmt: skip
def test_a_bad_price_option_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_price_option(text)


@pytest.mark.parametrize(
    ("text", "unit"),
    [("image", Unit.IMAGE), ("Images", Unit.IMAGE), ("megapixels", Unit.MEGAPIXEL), ("second", Unit.SECOND),
     ("video  seconds", Unit.SECOND), ("request", Unit.REQUEST), ("1k tokens", None)],
)  # fmt: skip
def test_parse_unit(text: str, unit: Unit | None) -> None:
    assert parse_unit(text) is unit


@pytest.mark.parametrize(("text", "amount"), [("10", Decimal(10)), ("$12.50", Decimal("12.50")), (" 0 ", Decimal(0))])
def test_parse_usd(text: str, amount: Decimal) -> None:
    assert parse_usd(text) == amount


@pytest.mark.parametrize(
    ("text", "message"),
    [("-1", "not an amount of USD"), ("ten", "not an amount of USD"), ("NaN", "not an amount of USD"),
     ("Infinity", "not an amount of USD"), ("", "not an amount of USD"), ("1e7", r"more than \$1,000,000.00")],
)  # fmt: skip
def test_parse_usd_refuses_what_is_not_an_amount_or_too_much(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_usd(text)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(Decimal("1.5"), "$1.50"), (Decimal("0.0125"), "$0.0125"), (Decimal("12000"), "$12,000.00"),
     (Decimal("0"), "$0.00"), (usd(1), "$0.000000001")],
)  # fmt: skip
def test_shown_usd_keeps_every_digit_below_the_cents(amount: Decimal, shown: str) -> None:
    assert shown_usd(amount) == shown


def test_money_round_trips_through_nano_dollars_exactly() -> None:
    assert to_nusd(Decimal("0.50")) == 500_000_000 and usd(500_000_000) == Decimal("0.5")
    assert to_nusd(Decimal("0.0000000019")) == 1  # a cap is rounded down, never up


def test_a_price_round_trips_through_its_stored_form() -> None:
    price = Price(WAN25_I2I, Decimal("0.045"), Unit.MEGAPIXEL, OPTION_SOURCE)
    assert Price.from_dict(price.to_dict()) == price and price.shown == "$0.045/megapixel"


def test_counted_units_are_a_counter_per_endpoint() -> None:
    assert count_units([]) == {}
    assert count_units([(WAN22_I2I, {})] * 2) == {WAN22_I2I: Counter({Units(1, None, None): 2})}
