"""What a step needs (the ledger, an HTTP client, a queue client per provider, settings), built in one place."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from jobs.errors import AuthError
from jobs.reconcile import start_timeout_s
from runner.fal.history import HistoryClient, api_url_for
from runner.fal.providers import Provider
from runner.fal.queue_api import CallObserver, QueueClient, QueueOptions
from runner.ledger.batch_info import BatchInfo
from runner.ledger.connection import redis_client
from runner.ledger.metrics import Metrics
from runner.ledger.store import Ledger
from runner.ledger.timers import Timers
from runner.settings import CREDENTIAL_ENV, WorkerSettings, credential_from_env, worker_settings

#: Where a process finds the credential of an auth scheme (None: it has none).
CredentialSource = Callable[[Literal["Key", "Bearer"]], str | None]


@dataclass
class Context:
    """What a step needs, built once per worker process."""

    ledger: Ledger
    http: httpx.Client
    #: The queue client of a batch's provider (credentials come from the worker's side).
    queue_client: Callable[[BatchInfo], QueueClient]
    #: The client of a batch's request history; None when the batch has none to look in.
    history_client: Callable[[BatchInfo], HistoryClient | None]
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    timers: Timers = field(init=False)
    #: What `/metrics` shows: counted by the steps and by the clients' calls to fal.
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.timers = Timers(self.ledger.redis, self.ledger.keys)
        self.metrics = Metrics(self.ledger.redis, self.ledger.keys)


def make_context(
    ledger: Ledger,
    http: httpx.Client,
    credential: CredentialSource = credential_from_env,
    settings: WorkerSettings | None = None,
    api_url: str | None = None,
) -> Context:
    """A context whose clients take their credential from `credential` (the environment by default).

    `api_url`: where the request history of a batch that stored no API URL is read (see `api_url_for`).
    """
    metrics = Metrics(ledger.redis, ledger.keys)
    on_call = counted_calls(metrics)
    ctx = Context(ledger, http, queue_clients(http, credential, on_call),
                  history_clients(http, credential, api_url, on_call), settings or worker_settings())  # fmt: skip
    ctx.metrics = metrics  # the one that holds the calls counted for later
    return ctx


def counted_calls(metrics: Metrics) -> CallObserver:
    """Counts each call to fal by kind and answer (`fal_calls` in `/metrics`), in memory: written with the next move,
    never between fal's answer and the move that stores it."""

    def on_call(call: str, code: str) -> None:
        metrics.count_later("fal_calls", {"call": call, "code": code})

    return on_call


def context_from_env(redis_url: str, settings: WorkerSettings | None = None, api_url: str | None = None) -> Context:
    """A worker's context from its environment: the ledger's Redis and its own credentials."""
    http = httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0), follow_redirects=False)
    return make_context(Ledger(redis_client(redis_url)), http, credential_from_env, settings, api_url)


def queue_clients(
    http: httpx.Client, credential: CredentialSource, on_call: CallObserver | None = None
) -> Callable[[BatchInfo], QueueClient]:
    """A cached QueueClient per provider and options; the credential comes from this side."""
    cache: dict[tuple[Any, ...], QueueClient] = {}
    lock = threading.Lock()

    def client_for(batch: BatchInfo) -> QueueClient:
        key = (batch.provider_url, batch.auth_scheme, batch.priority, batch.start_timeout_s)
        with lock:
            if key not in cache:
                provider = _provider(batch.provider_url, batch.auth_scheme, credential)
                options = QueueOptions(priority=batch.priority,
                                       start_timeout_s=start_timeout_s(batch.priority, batch.start_timeout_s))
                cache[key] = QueueClient(http, provider, options, on_call)
            return cache[key]

    return client_for


def history_clients(
    http: httpx.Client, credential: CredentialSource, fallback_api_url: str | None, on_call: CallObserver | None = None
) -> Callable[[BatchInfo], HistoryClient | None]:
    """A cached HistoryClient per API URL; None for a batch with no request history to look in."""
    cache: dict[tuple[str, str], HistoryClient] = {}
    lock = threading.Lock()

    def client_for(batch: BatchInfo) -> HistoryClient | None:
        api_url = api_url_for(batch.api_url, batch.auth_scheme, fallback_api_url)
        if api_url is None:
            return None
        key = (api_url, batch.auth_scheme)
        with lock:
            if key not in cache:
                cache[key] = HistoryClient(http, _provider(api_url, batch.auth_scheme, credential), on_call=on_call)
            return cache[key]

    return client_for


def _provider(base_url: str, scheme: Literal["Key", "Bearer"], credential: CredentialSource) -> Provider:
    secret = credential(scheme)
    if secret is None:
        raise AuthError(f"this worker has no {CREDENTIAL_ENV[scheme]} in its environment")
    return Provider(base_url=base_url, auth_scheme=scheme, credential=SecretStr(secret))
