"""Checking that a webhook delivery is fal's: its Ed25519 signature against fal's published keys (JWKS).

The keys are fetched from `--jwks-url` (FAL_JWKS_URL; fal's by default), kept for a day at most, and
fetched again early when no key verifies a delivery (fal rotated its keys); a fetch is tried at most once a
minute, failed or not, so that forged deliveries cannot make this fetch them in a loop, and a failed one keeps
the keys it would have replaced.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jobs.errors import WebhookRejected
from jobs.webhooks import signed_message, timestamp_problem

log = logging.getLogger(__name__)
#: Where fal publishes its webhook keys (the URL public implementations use).
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
#: Keys are fetched again after this long, whatever happens.
KEYS_MAX_AGE_S = 24 * 3600.0
#: ... and early, when none verifies a delivery, at most this often.
REFETCH_EVERY_S = 60.0
_HEADERS = ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp",
            "x-fal-webhook-signature")  # fmt: skip


class WebhookVerifier:
    """Verifies deliveries; thread-safe."""

    def __init__(self, http: httpx.Client, jwks_url: str, clock: Callable[[], float] = time.time) -> None:
        self.jwks_url = jwks_url
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at: float | None = None
        self._tried_at: float | None = None

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The request_id of a delivery that is fal's and fresh; raises WebhookRejected (400, 401, or 503 when
        fal's keys cannot be fetched: fal then delivers again later)."""
        values = [headers.get(name, "") for name in _HEADERS]
        if not all(values):
            raise WebhookRejected(f"not a fal webhook: no {_HEADERS[values.index('')]} header", 400)
        request_id, user_id, stamp, signature = values
        now = self._clock()
        problem = timestamp_problem(stamp, now)
        if problem is not None:
            raise WebhookRejected(f"delivery for {request_id!r} refused: {problem}")
        try:
            signed = bytes.fromhex(signature)
        except ValueError:
            raise WebhookRejected("delivery refused: its signature is not hex") from None
        message = signed_message(request_id, user_id, stamp, body)
        keys = self._keys_at(now, early=False)
        if _verifies(keys, signed, message):
            return request_id
        fresh = self._keys_at(now, early=True)  # fal may have rotated its keys
        if fresh is not keys and _verifies(fresh, signed, message):
            return request_id
        raise WebhookRejected(f"delivery for {request_id!r} refused: no key of fal's verifies its signature")

    def _keys_at(self, now: float, early: bool) -> list[Ed25519PublicKey]:
        """The keys, fetched first when a day old (or `early`), at most once a minute whether or not that works;
        keys a failed fetch would replace are kept. Raises WebhookRejected (503) while there are none."""
        with self._lock:
            stale = self._fetched_at is None or now - self._fetched_at > KEYS_MAX_AGE_S
            may_try = self._tried_at is None or now - self._tried_at >= REFETCH_EVERY_S
            if not ((stale or early) and may_try):
                return self._current()
            self._tried_at = now
        try:  # outside the lock: a slow fetch holds up no delivery that the keys in hand verify
            answer = self._http.get(self.jwks_url, timeout=10.0)
            answer.raise_for_status()
            keys = [key for key in map(_public_key, answer.json().get("keys", [])) if key is not None]
        except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
            log.warning("fal's webhook keys could not be fetched from %s: %s", self.jwks_url, type(exc).__name__)
            with self._lock:
                return self._current()
        with self._lock:
            self._keys, self._fetched_at = keys, now
            return self._keys

    def _current(self) -> list[Ed25519PublicKey]:
        if not self._keys:
            raise WebhookRejected("fal's webhook keys could not be fetched yet; fal delivers again later", 503)
        return self._keys


def _public_key(jwk: object) -> Ed25519PublicKey | None:
    """An Ed25519 key of a JWKS (`kty` OKP, `crv` Ed25519); None for a key of another kind."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return None
    x = str(jwk.get("x", ""))
    try:
        return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
    except ValueError:
        return None


def _verifies(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False
