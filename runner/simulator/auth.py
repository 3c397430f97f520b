"""Who the simulator lets in: fal's `Authorization` header, a key or a gateway's Bearer token, as configured."""

from __future__ import annotations

import hmac

from pydantic import SecretStr


def is_bearer(header: str | None) -> bool:
    """Whether `Authorization` holds a Bearer token (a gateway's), which fal's Platform API and storage refuse."""
    return (header or "").strip().partition(" ")[0].lower() == "bearer"


def platform_auth_problem(header: str | None, key: SecretStr | None, token: SecretStr | None) -> str | None:
    """As `auth_problem`, but a Bearer token is refused: a gateway's token cannot read fal's history."""
    if is_bearer(header):
        return "The Platform API takes a fal key ('Authorization: Key <FAL_KEY>'), not a Bearer token"
    return auth_problem(header, key, token)


def auth_problem(header: str | None, key: SecretStr | None, token: SecretStr | None) -> str | None:
    """Why `Authorization` is refused, or None; the message never repeats the credential."""
    scheme, _, credential = (header or "").strip().partition(" ")
    credential = credential.strip()
    if not scheme or scheme.lower() not in ("key", "bearer") or not credential:
        return "Missing or malformed Authorization header: use 'Key <key>' or 'Bearer <token>'"
    if key is None and token is None:
        return None
    expected = key if scheme.lower() == "key" else token
    if expected is None or not hmac.compare_digest(credential.encode(), expected.get_secret_value().encode()):
        return "Invalid credentials"
    return None
