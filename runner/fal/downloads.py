"""Output files: fetched without credentials, checked as images, moved into place only when whole."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from jobs.errors import DownloadError
from jobs.images import data_uri_size_bytes

_SCHEMES = frozenset({"http", "https", "data"})
#: Formats a model may return; Pillow opens nothing else (no EPS through Ghostscript, say).
_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/avif": ".avif",
}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
#: Headers a shared client might carry that must never reach a CDN.
_PRIVATE_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
_CHUNK_BYTES = 64 * 1024
#: Largest image accepted, in pixels: a small file can claim dimensions that take gigabytes to decode.
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    path: Path
    size_bytes: int
    #: What the bytes are, as Pillow read them (not what the server said).
    content_type: str
    width: int
    height: int


def normalize_content_type(value: str | None) -> str:
    """`"image/JPG; q=1"` as `"image/jpeg"`: no parameters, lower case, aliases folded."""
    mime = (value or "").partition(";")[0].strip().lower()
    return _ALIASES.get(mime, mime)


def extension_for_content_type(content_type: str | None) -> str:
    """The file extension (".jpg", ".png", ...) of an image type; ".bin" for any other."""
    return _EXTENSIONS.get(normalize_content_type(content_type), ".bin")


def download_file(
    http: httpx.Client,
    url: str,
    dest: Path,
    max_bytes: int,
    expected_content_type: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DownloadedFile:
    """Save the image at `url` (http, https or data) as `dest`, all or nothing.

    No credential is sent, whatever `http` carries. The bytes go to a temp
    file beside `dest`, which replaces `dest` only once the byte count matches
    Content-Length, the total is within `max_bytes`, the width times height
    its header declares is within `max_pixels` (checked before decoding), and
    Pillow decodes it as the image type the server and `expected_content_type`
    claim. On any failure the temp file is removed and `dest` is left as it was.

    Raises DownloadError (`retryable` for a cut-short transfer, a 5xx or 429,
    a transport error); OSError for a local file problem.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise DownloadError(
            f"refusing to download {_shown(url)}: only http, https and data URLs are fetched", retryable=False
        )
    temp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
    try:
        with temp.open("xb") as out:
            claimed: str | None
            if scheme == "data":
                claimed = _save_data_uri(url, out, max_bytes)
            else:
                claimed = _save_http(http, url, out, max_bytes)
            out.flush()
            os.fsync(out.fileno())
        content_type, width, height = _check_image(temp, url, [claimed, expected_content_type], max_pixels)
        size_bytes = temp.stat().st_size
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return DownloadedFile(dest, size_bytes, content_type, width, height)


def _save_data_uri(url: str, out: BinaryIO, max_bytes: int) -> str:
    header, comma, payload = url.partition(",")
    params = header[len("data:") :].split(";")
    if not comma:
        raise DownloadError(f"malformed data URI {_shown(url)}", retryable=False)
    is_base64 = "base64" in (p.strip().lower() for p in params[1:])
    if is_base64 and data_uri_size_bytes(url) > max_bytes:
        raise DownloadError(_over_cap(url, data_uri_size_bytes(url), max_bytes), retryable=False)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise DownloadError(f"data URI {_shown(url)} has invalid base64: {exc}", retryable=False) from None
    if len(data) > max_bytes:
        raise DownloadError(_over_cap(url, len(data), max_bytes), retryable=False)
    out.write(data)
    return params[0] or "text/plain"


def _save_http(http: httpx.Client, url: str, out: BinaryIO, max_bytes: int) -> str | None:
    """Stream the body into `out`; the server's Content-Type."""
    try:
        request = http.build_request("GET", url)
        for name in _PRIVATE_HEADERS:
            request.headers.pop(name, None)
        response = http.send(request, stream=True, auth=None, follow_redirects=True)
        try:
            declared_bytes = _check_response(response, url, max_bytes)
            written_bytes = 0
            for chunk in response.iter_bytes(_CHUNK_BYTES):
                written_bytes += len(chunk)
                if written_bytes > max_bytes:
                    raise DownloadError(_over_cap(url, written_bytes, max_bytes, "streamed"), retryable=False)
                out.write(chunk)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        retryable = isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)
        raise DownloadError(f"download {_shown(url)}: {type(exc).__name__}: {exc}", retryable=retryable) from None
    # Raw bytes, as Content-Length counts them (before any Content-Encoding is undone).
    if declared_bytes is not None and response.num_bytes_downloaded != declared_bytes:
        raise DownloadError(
            f"download {_shown(url)} cut short: {response.num_bytes_downloaded:,} of {declared_bytes:,} bytes",
            retryable=True,
        )
    content_type: str | None = response.headers.get("content-type")
    return content_type


def _check_response(response: httpx.Response, url: str, max_bytes: int) -> int | None:
    """Content-Length if any; raises DownloadError for a non-200 or a declared size over the cap."""
    if response.status_code != 200:
        status = response.status_code
        retryable = status in (408, 425, 429) or status >= 500
        raise DownloadError(f"download {_shown(url)}: HTTP {status}", retryable=retryable, status_code=status)
    raw = response.headers.get("content-length")
    declared_bytes = int(raw) if raw is not None and raw.strip().isdigit() else None
    if declared_bytes is not None and declared_bytes > max_bytes:
        raise DownloadError(_over_cap(url, declared_bytes, max_bytes, "declares"), retryable=False)
    return declared_bytes


def _check_image(path: Path, url: str, claims: list[str | None], max_pixels: int) -> tuple[str, int, int]:
    """(MIME type, width, height) of the image at `path`; raises DownloadError if it is not one."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning fires at a fixed 89 MP; `max_pixels` is the cap here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=_IMAGE_FORMATS) as image:
                _check_pixels(image.size, url, max_pixels)
                image.verify()
            with Image.open(path, formats=_IMAGE_FORMATS) as image:
                image.load()
                actual = image.get_format_mimetype() or ""
                width, height = image.size
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit, refused on open
        raise DownloadError(f"download {_shown(url)} has too many pixels ({exc})", retryable=False) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DownloadError(
            f"download {_shown(url)} is not a readable image ({type(exc).__name__}: {exc})", retryable=False
        ) from None
    for claim in claims:
        claimed = normalize_content_type(claim)
        # Only an image type is a claim; octet-stream and the like say nothing.
        if claimed.startswith("image/") and claimed != normalize_content_type(actual):
            raise DownloadError(f"download {_shown(url)} claims {claimed} but holds {actual}", retryable=False)
    return normalize_content_type(actual), width, height


def _check_pixels(size: tuple[int, int], url: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise DownloadError(
            f"download {_shown(url)} is {width}x{height}, {width * height:,} pixels,"
            f" more than the cap of {max_pixels:,}",
            retryable=False,
        )


def _over_cap(url: str, size_bytes: int, max_bytes: int, how: str = "holds") -> str:
    return f"download {_shown(url)} {how} {size_bytes:,} bytes, more than the cap of {max_bytes:,}"


def _shown(url: str) -> str:
    """A URL as shown in messages: a data URI's payload and long URLs cut short."""
    if url[:5].lower() == "data:":
        return url.partition(",")[0] + ",..."
    return url if len(url) <= 120 else url[:117] + "..."
