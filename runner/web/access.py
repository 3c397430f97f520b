"""Who may see and do what in `wan-batch serve`.

On a loopback host anyone on this machine may look; on any other host every
page, API call and scrape needs the token (`WAN_BATCH_SERVE_TOKEN`), so the app
never starts there without one. Cancel and retry exist only with
`--allow-actions`, and always need the token.

The token comes as `Authorization: Bearer <token>` (scripts, Prometheus) or as
a session cookie set by `/login` that holds an HMAC of it, never the token. An
action must be a JSON POST (no cross-site form can send one) whose Origin, when
the browser names one, is this app's.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from pydantic import SecretStr
from starlette.requests import Request

from jobs.errors import UsageError

TOKEN_ENV = "WAN_BATCH_SERVE_TOKEN"
COOKIE = "wan_batch_session"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The app's rules, from its host, its token and `--allow-actions`."""

    token: SecretStr | None
    open_reads: bool
    allow_actions: bool

    @classmethod
    def for_host(cls, host: str, token: str | None, allow_actions: bool) -> Access:
        """Raises UsageError for a setting that would open more than it should."""
        secret = SecretStr(token) if token else None
        if secret is None and allow_actions:
            raise UsageError(f"--allow-actions needs a token in {TOKEN_ENV}: cancel and retry are never open")
        loopback = is_loopback(host)
        if secret is None and not loopback:
            raise UsageError(f"serving on {host}, beyond this machine, needs a token in {TOKEN_ENV}; or serve on"
                             " 127.0.0.1")  # fmt: skip
        return cls(secret, loopback, allow_actions)

    def may_read(self, request: Request) -> bool:
        return self.open_reads or self.authorized(request)

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the token (a bearer header) or a session made from it."""
        if self.token is None:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return hmac.compare_digest(given.encode(), self.token.get_secret_value().encode())
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), self.session_value())

    def may_act(self, request: Request) -> str | None:
        """None if the request may cancel or retry; else why not."""
        if not self.allow_actions:
            return "actions are off: start `wan-batch serve` with --allow-actions"
        if not self.authorized(request):
            return "log in with the serve token first"
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return "an action is a JSON POST"
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return "an action from another site"
        return None

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.get_secret_value().encode())

    def session_value(self) -> str:
        """The cookie's value: an HMAC of the token, so the cookie never holds the token itself."""
        if self.token is None:
            return "-"  # matches no cookie (an empty one included)
        key = self.token.get_secret_value().encode()
        return hmac.new(key, b"wan-batch serve session", hashlib.sha256).hexdigest()
