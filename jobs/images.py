"""Image references in a job's input: http(s) URLs, data URIs and local paths."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import Enum

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
#: Never part of a URL, a data URI or a file name anyone meant (a NUL cannot be in a path at all).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,")


class ImageRefKind(str, Enum):
    #: Sent as given; fal fetches it.
    URL = "url"
    #: Sent as given; the bytes travel in the request body.
    DATA_URI = "data_uri"
    #: A file beside the manifest; becomes a data URI at submit time.
    LOCAL_PATH = "local_path"


@dataclass(frozen=True, slots=True)
class ImageRef:
    kind: ImageRefKind
    value: str


def classify_image_ref(value: str) -> ImageRef:
    """Say what kind of reference `value` is.

    Raises ValueError for an empty value, a control character (such as NUL),
    a scheme other than http, https or data, or a malformed or non-image data URI.
    """
    if not value.strip():
        raise ValueError("empty image reference")
    if control := _CONTROL.search(value):
        raise ValueError(f"image reference holds a control character {control[0]!a} at position {control.start() + 1}")
    scheme_match = _SCHEME.match(value)
    scheme = scheme_match[1].lower() if scheme_match else ""
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/\s]+", value, re.IGNORECASE):
            raise ValueError(f"URL has no host: {value[:80]!r}")
        return ImageRef(ImageRefKind.URL, value)
    if scheme == "data":
        check_data_uri(value)
        return ImageRef(ImageRefKind.DATA_URI, value)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, i.e. a path
        raise ValueError(f"unsupported scheme {scheme!r}: use http(s), a data: URI or a file path")
    return ImageRef(ImageRefKind.LOCAL_PATH, value)


def check_data_uri(value: str) -> None:
    """Raise ValueError unless `value` is a base64 data URI of an image type."""
    match = _DATA_URI.match(value)
    if not match:
        raise ValueError("malformed data URI (expected data:image/<type>;base64,<data>)")
    mime = match["mime"] or "text/plain"
    if not mime.lower().startswith("image/"):
        raise ValueError(f"data URI is {mime}, not an image")
    if not match["b64"]:
        raise ValueError("data URI is not base64-encoded")
    payload = value[match.end() :]
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"data URI has invalid base64: {exc}") from None


def data_uri_size_bytes(value: str) -> int:
    """Decoded size of a base64 data URI's payload, without decoding it."""
    payload = value.partition(",")[2]
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def encode_data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_ref_values(value: object) -> list[tuple[int | None, str]]:
    """The references a field holds: (index in its list or None, reference)."""
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list):
        return [(index, item) for index, item in enumerate(value) if isinstance(item, str)]
    return []
