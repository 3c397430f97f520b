"""`wan-batch sim`: a simulator of fal's queue on this machine, for trying the runner and for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from runner.cli.options import parsed_prices
from runner.simulator import FaultRates, SimConfig, parse_run_time, serve_until_interrupted
from runner.simulator.config import SIM_CONCURRENCY, sim_prices

#: What each fault does, as its flag's help says.
_FAULT_HELP = {
    "proxy_5xx": "a proxy's 502/503/504 with an HTML page, on any queue call",
    "rate_limit_429": "a 429 with Retry-After, on any queue call",
    "drop_connection": "the connection closes before the call does anything, on any queue call",
    "lost_submit_response": "a submit creates its request, then its answer is lost",
    "model_error": "the model fails: the result answers 500 runner_server_error",
    "expired_result": "a finished result answers 404, as if it had expired",
    "truncated_download": "an output file is cut short of its Content-Length",
    "slow_download": "an output file dribbles in with pauses",
    "upload_5xx": "an upload to fal storage answers a proxy's 503",
    "webhook_drop": "a request's webhook is never delivered",
    "webhook_duplicate": "a request's webhook is delivered twice",
}
#: The `--fault-*` flag of each FaultRates field.
_FAULT_FLAGS = {
    "proxy_5xx": "--fault-proxy-5xx",
    "rate_limit_429": "--fault-429",
    "drop_connection": "--fault-drop-connection",
    "lost_submit_response": "--fault-lost-submit-response",
    "model_error": "--fault-model-error",
    "expired_result": "--fault-expired-result",
    "truncated_download": "--fault-truncated-download",
    "slow_download": "--fault-slow-download",
    "upload_5xx": "--fault-upload-5xx",
    "webhook_drop": "--fault-webhook-drop",
    "webhook_duplicate": "--fault-webhook-duplicate",
}
_SIM_DEFAULTS = SimConfig()


def _fault_options(command: Callable[..., None]) -> Callable[..., None]:
    for name, flag in reversed(_FAULT_FLAGS.items()):
        help_text = f"Rate 0..1 of calls where {_FAULT_HELP[name]}."
        command = click.option(flag, name, type=click.FloatRange(0, 1), default=0.0, help=help_text)(command)
    return command


def check_run_time(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_run_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.option("--host", default=_SIM_DEFAULTS.host, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 picks a free port.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=SIM_CONCURRENCY,
    show_default=True,
    help="Requests IN_PROGRESS at once; the rest wait IN_QUEUE.",
)
@click.option(
    "--run-time",
    default=_SIM_DEFAULTS.run_time,
    show_default=True,
    callback=check_run_time,
    help="Seconds per request: fixed:S, uniform:A,B or lognormal:MEAN,SIGMA.",
)
@click.option("--seed", type=int, default=_SIM_DEFAULTS.seed, show_default=True,
              help="Seeds run times, output seeds and faults: the same seed, the same simulation.")
@click.option(
    "--retention-s",
    type=click.FloatRange(min=0, min_open=True),
    default=_SIM_DEFAULTS.retention_s,
    show_default=True,
    help="A result answers 404 this long after completion.",
)
@click.option(
    "--history-lag-s",
    type=click.FloatRange(min=0),
    default=_SIM_DEFAULTS.history_lag_s,
    show_default=True,
    help="A finished request shows in the request history this long after completion.",
)
@click.option(
    "--submit-latency-s",
    type=click.FloatRange(min=0),
    default=_SIM_DEFAULTS.submit_latency_s,
    show_default=True,
    help="A submit's answer comes this long after its request was created.",
)
@click.option(
    "--key",
    envvar="WAN_BATCH_SIM_KEY",
    help="Accept only 'Key <KEY>' (also read from WAN_BATCH_SIM_KEY; FAL_KEY is ignored). Default: any key.",
)
@click.option(
    "--token", envvar="WAN_BATCH_SIM_TOKEN", help="Accept only 'Bearer <TOKEN>' (also read from WAN_BATCH_SIM_TOKEN)."
)
@click.option(
    "--fetch-inputs",
    type=click.Choice(["local", "all", "none"]),
    default=_SIM_DEFAULTS.fetch_inputs,
    show_default=True,
    help="Which http(s) input images to fetch, failing a request (422) whose image cannot be read, as fal "
    "does: 'local' those on 127.0.0.1/localhost/::1 (others are assumed readable), 'all', or 'none'. "
    "data: URIs are always decoded.",
)
@click.option("--storage-mb", type=click.FloatRange(min=0, min_open=True), default=_SIM_DEFAULTS.storage_mb,
              show_default=True, help="Uploaded files held in memory until they expire; past it an upload answers"
                                      " 507.")  # fmt: skip
@click.option("--price", "prices", multiple=True, callback=parsed_prices, metavar="ENDPOINT=USD[/UNIT]",
              help="Price an endpoint in the pricing API (repeatable), e.g. owner/app=0.04/megapixel; units: image "
                   "(the default), megapixel, second, request.")  # fmt: skip
@_fault_options
@click.option("--fault-limit", type=click.IntRange(min=0), help="Stop injecting each fault kind after N injections.")
@click.option("--retry-after-s", type=click.FloatRange(min=0), default=_SIM_DEFAULTS.retry_after_s, show_default=True,
              help="Retry-After of an injected 429.")  # fmt: skip
def sim(**options: Any) -> None:
    """Serve a simulated fal queue until Ctrl-C; prints its base URL on stdout.

    Point the runner at the printed URL. GET <url>/_stats shows what it saw.
    The Platform API's request history is at <url>/v1/models/requests/by-endpoint,
    its prices at <url>/v1/models/pricing (and estimates at .../pricing/estimate),
    and fal storage's token endpoint at <url>/storage/auth/token.
    """
    faults = {name: options.pop(name) for name in _FAULT_FLAGS}
    prices = sim_prices(options.pop("prices"))
    config = SimConfig(**options, faults=FaultRates(**faults), prices=prices)
    auth = "Key or Bearer as configured" if config.key or config.token else "any Key or Bearer credential"

    def announce(base_url: str) -> None:
        click.echo(base_url)
        click.echo(f"fal queue simulator: concurrency {config.concurrency}, run time {config.run_time}, "
                   f"auth: {auth}, input images fetched: {config.fetch_inputs}, "
                   f"prices: {len(config.prices)} endpoint(s); Ctrl-C stops it",
                   err=True)  # fmt: skip

    serve_until_interrupted(config, announce)
