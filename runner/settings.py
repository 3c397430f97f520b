"""Settings of the runner, grouped so functions take one object, not thirty arguments."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

from jobs.polling import PollPolicy
from runner.fal.retry import RetryPolicy

MIB = 1024 * 1024
#: Environment variables a worker reads its credential from, by auth scheme.
CREDENTIAL_ENV = {"Key": "FAL_KEY", "Bearer": "WAN_BATCH_GATEWAY_TOKEN"}


class InputSettings(BaseModel):
    """How a job's inputs are checked and prepared before they are sent."""

    #: A local image or data URI above this size is refused (fal slows on large bodies).
    max_image_bytes: int = Field(default=10 * MIB, gt=0)


class WorkerSettings(BaseModel):
    """How a worker talks to fal: retries, polling and download limits."""

    retry: RetryPolicy = RetryPolicy()
    poll: PollPolicy = PollPolicy()
    #: Largest output file accepted.
    max_output_bytes: int = Field(default=256 * MIB, gt=0)
    #: Transient failures of a submit or a download before the job fails.
    max_call_retries: int = Field(default=8, ge=0)
    #: Transient failures of status or result calls before the job fails (about an hour at the
    #: 30 s cap). Never a resubmit: fal may still be running it.
    max_unreachable_calls: int = Field(default=120, ge=0)
    #: A job of an open batch untouched this long is resumed by the sweep; every live poll
    #: chain touches its job at least every 30 s.
    sweep_stale_after_s: float = Field(default=300.0, gt=0)


def credential_from_env(scheme: Literal["Key", "Bearer"]) -> str | None:
    """The credential for `scheme` from the environment, or None; never logged."""
    value = os.environ.get(CREDENTIAL_ENV[scheme], "").strip()
    return value or None
