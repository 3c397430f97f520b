"""`wan-batch serve`, and the `--serve` of `wan-batch run`: the dashboard, its JSON API and `/metrics`."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click
import httpx

from runner.batches.request import RunRequest
from runner.cli import options
from runner.fal.webhooks import FAL_JWKS_URL, WebhookVerifier
from runner.ledger.store import Ledger
from runner.web.access import TOKEN_ENV, Access
from runner.web.app import create_app
from runner.web.serving import bind, parse_listen, serve_forever, serving_in_background, url_of
from runner.web.source import LedgerSource

#: What `run --serve` enters with the run's ledger and request.
Serving = Callable[[Ledger, RunRequest], AbstractContextManager[object]]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help=f"Where to listen; beyond this machine (e.g. 0.0.0.0) every page needs {TOKEN_ENV}.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free one.")
@click.option("--redis", "redis_url", envvar="REDIS_URL", help="The shared Redis (or REDIS_URL).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True,
              help="Output folder of `wan-batch run` (without --redis).")
@click.option("--allow-actions", is_flag=True, help=f"Show cancel and retry buttons, for whoever holds {TOKEN_ENV}.")
@click.option("--access-log", is_flag=True, help="Log every request (pages ask for updates every 1.5 s).")
@options.jwks_url
def serve(host: str, port: int, redis_url: str | None, out: Path, allow_actions: bool, access_log: bool,
          jwks_url: str | None) -> None:  # fmt: skip
    """Serve a dashboard of the batches: their progress live, failures, outputs so far, and /metrics.

    Read-only unless --allow-actions. Pages refresh themselves; the same data is JSON under /api/.
    fal's webhooks are received at /fal/webhook (checked by their signature; see --webhook-url). Stops on Ctrl-C.
    """
    access = Access.for_host(host, os.environ.get(TOKEN_ENV), allow_actions)
    source = LedgerSource.open(redis_url, out)
    try:
        source.read(lambda ledger: ledger.redis.ping())  # an unreachable Redis is said now, not on each page
        sock = bind(host, port)
        click.echo(f"serving {source.where} at {url_of(sock)}/ (metrics at /metrics); Ctrl-C stops", err=True)
        # uvicorn finishes the requests under way on SIGTERM, then raises it again: here, so this cleans up.
        signal.signal(signal.SIGTERM, _terminated)
        if allow_actions and redis_url is None:
            click.echo(f"cancel and retry in {out} are carried out by the `wan-batch run` in it: now if one runs, else"
                       " when it is run again", err=True)  # fmt: skip
        with httpx.Client() as http:
            webhooks = WebhookVerifier(http, jwks_url or FAL_JWKS_URL)
            serve_forever(create_app(source, access, webhooks), sock, access_log)
    finally:
        source.close()


def _terminated(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(143)


def served_run(listen: str | None, say: Callable[[str], None]) -> tuple[Serving, str | None]:
    """What `run --serve [HOST:]PORT` does with its ledger: serve it while it runs (with fal's webhooks, checked
    with the keys at the run's `jwks_url`), and the URL it serves at.

    Checks the address and binds it at once, before the run starts (raises UsageError).
    """
    if listen is None:
        return _nothing, None
    host, port = parse_listen(listen)
    access = Access.for_host(host, os.environ.get(TOKEN_ENV), allow_actions=False)
    sock = bind(host, port)
    url = url_of(sock)

    @contextmanager
    def serving(ledger: Ledger, request: RunRequest) -> Iterator[object]:
        with httpx.Client() as http:
            webhooks = WebhookVerifier(http, request.jwks_url or FAL_JWKS_URL)
            app = create_app(LedgerSource(ledger, "this run"), access, webhooks)
            with serving_in_background(app, sock):
                say(f"dashboard: {url}/")
                yield url

    return serving, url


@contextmanager
def _nothing(_ledger: Ledger, _request: RunRequest) -> Iterator[object]:
    yield None
