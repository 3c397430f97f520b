"""Who serves the queue: fal itself or a gateway reselling it, and how to authenticate."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

FAL_QUEUE_URL = "https://queue.fal.run"
#: What a batch recorded by a shell without a credential holds in its place: workers use their own.
WORKERS_CREDENTIAL = "held-by-the-workers"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDACTED = "[redacted]"


class Provider(BaseModel):
    """A queue's base URL and credential; repr and str never show the credential."""

    model_config = ConfigDict(frozen=True)

    base_url: str
    auth_scheme: Literal["Key", "Bearer"]
    credential: SecretStr

    @classmethod
    def fal(cls, key: str, base_url: str = FAL_QUEUE_URL) -> Provider:
        """fal's own queue, `Authorization: Key <FAL_KEY>` (the key may be `id:secret`)."""
        return cls(base_url=base_url, auth_scheme="Key", credential=SecretStr(key))

    @classmethod
    def gateway(cls, base_url: str, token: str) -> Provider:
        """A gateway reselling fal at its own URL, `Authorization: Bearer <token>`."""
        return cls(base_url=base_url, auth_scheme="Bearer", credential=SecretStr(token))

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("base_url must not hold a query, fragment or user info")
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    @field_validator("credential")
    @classmethod
    def _check_credential(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip() or any(ch in secret for ch in "\r\n"):
            raise ValueError("the credential is empty or holds a line break")
        return value

    @property
    def credential_name(self) -> str:
        """What a user should check when the credential is refused."""
        return "FAL_KEY" if self.auth_scheme == "Key" else "the gateway token"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"{self.auth_scheme} {self.credential.get_secret_value()}"}

    def submit_url(self, endpoint_id: str) -> str:
        return f"{self.base_url}/{endpoint_id}"

    def own_url(self, url: str) -> str:
        """`url` if it is on this provider's origin, else its path and query re-based onto `base_url`.

        Credentials go only to the provider's own host: a gateway that answers
        with fal's `queue.fal.run` URLs is called at the same path on the gateway.
        """
        parts = urlsplit(url)
        if _origin(parts) == _origin(urlsplit(self.base_url)) and not parts.username:
            return urlunsplit(parts._replace(fragment=""))
        base = urlsplit(self.base_url)
        path = base.path + "/" + parts.path.lstrip("/")
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))

    def redact(self, value: Any) -> Any:
        """`value` with every copy of the credential (or the secret half of `id:secret`) masked.

        Walks strings inside lists and dicts, for a server that echoes the key in its error.
        """
        if isinstance(value, str):
            for secret in self._secrets():
                value = value.replace(secret, _REDACTED)
            return value
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        if isinstance(value, dict):
            return {key: self.redact(item) for key, item in value.items()}
        return value

    def _secrets(self) -> list[str]:
        secret = self.credential.get_secret_value()
        half = secret.partition(":")[2]
        return [secret, half] if len(half) >= 8 else [secret]


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a malformed port never matches
        return (scheme, "", -1)
    return (scheme, (parts.hostname or "").lower(), port)
