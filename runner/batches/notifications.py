"""Notifications: POSTing what became of a batch (or a schedule's firing) as JSON to the URL a user gave.

One try is `post_notice`, whoever sends it: a worker, whose next try is a
timer in Redis (`notify_try`: a schedule's firing, a submitted batch's end,
`notify_batch`), or `wan-batch run` at its end, which waits for a few tries
(`notify_now`). A notify URL is shown only as its scheme and host
(`shown_notify_url`): its path or query often holds a webhook's token, so
neither goes into a log line, a payload, a report or an error message.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from jobs.backoff import Backoff, backoff_delay_s
from jobs.errors import UsageError
from runner.ledger.batch_info import BatchInfo
from runner.steps.context import Context

log = logging.getLogger(__name__)
_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NotifyPolicy:
    """How many tries a notification gets, and how long apart."""

    tries: int
    backoff: Backoff


#: A worker's: 5 tries, 5 s, 15 s, 45 s and 135 s apart, each next one a timer in Redis.
WORKER_NOTIFY = NotifyPolicy(tries=5, backoff=Backoff(base_s=5.0, factor=3.0, cap_s=300.0, jitter=0.0))
#: `wan-batch run`'s, which waits for them as it ends: 3 tries, 1 s and 2 s apart.
RUN_NOTIFY = NotifyPolicy(tries=3, backoff=Backoff(base_s=1.0, factor=2.0, cap_s=5.0, jitter=0.0))


@dataclass(frozen=True)
class Notice:
    """What to POST where, and what the log lines call it."""

    url: str
    payload: dict[str, Any]
    #: Who sends it, as logged: "schedule nightly", "batch night".
    sender: str
    #: What it is about, as logged: "firing nightly-2026-12-01T0200", "its end".
    subject: str


@dataclass(frozen=True)
class Delivery:
    """What one try of a notification got."""

    delivered: bool
    #: What the URL answered ("HTTP 503"), or why nothing did (naming the URL by its host only).
    answer: str
    #: Tries made so far, this one included.
    tries: int
    #: Seconds before the next try; None: none is needed, or none is left.
    retry_in_s: float | None

    @property
    def shown(self) -> str:
        """How it went, to show: "sent (HTTP 200)", "failed after 5 tries (HTTP 503)"."""
        return f"{'sent' if self.delivered else f'failed after {self.tries} tries'} ({self.answer})"


def check_notify_url(url: str | None, option: str = "--notify") -> None:
    """Raise UsageError (without the URL, which may hold a token) unless `url` is None or an http(s) URL."""
    if url is None:
        return
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port out of range, a broken IPv6 host
        valid = False
    if not valid:
        raise UsageError(f"{option}: give an http(s) URL")


def shown_notify_url(url: str) -> str:
    """A notify URL as it may be shown: scheme and host only (its path or query may hold a token)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}/…"


def post_notice(http: httpx.Client, notice: Notice, tries: int, policy: NotifyPolicy) -> Delivery:
    """POST the notice once, as try `tries` + 1 of the policy's; logs the try at info, naming the URL's host only.

    Never raises for what the URL answers or fails to: a Delivery says it.
    """
    logging.getLogger("httpx").addFilter(_HIDE_NOTIFY_URL)  # once: a filter already there is not added again
    hidden = _hidden_url.set(str(httpx.URL(notice.url)))
    try:
        response = http.post(notice.url, json=notice.payload, timeout=_TIMEOUT_S, follow_redirects=False)
        answer, delivered = f"HTTP {response.status_code}", response.is_success
    except httpx.HTTPError as exc:  # its message quotes the URL
        answer, delivered = f"{type(exc).__name__} from {shown_notify_url(notice.url)}", False
    finally:
        _hidden_url.reset(hidden)
    log.info("%s: notifying %s of %s, try %d of %d: %s", notice.sender, httpx.URL(notice.url).host, notice.subject,
             tries + 1, policy.tries, answer)  # fmt: skip
    retry_in_s = None
    if not delivered and tries + 1 < policy.tries:
        retry_in_s = backoff_delay_s(tries + 1, policy.backoff, 0.0)
    return Delivery(delivered, answer, tries + 1, retry_in_s)


def notify_try(http: httpx.Client, notice: Notice, tries: int) -> Delivery:
    """A worker's try `tries` + 1 of a notification (its next is the caller's timer); the last failed one is
    logged as a warning."""
    delivery = post_notice(http, notice, tries, WORKER_NOTIFY)
    if not delivery.delivered and delivery.retry_in_s is None:
        log.warning("%s: notifying %s of %s failed: %s", notice.sender, shown_notify_url(notice.url), notice.subject,
                    delivery.shown)  # fmt: skip
    return delivery


def notify_now(http: httpx.Client, notice: Notice, policy: NotifyPolicy = RUN_NOTIFY) -> Delivery:
    """Try the notification until it is delivered or its tries run out, waiting between them; the last try."""
    tries = 0
    while True:
        delivery = post_notice(http, notice, tries, policy)
        if delivery.retry_in_s is None:
            return delivery
        time.sleep(delivery.retry_in_s)
        tries += 1


def batch_notice(info: BatchInfo, summary: dict[str, Any], url: str) -> Notice:
    """What an ended batch's notify URL is sent: its id, state, start and end (Unix seconds), and `summary`
    (its report's summary with the report's paths)."""
    payload = {"batch_id": info.id, "state": info.state, "started_at": info.created_at, "ended_at": info.ended_at,
               **summary}  # fmt: skip
    return Notice(url, payload, f"batch {info.id}", "its end")


def notify_batch(ctx: Context, batch_id: str, tries: int) -> float | None:
    """A worker's try at POSTing an ended batch's summary to its notify URL; the delay before trying again, or None.

    A batch gone (purged), or without a notify URL or a stored summary, is not notified.
    """
    info = ctx.ledger.batch(batch_id)
    if info is None or info.notify is None or info.summary is None:
        return None
    return notify_try(ctx.http, batch_notice(info, info.summary, info.notify), tries).retry_in_s


#: The notify URL being called in this thread: httpx's request log shows it only as its host.
_hidden_url: ContextVar[str | None] = ContextVar("hidden_url", default=None)


class _HideNotifyUrl(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        url = _hidden_url.get()
        if url is not None and isinstance(record.args, tuple):
            record.args = tuple(shown_notify_url(url) if str(arg) == url else arg for arg in record.args)
        return True


_HIDE_NOTIFY_URL = _HideNotifyUrl()
