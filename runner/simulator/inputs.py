"""The input images a request names, read as fal's runner reads them: fetched over HTTP, or decoded.

fal fetches a request's images when a runner starts it, and completes the request with a 422
when one cannot be read. The simulator reads them when the request is submitted instead, outside
the store's lock (the store starts requests while it replays events under that lock), and keeps
what it found for the start: an image that goes away while its request waits still counts as read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from jobs.endpoints import KNOWN_ENDPOINTS, resolve_endpoint
from runner.simulator.imaging import data_uri_bytes, decode_image
from runner.simulator.outputs import error_detail

FetchScope = Literal["local", "all", "none"]
#: The hosts fetched under the "local" scope: where tests serve their images.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: fal's error types of an input file it could not read.
DOWNLOAD_ERROR = "file_download_error"
LOAD_ERROR = "image_load_error"
TOO_LARGE_ERROR = "file_too_large"
_CHUNK_BYTES = 64 * 1024
_PASS_THROUGH_FIELDS = ("image_url", "image_urls")


@dataclass(frozen=True)
class ImageRef:
    """One image input of a request body: its field path (`image_urls[0]`) and its URL."""

    path: str
    ref: str


class _UnreadableError(Exception):
    """An image that cannot be read: fal's error type and the message a 422 carries."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def image_refs(endpoint_id: str, body: dict[str, Any]) -> list[ImageRef]:
    """The image inputs a body names: the endpoint's image fields, or fal's usual names for another app."""
    endpoint = KNOWN_ENDPOINTS.get(endpoint_id)
    try:
        fields = endpoint.image_fields if endpoint is not None else resolve_endpoint(endpoint_id).image_fields
    except ValueError:  # not an endpoint id the runner would send: the echo app's odd paths
        fields = _PASS_THROUGH_FIELDS
    refs = []
    for name in fields:
        value = body.get(name)
        if isinstance(value, str):
            refs.append(ImageRef(name, value))
        elif isinstance(value, list):
            refs.extend(ImageRef(f"{name}[{index}]", item) for index, item in enumerate(value) if isinstance(item, str))
    return refs


class InputReader:
    """Reads the images of a request and says which cannot be read. Thread-safe; `close` when done.

    `own_file` gives the bytes of one of the simulator's own output files, read without HTTP (a
    chained request), or None for any other URL.
    """

    def __init__(self, scope: FetchScope, timeout_s: float, max_bytes: int,
                 own_file: Callable[[str], bytes | None]) -> None:  # fmt: skip
        self._scope = scope
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._own_file = own_file
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True) if scope != "none" else None

    def close(self) -> None:
        """Close the HTTP client's connections."""
        if self._client is not None:
            self._client.close()

    def check(self, endpoint_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        """The 422 `detail` entries of the images of `body` that cannot be read.

        Nothing for a body its endpoint's schema refuses: that is the error the request ends with.
        `data:` URIs are decoded, and a value that is no http(s) URL fails, whatever the scope.
        Takes up to the fetch timeout for each image it fetches.
        """
        endpoint = KNOWN_ENDPOINTS.get(endpoint_id)
        if endpoint is not None and endpoint.validate_input(body).errors:
            return ()
        errors = []
        for image in image_refs(endpoint_id, body):
            try:
                self._read(image.ref)
            except _UnreadableError as exc:
                entry = error_detail(image.path, exc.message, exc.error_type)
                errors.append({**entry, "input": _shown(image.ref)})
        return tuple(errors)

    def _read(self, ref: str) -> None:
        """Return when the image can be read or is not to be fetched; raises _UnreadableError."""
        if ref.startswith("data:"):
            data = data_uri_bytes(ref)
            if data is None:
                raise _UnreadableError(LOAD_ERROR, _load_message("a malformed data URI"))
        else:
            fetched = self._fetch(ref)
            if fetched is None:
                return
            data = fetched
        if decode_image(data) is None:
            raise _UnreadableError(LOAD_ERROR, _load_message("not a readable image"))

    def _fetch(self, url: str) -> bytes | None:
        """The bytes at an http(s) URL, or None when its host is out of scope (assumed readable)."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise _UnreadableError(DOWNLOAD_ERROR, _download_message("not a valid URL")) from None
        if parts.scheme not in ("http", "https") or not host:
            raise _UnreadableError(DOWNLOAD_ERROR, _download_message("not an http(s) or data: URL"))
        if self._client is None:
            return None
        own = self._own_file(url)
        if own is not None:
            return own
        if self._scope == "local" and host not in LOCAL_HOSTS:
            return None
        try:
            return self._download(self._client, url)
        except httpx.TimeoutException:
            reason = f"timed out after {self._timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise _UnreadableError(DOWNLOAD_ERROR, _download_message(reason))

    def _download(self, client: httpx.Client, url: str) -> bytes:
        """The body at `url`; raises _UnreadableError for an error status or a body over the cap."""
        deadline = time.monotonic() + self._timeout_s
        with client.stream("GET", url) as response:
            if not response.is_success:
                raise _UnreadableError(DOWNLOAD_ERROR, _download_message(f"HTTP {response.status_code}"))
            declared = response.headers.get("content-length", "")
            too_large = _UnreadableError(TOO_LARGE_ERROR, f"File size exceeds the maximum allowed size of "
                                                          f"{self._max_bytes} bytes.")  # fmt: skip
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise too_large
            chunks, size_bytes = [], 0
            for chunk in response.iter_bytes(_CHUNK_BYTES):
                size_bytes += len(chunk)
                if size_bytes > self._max_bytes:
                    raise too_large
                if time.monotonic() > deadline:  # the timeout bounds each read; this, the whole body
                    raise httpx.ReadTimeout("the body took too long")
                chunks.append(chunk)
        return b"".join(chunks)


def _download_message(reason: str) -> str:
    return f"Failed to download the file ({reason}). Please check if the URL is accessible."


def _load_message(reason: str) -> str:
    return f"Failed to load the image ({reason}). Please ensure it is not corrupted and is in a supported format."


def _shown(ref: str) -> str:
    """The input as a 422 entry repeats it: a data URI without its payload."""
    return ref.partition(",")[0] + ",..." if ref.startswith("data:") else ref
