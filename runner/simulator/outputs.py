"""What each simulated endpoint returns, and the output files it serves.

Outputs are made on the first result fetch, not when the run ends, and their
bytes are kept in a bounded LRU cache: an evicted file is rendered again,
byte for byte, since it depends only on the request's input and seed.
Once the request is purged (past retention) its result and files are dropped
and answer 404: unlike fal's CDN, files here live no longer than the result.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from jobs.endpoints import IMAGE_SIZE_PRESETS, KNOWN_ENDPOINTS, WAN22_I2I, WAN25_I2I
from runner.simulator.imaging import FileSpec, ImageFormat, data_uri_bytes, decode_image, render_file
from runner.simulator.requests import SimRequest
from runner.simulator.state import RequestStore

ECHO_APP = "wan-batch-sim/echo"
ECHO_SIZE_PX = 64
WAN22_LONG_SIDE_PX = 1024
WAN25_SIZES = IMAGE_SIZE_PRESETS
#: Stands for the address clients use, which is not known until they fetch the result.
_SIZING_BASE_URL = "http://127.0.0.1:65535"
_FILE_PATH = re.compile(r"/files/(?P<id>[0-9a-f-]{36})/(?P<index>\d+)\.(?:png|jpeg)$")
_FIELD_PART = re.compile(r"(\w+)|\[(\d+)\]")


@dataclass(frozen=True)
class OutputFile:
    """A served output file: its bytes and content type."""

    data: bytes
    content_type: str


def serves(endpoint: str) -> bool:
    """Whether the simulator runs this endpoint id: the two Wan models and the echo app."""
    return endpoint in KNOWN_ENDPOINTS or "/".join(endpoint.split("/")[:2]) == ECHO_APP


def validation_detail(errors: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A 422 body's `detail` for (field path, message) pairs of a schema check."""
    return [error_detail(path, message, _error_type(message)) for path, message in errors]


def error_detail(path: str, message: str, error_type: str) -> dict[str, Any]:
    """One entry of a 422 `detail`, FastAPI style: `loc` is "body", then `image_urls[0]` as its parts."""
    loc: list[str | int] = ["body"]
    for name, index in _FIELD_PART.findall(path):
        loc.append(int(index) if index else name)
    return {"loc": loc, "msg": message, "type": error_type}


def _error_type(message: str) -> str:
    if message == "required field is missing":
        return "missing"
    return "extra_forbidden" if message.startswith("unknown field") else "value_error"


def plan_files(endpoint: str, body: dict[str, Any], seed: int, source: Image.Image | None) -> list[FileSpec]:
    """The files a request outputs; several images take seed, seed+1, ..."""
    if endpoint == WAN25_I2I:
        width, height = _wan25_size(body.get("image_size"))
        count = int(body.get("num_images", 1))
        return [FileSpec(width, height, "png", seed + n) for n in range(count)]
    if endpoint == WAN22_I2I:
        width, height = _wan22_size(str(body.get("aspect_ratio", "auto")), source)
        fmt: ImageFormat = "png" if body.get("image_format") == "png" else "jpeg"
        return [FileSpec(width, height, fmt, seed)]
    return [FileSpec(ECHO_SIZE_PX, ECHO_SIZE_PX, "png", seed)]


def _wan25_size(value: Any) -> tuple[int, int]:
    if isinstance(value, dict):
        return int(value["width"]), int(value["height"])
    return WAN25_SIZES.get(str(value), WAN25_SIZES["square"])


def _wan22_size(aspect_ratio: str, source: Image.Image | None) -> tuple[int, int]:
    """Longest side WAN22_LONG_SIDE_PX; "auto" keeps the input's aspect (square if unread)."""
    ratio_w, _, ratio_h = aspect_ratio.partition(":")
    if ratio_w.isdigit() and ratio_h.isdigit() and int(ratio_w) and int(ratio_h):
        width, height = int(ratio_w), int(ratio_h)
    else:
        width, height = source.size if source is not None else (1, 1)
    scale = WAN22_LONG_SIDE_PX / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def source_ref(body: dict[str, Any]) -> str | None:
    """The input image an output derives from: `image_url`, or the first of `image_urls`."""
    ref = body.get("image_url")
    urls = body.get("image_urls")
    if not isinstance(ref, str) and isinstance(urls, list) and urls:
        ref = urls[0]
    return ref if isinstance(ref, str) else None


def output_seed(endpoint: str, body: dict[str, Any], drawn_seed: int) -> int:
    """The input's `seed` (both Wan endpoints take one), else the one drawn at submit."""
    seed = body.get("seed") if endpoint in (WAN25_I2I, WAN22_I2I) else None
    return seed if isinstance(seed, int) else drawn_seed


