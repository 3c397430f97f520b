"""Who may see and do what in `wan-batch serve`.

On a loopback host anyone on this machine may look, through a loopback name
only (a page elsewhere that points its own name at 127.0.0.1 reads nothing);
on any other host every page, API call and scrape needs the token
(`WAN_BATCH_SERVE_TOKEN`), so the app never starts there without one. Cancel
and retry exist only with `--allow-actions`, and always need the token.

The token comes as `Authorization: Bearer <token>` (scripts, Prometheus) or as
a session cookie set by `/login` that holds an HMAC of it, never the token. An
action must be a JSON POST (no cross-site form can send one) that the browser
says came from this app's own pages (`Sec-Fetch-Site`, else the Origin's host).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.requests import Request

from jobs.errors import UsageError

TOKEN_ENV = "WAN_BATCH_SERVE_TOKEN"
COOKIE = "wan_batch_session"
#: A shorter token is refused: it guards pages, metrics and (with --allow-actions) cancels.
MIN_TOKEN_CHARS = 16


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
        if token and len(token) < MIN_TOKEN_CHARS:
            raise UsageError(f"{TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters; make one with"
                             " `openssl rand -hex 32`")  # fmt: skip
        if secret is None and allow_actions:
            raise UsageError(f"--allow-actions needs a token in {TOKEN_ENV}: cancel and retry are never open")
        loopback = is_loopback(host)
        if secret is None and not loopback:
            raise UsageError(f"serving on {host}, beyond this machine, needs a token in {TOKEN_ENV}; or serve on"
                             " 127.0.0.1")  # fmt: skip
        return cls(secret, loopback, allow_actions)

    def may_read(self, request: Request) -> bool:
        if self.open_reads:  # through a loopback name only: never a name a site elsewhere rebound to 127.0.0.1
            return is_loopback(request.url.hostname or "")
        return self.authorized(request)

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the token (a bearer header) or a session made from it."""
        if self.token is None:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return self.check_token(given)
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session_value().encode())

    def may_act(self, request: Request) -> str | None:
        """None if the request may cancel or retry; else why not."""
        if not self.allow_actions:
            return "actions are off: start `wan-batch serve` with --allow-actions"
        if not self.authorized(request):
            return "log in with the serve token first"
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return "an action is a JSON POST"
        if not _same_site(request):
            return "an action from another site"
        return None

    def check_token(self, given: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.get_secret_value().encode())

    def session_value(self) -> str:
        """The cookie's value: an HMAC of the token, so the cookie never holds the token itself."""
        if self.token is None:
            return "-"  # matches no cookie (an empty one included)
        key = self.token.get_secret_value().encode()
        return hmac.new(key, b"wan-batch serve session", hashlib.sha256).hexdigest()


def _same_site(request: Request) -> bool:
    """Whether a browser says the request came from this app's pages; a script (no such headers) may act.

    Behind a TLS proxy the app may see another scheme or port than the browser: the Origin's host is what counts.
    """
    fetched_from = request.headers.get("sec-fetch-site")
    if fetched_from is not None:
        return fetched_from in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).hostname == urlsplit(f"//{request.headers.get('host', '')}").hostname
