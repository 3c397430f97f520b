"""fal's webhooks, as pure rules: what a delivery's signature covers, and when its timestamp is too far off.

fal signs `request_id\nuser_id\ntimestamp\nsha256hex(body)` with Ed25519 (the check itself, against fal's
published keys, is `runner.fal.webhooks`). A delivery is never trusted for what it says a request produced:
it only says which request to look at now.
"""

from __future__ import annotations

import hashlib

#: A delivery whose timestamp is further than this from the receiver's clock is refused (a replay).
TIMESTAMP_TOLERANCE_S = 300.0


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes fal's signature is over."""
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def timestamp_problem(timestamp: str, now: float, tolerance_s: float = TIMESTAMP_TOLERANCE_S) -> str | None:
    """Why a delivery's `X-Fal-Webhook-Timestamp` (Unix seconds) is refused at `now`; None when it is fresh."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return "its timestamp is not a number of seconds"
    if abs(now - stamp) > tolerance_s:
        return f"its timestamp is {abs(now - stamp):.0f} s off this machine's clock (at most {tolerance_s:g} s)"
    return None