def result_body(endpoint: str, body: dict[str, Any], images: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The model's output, in the shape the endpoint returns it."""
    if endpoint == WAN25_I2I:
        seeds = [seed + n for n in range(len(images))]
        return {"images": images, "seeds": seeds, "actual_prompt": body.get("prompt")}
    if endpoint == WAN22_I2I:
        return {"image": images[0], "seed": seed, "prompt": body.get("prompt")}
    return {"echo": body, "images": images}


def result_size_bytes(request: SimRequest) -> int:
    """The size of the result body of a request that ends OK, without rendering its files.

    Near enough to place it either side of fal's 10 KB line: the files' sizes
    and the address clients use change it by a few bytes.
    """
    endpoint, body = request.submission.endpoint, _model_input(request)
    seed = output_seed(endpoint, body, request.drawn_seed)
    specs = plan_files(endpoint, body, seed, None)
    images = [_describe(spec, b"", _SIZING_BASE_URL, request.id, index) for index, spec in enumerate(specs)]
    return len(json.dumps(result_body(endpoint, body, images, seed)).encode("utf-8"))


class FileCache:
    """Bytes by key, least recently used evicted past a byte budget. Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        self._budget_bytes = budget_bytes
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._size_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._size_bytes += len(data)
            while self._size_bytes > self._budget_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._size_bytes -= len(evicted)

    def discard(self, key: tuple[str, int]) -> None:
        with self._lock:
            data = self._items.pop(key, None)
            if data is not None:
                self._size_bytes -= len(data)


class Outputs:
    """Results of successful requests and the files they name, until the request is purged."""

    def __init__(self, store: RequestStore, cache_bytes: int, clock: Callable[[], float],
                 stored_file: Callable[[str], bytes | None]) -> None:  # fmt: skip
        """`stored_file` gives the bytes of a file uploaded to the simulator's storage, or None."""
        self._store = store
        self._cache = FileCache(cache_bytes)
        self._clock = clock
        self._stored_file = stored_file
        self._results: dict[str, dict[str, Any]] = {}
        self._plans: dict[str, list[FileSpec]] = {}
        self._lock = threading.Lock()

    def result(self, request: SimRequest, base_url: str) -> dict[str, Any]:
        """The output of a request that ended OK; renders its files on the first call."""
        with self._lock:
            cached = self._results.get(request.id)
        if cached is not None:
            return cached
        endpoint, body = request.submission.endpoint, _model_input(request)
        source = self._source(endpoint, body)
        seed = output_seed(endpoint, body, request.drawn_seed)
        specs = plan_files(endpoint, body, seed, source)
        images = []
        for index, spec in enumerate(specs):
            data = render_file(source, _fallback_key(endpoint, body), spec)
            self._cache.put((request.id, index), data)
            images.append(_describe(spec, data, base_url, request.id, index))
        result = result_body(endpoint, body, images, seed)
        with self._lock:
            if request.purged:  # purged while rendering: hold nothing more for it
                return result
            self._plans[request.id] = specs
            return self._results.setdefault(request.id, result)

    def forget(self, request: SimRequest) -> None:
        """Drop the result and the cached files of a purged request."""
        with self._lock:
            self._results.pop(request.id, None)
            specs = self._plans.pop(request.id, [])
        for index in range(len(specs)):
            self._cache.discard((request.id, index))

    def held_result(self, request_id: str) -> dict[str, Any] | None:
        """The result made for a request, while it is held (made on the first fetch, dropped at the purge)."""
        with self._lock:
            return self._results.get(request_id)

    def held_results(self) -> int:
        """How many results are held in memory, for /_stats."""
        with self._lock:
            return len(self._results)

    def file(self, request_id: str, index: int) -> OutputFile | None:
        """An output file's bytes, or None if unknown or past its lifecycle."""
        request = self._store.find(request_id)
        with self._lock:
            specs = self._plans.get(request_id, [])
        if request is None or request.purged or index >= len(specs) or self._files_expired(request):
            return None
        data = self._cache.get((request_id, index))
        if data is None:
            endpoint, body = request.submission.endpoint, _model_input(request)
            source = self._source(endpoint, body)
            data = render_file(source, _fallback_key(endpoint, body), specs[index])
            if request.purged:  # its input went while rendering: what was made is not its file
                return None
            self._cache.put((request_id, index), data)
        return OutputFile(data, specs[index].content_type)

    def own_file(self, url: str) -> bytes | None:
        """The bytes of the output file of this simulator that `url` names, or None (not one, or gone)."""
        try:
            match = _FILE_PATH.search(urlsplit(url).path)
        except ValueError:  # not a URL at all
            return None
        found = self.file(match["id"], int(match["index"])) if match else None
        return found.data if found is not None else None

    def _files_expired(self, request: SimRequest) -> bool:
        ttl_s = request.submission.files_ttl_s
        done_at = request.completed_at
        return ttl_s is not None and done_at is not None and self._clock() > done_at + ttl_s

    def _source(self, endpoint: str, body: dict[str, Any]) -> Image.Image | None:
        """The input image, when it is a data URI, one of this simulator's own files or an upload still held."""
        ref = source_ref(body)
        if ref is None:
            return None
        data = data_uri_bytes(ref)
        if data is None:
            data = self.own_file(ref)
        if data is None:
            data = self._stored_file(ref)
        return decode_image(data) if data is not None else None


def _model_input(request: SimRequest) -> dict[str, Any]:
    """The body as the model reads it: validated for a known endpoint, else as sent."""
    endpoint = KNOWN_ENDPOINTS.get(request.submission.endpoint)
    if endpoint is None:
        return request.submission.body
    return endpoint.validate_input(request.submission.body).body


def _fallback_key(endpoint: str, body: dict[str, Any]) -> str:
    return f"{endpoint}|{source_ref(body)}"


def _describe(spec: FileSpec, data: bytes, base_url: str, request_id: str, index: int) -> dict[str, Any]:
    name = f"{index}.{spec.fmt}"
    return {
        "url": f"{base_url}/files/{request_id}/{name}",
        "content_type": spec.content_type,
        "file_name": f"{request_id}-{name}",
        "file_size": len(data),
        "width": spec.width,
        "height": spec.height,
    }
