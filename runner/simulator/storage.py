"""fal storage as the simulator serves it: tokens for its CDN, uploads held in memory, served until they expire.

`POST /storage/auth/token?storage_type=fal-cdn-v3` (a fal key) gives a token for the CDN at
`{base_url}/cdn/<instance>` (each simulator its own); `POST .../files/upload` with that token
stores the body and answers its `access_url`, `{base_url}/cdn/<instance>/files/<id>/<name>`,
which a GET serves until the upload's lifecycle ends (then 404, as fal's CDN answers an
expired file); an upload past the byte budget answers 507. Simpler than fal: multipart uploads
(`/files/upload/multipart`, which fal_client uses for files over 100 MiB) answer 404.
"""

from __future__ import annotations

import json
import mimetypes
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import quote, unquote, urlsplit

STORAGE_TYPE = "fal-cdn-v3"
#: The first segment of the CDN's paths: its base URL is `{base_url}/cdn`.
CDN_PREFIX = "cdn"
GATEWAY_TOKEN_DETAIL = "Gateway tokens cannot upload to fal storage"
_DEFAULT_CONTENT_TYPE = "application/octet-stream"


class StorageRoute(str, Enum):
    """A call that fal's storage answers rather than its queue."""

    #: `/storage/auth/token`: a token for the CDN.
    TOKEN = "token"
    #: `/cdn/files/upload`: store a file.
    UPLOAD = "upload"
    #: `GET /cdn/files/<id>/<name>`: an uploaded file.
    FILE = "file"
    #: Anything else under `/cdn`: 404.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StoredFile:
    """An upload: its bytes, as it was sent, until `expires_at`."""

    data: bytes
    content_type: str
    #: The last segment of its access URL, percent-encoded.
    name: str
    #: Monotonic seconds from which it answers 404.
    expires_at: float


def storage_route(method: str, parts: list[str]) -> StorageRoute | None:
    """Which storage call a path's segments are, or None for a queue or Platform API call.

    The CDN's paths are `/cdn/<instance>/...`: each simulator its own, so that a URL of one that stopped is
    not served by the next on the same port (its files are gone, as they would be).
    """
    if parts == ["storage", "auth", "token"]:
        return StorageRoute.TOKEN
    if parts[:1] != [CDN_PREFIX]:
        return None
    if parts[2:] == ["files", "upload"] and len(parts) == 4:
        return StorageRoute.UPLOAD
    if method == "GET" and len(parts) == 5 and parts[2] == "files":
        return StorageRoute.FILE
    return StorageRoute.UNKNOWN


def lifecycle_ttl_s(text: str | None) -> float | None:
    """`expiration_duration_seconds` of an object lifecycle header, or None when absent, malformed or negative."""
    try:
        preference = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    value = preference.get("expiration_duration_seconds") if isinstance(preference, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


class Storage:
    """Storage tokens and uploaded files, in memory. Thread-safe.

    `clock` gives monotonic seconds (tokens and files expire by it); `wall_time`
    turns one into Unix time, for the `expires_at` a token carries.
    """

    def __init__(self, token_ttl_s: float, file_lifetime_s: float, budget_bytes: int,
                 clock: Callable[[], float], wall_time: Callable[[float], float]) -> None:  # fmt: skip
        self._token_ttl_s = token_ttl_s
        self._file_lifetime_s = file_lifetime_s
        self._budget_bytes = budget_bytes
        #: The second segment of this simulator's CDN paths.
        self.instance = secrets.token_hex(4)
        self._clock = clock
        self._wall_time = wall_time
        self._tokens: dict[str, float] = {}
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._held_bytes = 0
        self._lock = threading.Lock()

    def issue_token(self, base_url: str) -> dict[str, Any]:
        """A new token's answer, as fal's token endpoint gives it; `base_url` is the simulator's."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = self._clock()
            self._tokens = {held: until for held, until in self._tokens.items() if until > now}
            expires_at = now + self._token_ttl_s
            self._tokens[token] = expires_at
        return {
            "token": token,
            "token_type": "Bearer",
            "base_url": f"{base_url}/{CDN_PREFIX}/{self.instance}",
            "expires_at": datetime.fromtimestamp(self._wall_time(expires_at), UTC).isoformat(),
        }

    def token_problem(self, authorization: str | None) -> str | None:
        """Why an upload's `Authorization` is refused (401), or None for a token issued here and not expired."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Missing or malformed Authorization header: use 'Bearer <token>' from /storage/auth/token"
        with self._lock:
            expires_at = self._tokens.get(token.strip())
        if expires_at is None:
            return "Invalid storage token"
        if self._clock() >= expires_at:
            return "Storage token expired"
        return None

    def put(self, data: bytes, headers: Mapping[str, str]) -> str | None:
        """Store an upload; its path under the CDN's base URL (`files/<id>/<name>`), or None when the byte budget
        is full of files that have not expired (a live upload is never dropped: a batch may still send it).

        `headers` (lower-case names) give its `content-type`, `x-fal-file-name` and
        `x-fal-object-lifecycle`; without a positive expiration it lives the default lifetime.
        """
        content_type = headers.get("content-type") or _DEFAULT_CONTENT_TYPE
        name = quote(_file_name(headers.get("x-fal-file-name"), content_type), safe="")
        lifetime_s = lifecycle_ttl_s(headers.get("x-fal-object-lifecycle")) or self._file_lifetime_s
        file_id = uuid.uuid4().hex
        with self._lock:
            now = self._clock()
            for expired in [key for key, held in self._files.items() if now >= held.expires_at]:
                self._drop(expired)
            if self._held_bytes + len(data) > self._budget_bytes:
                return None
            self._files[file_id] = StoredFile(data, content_type, name, now + lifetime_s)
            self._held_bytes += len(data)
        return f"{self.instance}/files/{file_id}/{name}"

    def get(self, file_id: str, name: str) -> StoredFile | None:
        """An upload by the last two segments of its access URL, or None when unknown, expired or evicted."""
        with self._lock:
            held = self._files.get(file_id)
            if held is None or unquote(held.name) != unquote(name):
                return None
            if self._clock() >= held.expires_at:
                self._drop(file_id)
                return None
            return held

    def file_at(self, url: str) -> bytes | None:
        """The bytes of the upload an access URL names (whatever its host), or None; read without HTTP."""
        try:
            parts = [part for part in urlsplit(url).path.split("/") if part]
        except ValueError:  # not a URL at all
            return None
        if len(parts) != 5 or parts[:3] != [CDN_PREFIX, self.instance, "files"]:
            return None
        held = self.get(parts[3], parts[4])
        return held.data if held is not None else None

    def snapshot(self) -> dict[str, int]:
        """What is held, for /_stats (expired uploads not yet dropped included)."""
        with self._lock:
            return {"stored_files": len(self._files), "stored_bytes": self._held_bytes}

    def _drop(self, file_id: str) -> None:
        """Forget an upload; the caller holds the lock."""
        dropped = self._files.pop(file_id)
        self._held_bytes -= len(dropped.data)


def _file_name(given: str | None, content_type: str) -> str:
    """The name an upload is served under: the last segment of `X-Fal-File-Name`, else one for its type."""
    name = (given or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name not in ("", ".", ".."):
        return name
    extension = mimetypes.guess_extension(content_type.partition(";")[0].strip()) or ".bin"
    return f"upload{extension}"
