"""download_file against a real HTTP server on 127.0.0.1 that plays a CDN, good and bad."""

from __future__ import annotations

import base64
import io
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from jobs.errors import DownloadError
from runner.fal.downloads import download_file, extension_for_content_type, normalize_content_type


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")


@dataclass
class Route:
    body: bytes
    status: int = 200
    content_type: str | None = "image/png"
    #: Content-Length to announce; None = the true length, -1 = none (body ends at close).
    length: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class CDN(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.seen_headers: list[dict[str, str]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: CDN

    def do_GET(self) -> None:
        self.server.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
        route = self.server.routes.get(self.path, Route(b"not found", 404, "text/plain"))
        self.send_response(route.status)
        if route.content_type:
            self.send_header("Content-Type", route.content_type)
        if route.length != -1:
            self.send_header("Content-Length", str(route.length if route.length is not None else len(route.body)))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def cdn_server() -> Iterator[CDN]:
    server = CDN()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def cdn(cdn_server: CDN) -> CDN:
    cdn_server.routes.clear()
    cdn_server.seen_headers.clear()
    return cdn_server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --- pure helpers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "extension"),
    [
        ("image/jpeg", ".jpg"),
        ("image/jpg", ".jpg"),
        ("IMAGE/JPEG; charset=binary", ".jpg"),
        ("image/png", ".png"),
        ("image/webp", ".webp"),
        ("image/gif", ".gif"),
        ("application/octet-stream", ".bin"),
        ("text/html", ".bin"),
        ("", ".bin"),
        (None, ".bin"),
    ],
)
def test_extension_for_content_type(content_type: str | None, extension: str) -> None:
    assert extension_for_content_type(content_type) == extension


@pytest.mark.parametrize(
    ("value", "expected"),
    [("image/png", "image/png"), (" Image/PNG ; x=1", "image/png"), ("image/pjpeg", "image/jpeg"), (None, "")],
)
def test_normalize_content_type(value: str | None, expected: str) -> None:
    assert normalize_content_type(value) == expected


# --- data URIs -------------------------------------------------------------


def test_data_uri_is_decoded_without_a_request(http: httpx.Client, tmp_path: Path) -> None:
    got = download_file(http, data_uri(PNG), tmp_path / "out.png", max_bytes=1_000_000)
    assert got.path.read_bytes() == PNG
    assert (got.size_bytes, got.content_type, got.width, got.height) == (len(PNG), "image/png", 40, 30)
    assert leftovers(tmp_path) == ["out.png"]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (data_uri(PNG, "image/jpeg"), "claims image/jpeg but holds image/png"),
        (data_uri(b"hello, not an image", "image/png"), "not a readable image"),
        ("data:image/png;base64,@@@notbase64", "invalid base64"),
        ("data:image/png;base64", "malformed data URI"),
        (data_uri(PNG * 40), "more than the cap"),
    ],
)
def test_bad_data_uri_leaves_nothing(http: httpx.Client, tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(DownloadError, match=message) as caught:
        download_file(http, uri, tmp_path / "out.png", max_bytes=len(PNG) * 10)
    assert caught.value.retryable is False
    assert leftovers(tmp_path) == []


# --- schemes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/image.png", "javascript:alert(1)", "/etc/passwd", "image.png"]
)
def test_only_http_https_and_data_are_fetched(http: httpx.Client, tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="only http, https and data") as caught:
        download_file(http, url, tmp_path / "out.png", max_bytes=1_000_000)
    assert caught.value.retryable is False
    assert leftovers(tmp_path) == []


# --- over HTTP -------------------------------------------------------------


def test_http_download_sends_no_credentials(cdn: CDN, tmp_path: Path) -> None:
    cdn.routes["/a.png"] = Route(PNG)
    headers = {"Authorization": "Key secret-key-123", "Cookie": "session=abc"}
    with httpx.Client(headers=headers, auth=("user", "pass"), timeout=5.0) as leaky:
        got = download_file(leaky, cdn.url("/a.png"), tmp_path / "a.png", max_bytes=1_000_000)
    assert got.path.read_bytes() == PNG
    assert "authorization" not in cdn.seen_headers[0]
    assert "cookie" not in cdn.seen_headers[0]


def test_redirect_is_followed_without_credentials(cdn: CDN, tmp_path: Path) -> None:
    cdn.routes["/old.png"] = Route(b"", 302, None, headers={"Location": "/new.png"})
    cdn.routes["/new.png"] = Route(JPEG, content_type="image/jpeg")
    with httpx.Client(headers={"Authorization": "Bearer t0ken"}, timeout=5.0) as leaky:
        got = download_file(leaky, cdn.url("/old.png"), tmp_path / "x.jpg", max_bytes=1_000_000)
    assert got.content_type == "image/jpeg"
    assert all("authorization" not in seen for seen in cdn.seen_headers)


