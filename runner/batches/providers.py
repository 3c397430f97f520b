"""Where a batch's requests go: the provider and its credential from the environment, and URLs as checked and shown.

Credentials come only from the environment and go only to their own hosts;
a URL is never shown with what may be a password or a token in it.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from jobs.errors import UsageError
from runner.batches.request import RunRequest
from runner.fal.history import NO_API, api_url_for
from runner.fal.providers import FAL_QUEUE_URL, WORKERS_CREDENTIAL, Provider
from runner.ledger.batch_info import BatchInfo
from runner.settings import CREDENTIAL_ENV, credential_from_env
from runner.simulator.config import SimConfig


def provider_for(request: RunRequest, credential_needed: bool = True) -> Provider:
    """The queue a run without `--sim` sends to, with its credential from the environment.

    A gateway token (WAN_BATCH_GATEWAY_TOKEN) is used only with `base_url`;
    otherwise FAL_KEY. Without `credential_needed` (a batch only recorded for
    workers, which hold their own), a shell with neither records a fal-key
    batch. Raises UsageError when no credential fits, or when `base_url` is
    not a plain http(s) URL; the message never shows the URL, which may hold
    a password.
    """
    token, fal_key = credential_from_env("Bearer"), credential_from_env("Key")
    if not (credential_needed or token or fal_key):
        if request.base_url is not None:  # fal's queue elsewhere, or a gateway: the credential would go there
            raise UsageError("with --base-url, say whose queue it is: set FAL_KEY, or WAN_BATCH_GATEWAY_TOKEN for a"
                             " gateway, in this shell (only which one is set is kept, never its value)")
        fal_key = WORKERS_CREDENTIAL
    if request.base_url is not None and token:
        scheme: Literal["Key", "Bearer"] = "Bearer"
        credential, base_url = token, request.base_url
    elif fal_key:
        scheme, credential, base_url = "Key", fal_key, request.base_url or FAL_QUEUE_URL
    elif token:
        raise UsageError("WAN_BATCH_GATEWAY_TOKEN needs --base-url (the gateway's queue URL); or set FAL_KEY for fal")
    else:
        raise UsageError(
            "no credential: set FAL_KEY (or WAN_BATCH_GATEWAY_TOKEN with --base-url), or try it with --sim"
        )
    try:
        provider = Provider(base_url=base_url, auth_scheme=scheme, credential=credential)
        port_ok = urlsplit(provider.base_url).port != 0
    except ValidationError as exc:
        raise UsageError(_describe_invalid(exc, scheme)) from None
    except ValueError:  # urllib's complaint about the port quotes the URL
        port_ok = False
    if not port_ok:
        raise UsageError("--base-url: its port is not a number from 1 to 65535")
    return provider


def api_url_of(request: RunRequest, provider: Provider) -> str:
    """The request history URL a batch stores: `--api-url` as checked, else fal's own for a fal key, else
    "none" (a gateway has no history unless given). Raises UsageError for a URL that is not plain http(s)."""
    given = (request.api_url or "").strip() or None
    if given is None:
        return api_url_for(None, provider.auth_scheme) or NO_API
    if given.lower() == NO_API:
        return NO_API
    checked = _plain_url(given)
    if checked is None:
        raise UsageError("--api-url: give a plain http(s) URL, or none (credentials go in the environment)")
    return checked


def check_storage_url(request: RunRequest) -> None:
    """Raise UsageError unless `--storage-url` is unset or a plain http(s) URL (never shown: it may hold a password)."""
    if request.storage_url is not None and _plain_url(request.storage_url) is None:
        raise UsageError("--storage-url: give a plain http(s) URL (credentials go in the environment)")


def _plain_url(url: str) -> str | None:
    """`url` as a queue's base URL is kept, if it is a plain http(s) URL (no user info, query or fragment, a
    port that is a port); else None."""
    try:
        checked = Provider(base_url=url, auth_scheme="Key", credential="checked-here").base_url
        return checked if urlsplit(checked).port != 0 else None
    except (ValidationError, ValueError):  # urllib's complaint about a port quotes the URL
        return None


def _describe_invalid(exc: ValidationError, scheme: Literal["Key", "Bearer"]) -> str:
    """pydantic's complaint without the value it refused (a URL with a password, a credential)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        what = "--base-url" if error["loc"] == ("base_url",) else CREDENTIAL_ENV[scheme]
        problems.append(f"{what}: {error['msg'].removeprefix('Value error, ')}")
    hint = " (credentials go in FAL_KEY or WAN_BATCH_GATEWAY_TOKEN, never in the URL)"
    return "; ".join(problems) + hint


def check_same_provider(existing: BatchInfo, provider: Provider, sim: bool) -> None:
    """Raise UsageError unless a rerun of `existing` goes to the provider that holds its requests.

    A `--sim` rerun of a simulator batch passes: the simulator's port changes
    every run. The message names URLs and credential variables, never a credential.
    """
    if not existing.provider_url:
        return
    if sim and is_sim_url(existing.provider_url):
        return
    if (existing.provider_url.rstrip("/"), existing.auth_scheme) == (provider.base_url, provider.auth_scheme):
        return
    was = f"{shown_url(existing.provider_url)} ({CREDENTIAL_ENV[existing.auth_scheme]})"
    now = "the simulator (--sim)" if sim else f"{provider.base_url} ({CREDENTIAL_ENV[provider.auth_scheme]})"
    hint = "; rerun it with --sim" if is_sim_url(existing.provider_url) and not sim else ""
    raise UsageError(
        f"batch {existing.id!r} was sent to {was}; its requests cannot be followed at {now}{hint}"
        " (or pass --batch-id or another --out to start a new batch)"
    )


def is_sim_url(url: str) -> bool:
    """Whether `url` looks like the address of a `--sim` run's simulator."""
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname == SimConfig().host


def shown_url(url: str) -> str:
    """`url` without user info, query or fragment (where passwords and tokens go); never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that cannot be read)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
