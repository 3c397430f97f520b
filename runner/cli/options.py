"""Options several commands share, defined once so that their help, defaults and checks agree."""

from __future__ import annotations

import re
from decimal import Decimal

import click

from jobs.pricing import PriceOption, parse_price_option, parse_usd
from runner.batches.costs import NO_CAP
from runner.batches.request import WINDOW_CAP
from runner.batches.uploads import DEFAULT_UPLOAD_TTL_S

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(w|d|h|min|m|s)?\s*")
_UNIT_S = {"w": 604800, "d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1, None: 1}


def duration_s(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """A length of time given as 30d, 12h, 90min, 45s (or a number of seconds), in seconds."""
    if value is None:
        return None
    found = _DURATION.fullmatch(value.lower())
    if found is None:
        raise click.BadParameter(f"{value[:40]!r} is not a duration such as 30d, 12h, 90min or 45s")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def _window(_ctx: click.Context, _param: click.Parameter, value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    if value.strip().isdecimal() and value.strip().isascii() and int(value) >= 1:
        return int(value)
    raise click.BadParameter(f"{value[:40]!r}: give auto, or a number of jobs (1 or more)")


def _upload_ttl_s(ctx: click.Context, param: click.Parameter, value: str) -> float:
    seconds = duration_s(ctx, param, value)
    if seconds is None or seconds < 3600:
        raise click.BadParameter("give at least 1h: a batch's queued jobs read their images when they start")
    return seconds


def max_in_flight(command: click.decorators.FC) -> click.decorators.FC:
    """`--max-in-flight auto|N` and `--max-in-flight-cap N`: the window of jobs at fal, across all workers."""
    command = click.option("--max-in-flight-cap", "window_cap", type=click.IntRange(min=1), default=WINDOW_CAP,
                           show_default=True, help="The most an automatic window grows to.")(command)  # fmt: skip
    return click.option("--max-in-flight", "max_in_flight", default="auto", show_default=True, callback=_window,
                        metavar="auto|N",
                        help="Jobs submitted and not yet collected, across all workers: auto finds how many fal runs "
                             "at once for you and keeps one or two more waiting there; a number fixes it.",
                        )(command)  # fmt: skip
max_attempts = click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
                            help="Submits per job when attempts fail in ways worth retrying.")  # fmt: skip
max_image_mb = click.option("--max-image-mb", type=click.FloatRange(min=0, min_open=True), default=10.0,
                            show_default=True, help="Largest local image or data URI a job may send.")  # fmt: skip
allow_endpoint = click.option("--allow-endpoint", "allowed_endpoints", metavar="ID", multiple=True,
                              help="An endpoint id close to a known one that is meant as written, not a typo "
                                   "(repeatable).")  # fmt: skip
max_jobs = click.option("--max-jobs", type=click.IntRange(min=1), default=100_000, show_default=True,
                        help="Refuse a manifest that would make more jobs (rows times its matrix), before making any.")
notify = click.option("--notify", metavar="URL",
                      help="When the batch ends, POST its summary as JSON to this http(s) URL (only its host is ever "
                           "shown: its path may hold a token).")  # fmt: skip
webhook_url = click.option("--webhook-url", envvar="WAN_BATCH_WEBHOOK_URL", metavar="URL",
                           help="Where fal POSTs when each request ends: the public URL of a `wan-batch serve` (or "
                                "`run --serve`) receiver, e.g. https://batch.example.com/fal/webhook; jobs are then "
                                "polled only as a safety net. With `run --serve`, a path (/fal/webhook) is taken on "
                                "its address.")  # fmt: skip
jwks_url = click.option("--jwks-url", envvar="FAL_JWKS_URL", metavar="URL",
                        help="Where fal's webhook keys are published (default: fal's; with --sim, the simulator's).")
images = click.option("--images", type=click.Choice(["upload", "inline"]),
                      help="How local images are sent: uploaded to fal storage once, from here, and sent as URLs "
                           "(default with FAL_KEY), or inline as data URIs in every submit (default with a gateway, "
                           "whose token cannot upload; every worker must then see the files).")  # fmt: skip
storage_url = click.option("--storage-url", envvar="FAL_STORAGE_URL", metavar="URL",
                           help="Where fal storage is (default: https://rest.fal.ai for fal's queue, else the "
                                "--base-url host).")  # fmt: skip
upload_ttl = click.option("--upload-ttl", "upload_ttl_s", default=f"{DEFAULT_UPLOAD_TTL_S / 86400:g}d",
                          show_default=True, callback=_upload_ttl_s, metavar="DURATION",
                          help="How long fal keeps each uploaded image (e.g. 7d, 36h): longer than the batch may "
                               "take; an upload is reused while at least half of this is left.")  # fmt: skip
loglevel = click.option("--loglevel", default="INFO", show_default=True,
                        help="How much it logs: DEBUG, INFO, WARNING or ERROR.")  # fmt: skip


def require_redis(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """`--redis`, or REDIS_URL: required, but not shown as such where the environment may give it."""
    if not value:
        raise click.UsageError("give the shared Redis: --redis URL, or set REDIS_URL")
    return value


def _max_cost(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Decimal | str | None:
    if value is None or value.strip().lower() == NO_CAP:
        return None if value is None else NO_CAP
    try:
        return parse_usd(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}, or none") from None


def parsed_prices(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[PriceOption]:
    """`--price` values (ENDPOINT=USD[/UNIT]), parsed; a bad one is the option's error."""
    try:
        return [parse_price_option(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _prices(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    parsed_prices(ctx, param, values)  # checked now; kept as given, as a batch or a schedule stores them
    return values


price = click.option("--price", "prices", multiple=True, callback=_prices, metavar="ENDPOINT=USD[/UNIT]",
                     help="What an endpoint costs, over fal's prices (repeatable), e.g. for a gateway that resells at "
                          "its own: owner/app=0.04/image; units: image, megapixel, second, request (default: the "
                          "endpoint's own, else request).")  # fmt: skip
max_cost = click.option("--max-cost", callback=_max_cost, metavar="USD",
                        help="Cost cap of the batch, in USD of estimated cost: a job is sent only while everything "
                             "sent so far and it stay within it (retries count); the rest end budget_exceeded. A rerun "
                             "keeps the cap; none removes it.")  # fmt: skip
api_url = click.option("--api-url", envvar="FAL_API_URL",
                       help="fal's Platform API, where prices are read and lost submits looked for (default: "
                            "https://api.fal.ai/v1 with FAL_KEY; none with a gateway), or none.")  # fmt: skip
