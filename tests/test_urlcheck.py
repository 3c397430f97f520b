"""`check_urls`: a HEAD on each distinct image URL, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runner.batches.urlcheck import check_urls
from tests.test_simulator import png_data_uri
from tests.test_simulator_inputs import ImageServer

REFUSED = "http://127.0.0.1:9/a.png"  # nothing listens on the discard port


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


def test_reports_exactly_the_bad_urls_and_progress(images: ImageServer) -> None:
    good = [images.url(path) for path in ("/ok.png", "/redirect.png", "/untyped.png", "/no-head.png")]
    bad = {
        images.url("/missing.png"): "HTTP 404 Not Found",
        images.url("/page.html"): "content-type text/html, not an image",
        images.url("/slow.png"): "timed out after 0.5 s",
    }
    urls = [*good, *bad, REFUSED, images.url("/ok.png"), png_data_uri(), "in/a.png", images.url("/missing.png")]
    progress: list[tuple[int, int]] = []
    failing = check_urls(urls, concurrency=3, timeout_s=0.5, on_progress=lambda done, total: progress.append(
        (done, total)))  # fmt: skip
    assert set(failing) == {*bad, REFUSED}
    assert {url: failing[url] for url in bad} == bad
    assert failing[REFUSED].startswith("cannot connect: ConnectError")
    assert all("\n" not in reason for reason in failing.values())
    total = len(good) + len(bad) + 1  # distinct http(s) URLs only
    assert progress == [(done, total) for done in range(total + 1)]
    assert images.hits("/missing.png") == 1, "each distinct URL once"
    assert images.hits("/ok.png") == 2, "once, and once more through the redirect"


def test_a_refused_head_falls_back_to_a_ranged_get(images: ImageServer) -> None:
    assert check_urls([images.url("/no-head.png")]) == {}
    assert images.calls == [("HEAD", "/no-head.png", None), ("GET", "/no-head.png", "bytes=0-0")]


def test_checks_at_most_concurrency_at_once(images: ImageServer) -> None:
    urls = [images.url(f"/held/{n}") for n in range(8)]
    assert check_urls(urls, concurrency=images.concurrency) == {}
    assert images.max_in_flight == images.concurrency
    assert [method for method, _, _ in images.calls] == ["HEAD"] * 8


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1", "invalid URL"),
        ("http://", "cannot connect"),
        ("http://a..b/x.png", "cannot connect"),
    ],
)
def test_never_raises_for_a_bad_url(url: str, reason: str) -> None:
    assert check_urls([url])[url].startswith(reason)


def test_nothing_to_check() -> None:
    progress: list[tuple[int, int]] = []
    assert check_urls([png_data_uri(), "a.png"], on_progress=lambda *call: progress.append(call)) == {}
    assert progress == [(0, 0)]
    with pytest.raises(ValueError, match="concurrency"):
        check_urls([], concurrency=0)
