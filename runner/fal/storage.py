"""fal storage over HTTP: a token, then one upload per file, as fal_client does.

`POST {storage_url}/storage/auth/token?storage_type=fal-cdn-v3` with the fal
key gives a token and the CDN's base URL (the token is kept until it
expires); `POST {base_url}/files/upload` with the bytes gives the file's
URL. `X-Fal-Object-Lifecycle` says how long fal keeps it. A gateway's token
cannot upload: its batches send images inline. Nothing here sleeps or
retries: `runner.batches.uploads` does.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from jobs.errors import StorageError
from runner.fal.providers import FAL_QUEUE_URL, Provider
from runner.fal.retry import is_retryable_status

#: fal's REST host, whose storage tokens upload to its CDN.
FAL_STORAGE_URL = "https://rest.fal.ai"
_TOKEN_PATH = "/storage/auth/token?storage_type=fal-cdn-v3"
#: A token is renewed this long before it expires, so that no upload starts with one about to lapse.
_TOKEN_MARGIN_S = 60.0
_DETAIL_CHARS = 200
M = TypeVar("M", bound=BaseModel)


class _Token(BaseModel):
    token: str
    token_type: str
    base_url: str
    expires_at: datetime


class _Uploaded(BaseModel):
    access_url: str


@dataclass(frozen=True)
class _HeldToken:
    authorization: str
    base_url: str
    #: Monotonic seconds after which it is renewed.
    renew_after: float


def storage_url_for(given: str | None, provider: Provider) -> str:
    """Where a batch's images are uploaded: `given` (`--storage-url`, FAL_STORAGE_URL), else fal's REST host for
    fal's queue, else the stand-in for fal at the batch's `--base-url` (a simulator serves both)."""
    if given:
        return given.rstrip("/")
    if provider.base_url.rstrip("/") == FAL_QUEUE_URL:
        return FAL_STORAGE_URL
    parts = urlsplit(provider.base_url)
    return f"{parts.scheme}://{parts.netloc}"


class StorageClient:
    """Uploads files to fal storage with a fal key; safe to share between threads."""

    def __init__(self, http: httpx.Client, storage_url: str, provider: Provider) -> None:
        self._http = http
        self._storage_url = storage_url.rstrip("/")
        self._provider = provider
        self._token: _HeldToken | None = None
        self._lock = threading.Lock()

    def cdn_url(self) -> str:
        """Where this storage's files are (its token's `base_url`): what tells one storage from another, a
        simulator from the one that ran on the same port before it. Raises StorageError."""
        return self._held_token().base_url.rstrip("/")

    def upload(self, data: bytes, content_type: str, file_name: str, lifetime_s: int) -> str:
        """Upload `data`; the URL fal serves it at for `lifetime_s`. Raises StorageError."""
        token = self._held_token()
        headers = {
            "Authorization": token.authorization, "Content-Type": content_type, "X-Fal-File-Name": quote(file_name),
            "X-Fal-Object-Lifecycle": json.dumps({"expiration_duration_seconds": lifetime_s}),
        }  # fmt: skip
        response = self._post(f"{token.base_url.rstrip('/')}/files/upload", data, headers, "upload")
        if response.status_code == 401:  # the token lapsed early (clocks differ): the next try gets another
            with self._lock:
                self._token = None
            raise StorageError(f"upload: HTTP 401{_detail(response)} (its storage token had lapsed)", transient=True)
        _raise_for(response, "upload")
        return _parsed(_Uploaded, response, "upload").access_url

    def _held_token(self) -> _HeldToken:
        with self._lock:
            if self._token is None or time.monotonic() >= self._token.renew_after:
                self._token = self._new_token()
            return self._token

    def _new_token(self) -> _HeldToken:
        url = f"{self._storage_url}{_TOKEN_PATH}"
        response = self._post(url, b"{}", {**self._provider.auth_headers(), "Content-Type": "application/json"},
                              "storage token")  # fmt: skip
        _raise_for(response, "storage token")
        token = _parsed(_Token, response, "storage token")
        life_s = token.expires_at.timestamp() - time.time() if token.expires_at.tzinfo else 0.0
        return _HeldToken(f"{token.token_type} {token.token}", token.base_url,
                          time.monotonic() + max(0.0, life_s - _TOKEN_MARGIN_S))  # fmt: skip

    def _post(self, url: str, body: bytes, headers: dict[str, str], what: str) -> httpx.Response:
        try:
            return self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # its message may quote the URL, never a credential
            host = urlsplit(url).hostname or "?"
            raise StorageError(f"{what}: {type(exc).__name__} from {host}", transient=True) from None


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    detail = _detail(response)
    code = response.status_code
    if code in (401, 403):
        raise StorageError(f"{what}: HTTP {code}{detail}; check FAL_KEY, or send the images inline (--images"
                           " inline)", transient=False)  # fmt: skip
    transient = is_retryable_status(code, response.headers) or code >= 500
    raise StorageError(f"{what}: HTTP {code}{detail}", transient=transient)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    return f": {str(detail)[:_DETAIL_CHARS]}" if detail else ""


def _parsed(model: type[M], response: httpx.Response, what: str) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        raise StorageError(f"{what}: fal storage answered something unexpected", transient=True) from None
