"""The one backoff: how long to wait before trying something again. Pure numbers in, a delay out.

Every retry of the project waits by `backoff_delay_s`, each with its own
`Backoff`: a call to fal that failed in passing (fal_client's numbers), a step
that blew up, a result that was not ready yet, a notification that did not
get through.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Backoff(BaseModel):
    """Capped exponential delays with jitter; the defaults are fal_client's for its calls."""

    model_config = ConfigDict(frozen=True)

    #: Delay before the first retry.
    base_s: float = Field(default=0.1, gt=0)
    #: Each further retry waits this many times longer.
    factor: float = Field(default=2.0, ge=1)
    #: Ceiling of a delay.
    cap_s: float = Field(default=30.0, gt=0)
    #: A delay is stretched by a factor drawn from U(1 - jitter, 1 + jitter), then capped again.
    jitter: float = Field(default=0.5, ge=0, lt=1)
    #: Ceiling of a server's `Retry-After`, so a bad header cannot stall a batch.
    retry_after_cap_s: float = Field(default=120.0, ge=0)


def backoff_delay_s(retry: int, policy: Backoff, rand: float, server_s: float | None = None) -> float:
    """Seconds before retry number `retry` (1 = the first); `rand` in [0, 1) draws the jitter.

    The server's `Retry-After` (`server_s`) wins when given, capped by
    `policy.retry_after_cap_s`; else `base_s * factor**(retry - 1)`, capped,
    jittered, capped again.
    """
    if server_s is not None:
        return min(max(0.0, server_s), policy.retry_after_cap_s)
    exponent = max(0, retry - 1)
    try:
        delay_s = min(policy.base_s * policy.factor**exponent, policy.cap_s)
    except OverflowError:
        delay_s = policy.cap_s
    stretch = 1.0 - policy.jitter + 2.0 * policy.jitter * rand
    return min(delay_s * stretch, policy.cap_s)
