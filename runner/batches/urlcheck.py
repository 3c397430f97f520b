"""Whether the image URLs a manifest names answer, asked before any job is submitted.

A HEAD on each distinct http(s) URL, a few at a time. A server that refuses HEAD
is asked for the first byte with a ranged GET instead. What fails is what fal
would fail to fetch: an error status, no connection, or something not an image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

import httpx

#: HEAD answers that say "not HEAD" rather than "not there": 405 and 501, and 403 from a URL signed
#: for GET only (S3's presigned URLs), which the ranged GET then settles.
_HEAD_REFUSED = frozenset({403, 405, 501})
#: Content types of a server that does not know what it holds: fal reads the bytes, so they may be an image.
_UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_USER_AGENT = "wan-batch-urlcheck"


def check_urls(
    urls: Iterable[str],
    concurrency: int = 8,
    timeout_s: float = 10,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """The URLs that fail, each with a one-line reason; the others are absent.

    Only distinct http(s) URLs are checked (data URIs and local paths are not URLs to fetch);
    `concurrency` are checked at once, each within `timeout_s`. `on_progress(done, total)` is
    called in the calling thread, first with done 0, then after each URL. Never raises for a
    bad URL; raises ValueError when `concurrency` is below 1.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    distinct = list(dict.fromkeys(url for url in urls if url.lower().startswith(("http://", "https://"))))
    total = len(distinct)
    if on_progress is not None:
        on_progress(0, total)
    if not distinct:
        return {}
    reasons: dict[str, str] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=timeout_s, limits=limits, follow_redirects=True,
                      headers={"User-Agent": _USER_AGENT}) as client:  # fmt: skip
        executor = ThreadPoolExecutor(max_workers=min(concurrency, total), thread_name_prefix="urlcheck")
        try:
            futures: dict[Future[str | None], str] = {
                executor.submit(_url_problem, client, url, timeout_s): url for url in distinct
            }
            for done, future in enumerate(as_completed(futures), start=1):
                reason = future.result()
                if reason is not None:
                    reasons[futures[future]] = reason
                if on_progress is not None:
                    on_progress(done, total)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: no new checks start
    return {url: reasons[url] for url in distinct if url in reasons}


def _url_problem(client: httpx.Client, url: str, timeout_s: float) -> str | None:
    """Why `url` would not give an image, in one line, or None when it answers with one."""
    try:
        response = client.head(url)
        if response.status_code in _HEAD_REFUSED:
            with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
                pass  # the status and headers are all that is needed: the body is never read
    except httpx.TimeoutException:
        return f"timed out after {timeout_s:g} s"
    except httpx.InvalidURL as exc:
        return _one_line(f"invalid URL: {exc}")
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a host name IDNA refuses
        return _one_line(f"cannot connect: {type(exc).__name__}: {exc}")
    return _response_problem(response)


def _response_problem(response: httpx.Response) -> str | None:
    """Why an answer to a HEAD or ranged GET is not an image, or None when it may be one."""
    if not response.is_success:
        return _one_line(f"HTTP {response.status_code} {response.reason_phrase}".strip())
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type.startswith("image/") or media_type in _UNTYPED:
        return None
    return _one_line(f"content-type {media_type}, not an image")


def _one_line(text: str) -> str:
    return " ".join(text.split())
