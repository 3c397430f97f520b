"""A submit whose answer was lost: how it is found in fal's request history, and when not finding it proves it absent.

fal has no idempotency key, so a submit whose answer is lost may or may not
have queued a request. fal's request history lists an endpoint's requests with
the input each was sent (`expand=payloads`). The lost submit is the listed
request whose input has the digest of the body the job sent (`input_digest`),
sent no earlier than it (give or take the clocks' skew) and held by no job of
this ledger (`pick`).

The history lists only finished requests, after a lag (both *unconfirmed*; a
request listed while it runs is found all the same). So "not listed" proves
nothing until the request could no longer be pending at fal: after the
latest time it can have reached fal, its start deadline
(`X-Fal-Request-Timeout`, which every submit carries), the longest run seen
and the history's lag (`absent_after`). `settle` says what a look at the history leads to. A proof
of absence also needs the history to list inputs as they were sent: the
runner checks that on a request of the batch it knows before it trusts one.
Only then is the job submitted again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.job import canonical_json

#: Hex digits of an input's digest kept (128 bits): short enough for Redis to pack the job's hash.
DIGEST_HEX = 32
#: The start deadline of a submit, by priority, when the user gives none: a low-priority request may
#: wait longer for a runner. fal gives up on a request not started by then (a 504, submitted again).
DEFAULT_START_TIMEOUT_S: dict[str, float] = {"normal": 900.0, "low": 3600.0}


def start_timeout_s(priority: Literal["normal", "low"] | None, given: float | None) -> float:
    """The start deadline a submit carries: the user's, else the default of its priority."""
    return given if given is not None else DEFAULT_START_TIMEOUT_S[priority or "normal"]


def input_digest(body: Any) -> str:
    """The digest of a submit's JSON body as fal would list it: key order, spacing and `1.0` vs `1` aside."""
    canonical = canonical_json(_plain_numbers(body))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:DIGEST_HEX]


def _plain_numbers(value: Any) -> Any:
    """`value` with every float that is a whole number as an int (another JSON writer may drop the `.0`)."""
    if isinstance(value, dict):
        return {key: _plain_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class ReconcilePolicy(BaseModel):
    """How long a lost submit is looked for, and what proves it absent."""

    model_config = ConfigDict(frozen=True)

    #: How long after a request finished fal's history may still not list it (*unconfirmed*: assumed).
    history_lag_s: float = Field(default=120.0, ge=0)
    #: How far this machine's clock may be from fal's: the history is searched from the submit's time
    #: minus this, and the proof of absence waits this much longer.
    clock_skew_s: float = Field(default=60.0, ge=0)
    #: The longest run assumed while the batch has not seen one finish.
    unknown_run_s: float = Field(default=600.0, gt=0)
    #: The longest run seen is stretched by this: a run may take longer than any seen so far.
    run_margin: float = Field(default=1.5, ge=1)
    #: Looks at the history are spaced by a quarter of the time since the submit, within these bounds.
    first_look_s: float = Field(default=2.0, gt=0)
    most_between_looks_s: float = Field(default=60.0, gt=0)
    #: Requests a page of the history holds, and pages one look reads at most: a look cut short proves
    #: nothing and is made again.
    page_size: int = Field(default=100, ge=1, le=100)
    pages_per_look: int = Field(default=50, gt=0)
    #: Looks past the deadline that prove nothing (cut short, or no request to check the history on) before
    #: the job is left to a person: about an hour at the widest spacing.
    inconclusive_looks: int = Field(default=60, ge=0)


def absent_after(reached_by: float, start_deadline_s: float, longest_run_s: float | None,
                 policy: ReconcilePolicy) -> float:  # fmt: skip
    """When a request that fal's history does not list can no longer be pending at fal, if it reached fal by
    `reached_by` (when its submit failed, or would have timed out)."""
    run_s = (longest_run_s if longest_run_s is not None else policy.unknown_run_s) * policy.run_margin
    return reached_by + start_deadline_s + run_s + policy.history_lag_s + policy.clock_skew_s


def next_look_s(now: float, sent_at: float, deadline: float, policy: ReconcilePolicy) -> float:
    """Seconds until the next look: sparser as the wait grows, and never past the deadline."""
    spacing = min(max((now - sent_at) / 4, policy.first_look_s), policy.most_between_looks_s)
    return max(0.0, min(spacing, deadline - now)) if now < deadline else spacing


@dataclass(frozen=True)
class Adopt:
    """fal has the lost submit: the job follows `request_id`."""

    request_id: str


@dataclass(frozen=True)
class LookAgain:
    """Nothing is settled yet: look again in `delay_s`; `inconclusive` counts a look past the deadline."""

    delay_s: float
    inconclusive: bool = False


@dataclass(frozen=True)
class Absent:
    """fal never had it, if the history lists inputs as they were sent (checked before the job is sent again)."""


@dataclass(frozen=True)
class Unsettled:
    """The history cannot tell: the job is left to a person."""

    message: str


Settled = Adopt | LookAgain | Absent | Unsettled


def settle(found: str | None, complete: bool, blind: int, looked_at: float, sent_at: float, deadline: float,
           inconclusive: int, policy: ReconcilePolicy) -> Settled:  # fmt: skip
    """What a look at the history that began at `looked_at` leads to.

    `found`: the request it matched; `complete`: it read every page; `blind`:
    requests it saw listed without their input; `inconclusive`: looks past the
    deadline that proved nothing so far.
    """
    if found is not None:
        return Adopt(found)
    if looked_at < deadline:  # a look that began before the deadline proves nothing, whatever it read
        return LookAgain(next_look_s(looked_at, sent_at, deadline, policy))
    if not complete:
        if inconclusive >= policy.inconclusive_looks:
            return Unsettled(f"fal's request history lists more requests than {policy.inconclusive_looks} looks"
                             " could read")  # fmt: skip
        return LookAgain(policy.most_between_looks_s, inconclusive=True)
    if blind:
        return Unsettled(f"fal's request history lists {blind} request(s) without the input they were sent"
                         " (payloads not stored), so it cannot tell")  # fmt: skip
    return Absent()


@dataclass(frozen=True)
class HistoryItem:
    """One request as fal's history lists it."""

    request_id: str
    endpoint_id: str
    #: `input_digest` of the input it was sent (None without payloads).
    input_digest: str | None
    #: When it was sent, as Unix seconds (None when the history did not say).
    sent_at: float | None
    status_code: int | None = None


def pick(items: Iterable[HistoryItem], digest: str, sent_at: float, taken: Callable[[str], bool],
         skew_s: float) -> HistoryItem | None:  # fmt: skip
    """The request that is the lost submit of a job that sent `digest` at `sent_at`, or None.

    Of the requests with that input, sent no earlier than the job's submit
    (within `skew_s`), and not `taken` (held by a job, this one's earlier
    attempts included), the earliest sent.
    """
    found = [
        item for item in items
        if item.input_digest == digest and (item.sent_at is None or item.sent_at >= sent_at - skew_s)
    ]  # fmt: skip
    found.sort(key=lambda item: (item.sent_at is None, item.sent_at or 0.0, item.request_id))
    return next((item for item in found if not taken(item.request_id)), None)