@pytest.mark.parametrize(
    ("route", "expected", "message"),
    [
        (Route(PNG, content_type="image/jpeg"), None, "claims image/jpeg but holds image/png"),
        (Route(PNG, content_type="application/octet-stream"), "image/jpeg", "claims image/jpeg but holds image/png"),
        (Route(b"<html>oops</html>", content_type="text/html"), None, "not a readable image"),
        (Route(PNG[: len(PNG) // 2]), None, "not a readable image"),  # whole transfer of a broken file
        (Route(PNG * 10), None, "declares .* more than the cap"),
        (Route(PNG * 10, length=-1), None, "streamed .* more than the cap"),
        (Route(b"gone", 404, "text/plain"), None, "HTTP 404"),
        (Route(b"gone", 403, "text/plain"), None, "HTTP 403"),
    ],
)
def test_permanent_download_failures(
    cdn: CDN, http: httpx.Client, tmp_path: Path, route: Route, expected: str | None, message: str
) -> None:
    cdn.routes["/f"] = route
    with pytest.raises(DownloadError, match=message) as caught:
        download_file(http, cdn.url("/f"), tmp_path / "f.png", max_bytes=len(PNG) * 5, expected_content_type=expected)
    assert caught.value.retryable is False
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route(PNG, length=len(PNG) + 500), "RemoteProtocolError"),  # cut short of Content-Length
        (Route(b"busy", 503, "text/plain"), "HTTP 503"),
        (Route(b"slow down", 429, "text/plain"), "HTTP 429"),
    ],
)
def test_retryable_download_failures(cdn: CDN, http: httpx.Client, tmp_path: Path, route: Route, message: str) -> None:
    cdn.routes["/f"] = route
    with pytest.raises(DownloadError, match=message) as caught:
        download_file(http, cdn.url("/f"), tmp_path / "f.png", max_bytes=1_000_000)
    assert caught.value.retryable is True
    assert leftovers(tmp_path) == []


def test_generic_content_type_accepts_what_the_bytes_are(cdn: CDN, http: httpx.Client, tmp_path: Path) -> None:
    cdn.routes["/f"] = Route(JPEG, content_type="application/octet-stream")
    got = download_file(http, cdn.url("/f"), tmp_path / "f.jpg", max_bytes=1_000_000, expected_content_type="image/jpg")
    assert got.content_type == "image/jpeg"


def test_failed_download_leaves_an_earlier_file_untouched(cdn: CDN, http: httpx.Client, tmp_path: Path) -> None:
    dest = tmp_path / "f.png"
    dest.write_bytes(b"earlier download")
    cdn.routes["/f"] = Route(PNG, length=len(PNG) + 10)
    with pytest.raises(DownloadError):
        download_file(http, cdn.url("/f"), dest, max_bytes=1_000_000)
    assert dest.read_bytes() == b"earlier download"
    assert leftovers(tmp_path) == ["f.png"]


def test_success_replaces_an_earlier_file(cdn: CDN, http: httpx.Client, tmp_path: Path) -> None:
    dest = tmp_path / "f.png"
    dest.write_bytes(b"partial junk")
    cdn.routes["/f"] = Route(PNG)
    download_file(http, cdn.url("/f"), dest, max_bytes=1_000_000)
    assert dest.read_bytes() == PNG
    assert leftovers(tmp_path) == ["f.png"]


def test_unreachable_host_is_retryable(http: httpx.Client, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="ConnectError") as caught:
        download_file(http, "http://127.0.0.1:9/none.png", tmp_path / "f.png", max_bytes=1_000_000)
    assert caught.value.retryable is True
    assert leftovers(tmp_path) == []


def test_body_shorter_than_its_content_length_is_retryable(tmp_path: Path) -> None:
    # A mock, not the CDN above: over a real socket h11 raises RemoteProtocolError on a short
    # body before download_file can compare the count itself; a mock stream has no such check.
    half = len(PNG) // 2

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "image/png", "Content-Length": str(len(PNG))}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(PNG[:half]))

    with httpx.Client(transport=httpx.MockTransport(answer)) as http, pytest.raises(DownloadError) as caught:
        download_file(http, "https://cdn.example/f.png", tmp_path / "f.png", max_bytes=1_000_000)
    assert caught.value.retryable is True
    assert f"cut short: {half:,} of {len(PNG):,} bytes" in str(caught.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("size", "max_pixels"), [((40, 30), 1199), ((2000, 1500), 2_999_999)])
def test_image_over_the_pixel_cap_is_refused(
    cdn: CDN, http: httpx.Client, tmp_path: Path, size: tuple[int, int], max_pixels: int
) -> None:
    cdn.routes["/f"] = Route(image_bytes("PNG", size))
    with pytest.raises(DownloadError, match=f"more than the cap of {max_pixels:,}") as caught:
        download_file(http, cdn.url("/f"), tmp_path / "f.png", max_bytes=10_000_000, max_pixels=max_pixels)
    assert caught.value.retryable is False
    assert leftovers(tmp_path) == []


def test_image_at_the_pixel_cap_is_accepted(cdn: CDN, http: httpx.Client, tmp_path: Path) -> None:
    cdn.routes["/f"] = Route(PNG)
    got = download_file(http, cdn.url("/f"), tmp_path / "f.png", max_bytes=1_000_000, max_pixels=40 * 30)
    assert (got.width, got.height) == (40, 30)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (12_000, 9_000, "12000x9000, 108,000,000 pixels, more than the cap of 100,000,000"),
        (30_000, 30_000, "too many pixels"),  # Pillow itself refuses it on open
    ],
)
def test_pixel_cap_is_checked_before_decoding(
    tmp_path: Path, http: httpx.Client, width: int, height: int, message: str
) -> None:
    """A tiny PNG whose header claims a huge size: refused from the header alone, with the default cap."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width and height
    png[29:33] = zlib.crc32(png[12:29]).to_bytes(4, "big")  # and the IHDR CRC over type and data
    with pytest.raises(DownloadError, match=message) as caught:
        download_file(http, data_uri(bytes(png)), tmp_path / "f.png", max_bytes=1_000_000)
    assert caught.value.retryable is False
    assert leftovers(tmp_path) == []
