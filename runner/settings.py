"""Settings of the runner, grouped so functions take one object, not thirty arguments."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.decisions import Limits
from jobs.errors import UsageError
from jobs.polling import PollPolicy
from jobs.reconcile import ReconcilePolicy

MIB = 1024 * 1024
#: Environment variables a worker reads its credential from, by auth scheme.
CREDENTIAL_ENV = {"Key": "FAL_KEY", "Bearer": "WAN_BATCH_GATEWAY_TOKEN"}


class InputSettings(BaseModel):
    """How a job's inputs are checked and prepared before they are sent."""

    #: A local image or data URI above this size is refused (fal slows on large bodies).
    max_image_bytes: int = Field(default=10 * MIB, gt=0)


class TimerSettings(BaseModel):
    """How workers hand out and hold the timers of `runner.ledger.timers`."""

    model_config = ConfigDict(frozen=True)

    #: A dispatcher looks for due timers at least this often (it also wakes for the ones its worker set).
    tick_s: float = Field(default=0.25, gt=0)
    #: A timer sent as a message comes due again after this long unless a worker began it: the
    #: message may have died with a worker that had taken it.
    claim_s: float = Field(default=30.0, gt=0)
    #: A worker running a timer holds it this long, renewed every third of it while it runs: when the
    #: worker dies, another takes the timer over a lease after this one lapsed (a grace for live
    #: workers back from an outage), so within twice this long.
    lease_s: float = Field(default=10.0, gt=0)
    #: Most timers one look claims.
    batch_size: int = Field(default=200, gt=0)


class WorkerSettings(BaseSettings):
    """How a worker talks to fal: budgets and delays of retries, polling, lost submits, timers and downloads.

    Each can be set in the worker's environment, `WAN_BATCH_` then the path with `__` between parts,
    e.g. `WAN_BATCH_RECONCILE__HISTORY_LAG_S=300` (values given in code win).
    """

    model_config = SettingsConfigDict(env_prefix="WAN_BATCH_", env_nested_delimiter="__", extra="ignore")

    limits: Limits = Limits()
    poll: PollPolicy = PollPolicy()
    #: How a submit whose answer was lost is looked for in fal's request history.
    reconcile: ReconcilePolicy = ReconcilePolicy()
    timers: TimerSettings = TimerSettings()
    #: Largest output file accepted.
    max_output_bytes: int = Field(default=256 * MIB, gt=0)
    #: The sweep (`wan-batch beat`) gives a timer back to a job of an open batch unchanged this long
    #: that has none (a safety net: every job that holds a slot has one).
    sweep_stale_after_s: float = Field(default=300.0, gt=0)


def worker_settings(**given: Any) -> WorkerSettings:
    """A worker's settings: `given`, the rest from its environment.

    Raises UsageError naming each variable that does not hold what it must (never its value).
    """
    try:
        return WorkerSettings(**given)
    except ValidationError as exc:
        problems = [f"WAN_BATCH_{'__'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
                    for error in exc.errors(include_url=False, include_input=False, include_context=False)]  # fmt: skip
        raise UsageError("the worker's settings from the environment: " + "; ".join(problems)) from None


def credential_from_env(scheme: Literal["Key", "Bearer"]) -> str | None:
    """The credential for `scheme` from the environment, or None; never logged."""
    value = os.environ.get(CREDENTIAL_ENV[scheme], "").strip()
    return value or None


def keep_days_from_env() -> float | None:
    """`WAN_BATCH_KEEP_DAYS`: how long a scheduled batch's ledger entries are kept after it ended (None: forever).

    Raises ValueError for anything but a number of days >= 0.
    """
    raw = os.environ.get("WAN_BATCH_KEEP_DAYS", "").strip()
    if not raw:
        return None
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not days >= 0:
        raise ValueError(f"WAN_BATCH_KEEP_DAYS must be a number of days >= 0, got {raw[:40]!r}")
    return days
