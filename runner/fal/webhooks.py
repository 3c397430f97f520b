"""Checking that a webhook delivery is fal's: its Ed25519 signature against fal's published keys (JWKS).

The keys are fetched from `--jwks-url` (FAL_JWKS_URL; fal's by default), kept for a day at most, and
fetched again early when no key verifies a delivery (fal rotated its keys), at most once a minute so that
forged deliveries cannot make this fetch them in a loop.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jobs.errors import WebhookRejected
from jobs.webhooks import signed_message, timestamp_problem

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
        if _verifies(self._current_keys(now), signed, message):
            return request_id
        if self._refetch_early(now) and _verifies(self._current_keys(now), signed, message):
            return request_id
        raise WebhookRejected(f"delivery for {request_id!r} refused: no key of fal's verifies its signature")

    def _current_keys(self, now: float) -> list[Ed25519PublicKey]:
        with self._lock:
            if self._fetched_at is None or now - self._fetched_at > KEYS_MAX_AGE_S:
                self._fetch(now)
            return self._keys

    def _refetch_early(self, now: float) -> bool:
        with self._lock:
            if self._fetched_at is not None and now - self._fetched_at < REFETCH_EVERY_S:
                return False
            self._fetch(now)
            return True

    def _fetch(self, now: float) -> None:
        try:
            answer = self._http.get(self.jwks_url, timeout=10.0)
            answer.raise_for_status()
            keys = [_public_key(jwk) for jwk in answer.json().get("keys", [])]
        except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
            raise WebhookRejected(f"fal's webhook keys could not be fetched ({type(exc).__name__})", 503) from None
        self._keys = [key for key in keys if key is not None]
        self._fetched_at = now


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
