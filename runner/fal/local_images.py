"""Local image files named in a manifest: checked at validation, inlined at submit time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from jobs.endpoints import resolve_endpoint
from jobs.errors import LocalImageError, UploadExpiredError
from jobs.images import (
    ImageRefKind,
    classify_image_ref,
    data_uri_size_bytes,
    encode_data_uri,
    image_ref_values,
)
from jobs.job import Job
from jobs.manifest import ImageCheck, ImageSite


@dataclass(frozen=True)
class _Probe:
    mime: str | None
    size_bytes: int
    problem: str | None


def image_checker(base_dir: Path, max_bytes: int) -> ImageCheck:
    """What is wrong with a manifest's local file (relative to `base_dir`) or data URI; each file is read once."""
    probe = lru_cache(maxsize=4096)(_probe_file)

    def check(site: ImageSite) -> str | None:
        return _ref_problem(site.value, site.kind, base_dir, max_bytes, probe)

    return check


def inline_local_images(job: Job, base_dir: Path, max_bytes: int) -> dict[str, Any]:
    """The job's input with each local image path replaced by a data URI.

    Raises LocalImageError naming the file when one cannot be read or is over `max_bytes`,
    or naming the reference when it is not one (recorded before validation refused such).
    """

    def data_uri(name: str, ref: str) -> str:
        path = base_dir / ref
        probe = _probe_file(path, max_bytes)
        if probe.problem or probe.mime is None:
            raise LocalImageError(f"{job.id}: {name}: {probe.problem}")
        return encode_data_uri(path.read_bytes(), probe.mime)

    return _with_local_images(job, data_uri)


def uploaded_local_images(job: Job, urls: Mapping[str, str | None]) -> dict[str, Any]:
    """The job's input with each local image path replaced by the URL of its upload to fal storage (`urls`).

    Raises LocalImageError when a path has no live upload (it expired, or was never recorded).
    """

    def url(name: str, ref: str) -> str:
        found = urls.get(ref)
        if found is None:
            raise UploadExpiredError(f"{job.id}: {name}: the upload of {ref} to fal storage has expired; run the batch"
                                  " again where its images are (it uploads them again), then retry its failed jobs")
        return found

    return _with_local_images(job, url)


def _with_local_images(job: Job, replace: Callable[[str, str], str]) -> dict[str, Any]:
    body = dict(job.input)
    for name, index, ref in job_image_refs(job):
        try:
            kind = classify_image_ref(ref).kind
        except ValueError as exc:
            raise LocalImageError(f"{job.id}: {name}: {exc}") from None
        if kind is not ImageRefKind.LOCAL_PATH:
            continue
        value = replace(name, ref)
        if index is None:
            body[name] = value
        else:
            body[name] = [*body[name][:index], value, *body[name][index + 1 :]]
    return body


def local_refs(jobs: list[Job]) -> dict[str, None]:
    """The local image paths the jobs name, each once, in order."""
    refs: dict[str, None] = {}
    for job in jobs:
        for _name, _index, ref in job_image_refs(job):
            if _is_local(ref):
                refs[ref] = None
    return refs


def _is_local(ref: str) -> bool:
    try:
        return classify_image_ref(ref).kind is ImageRefKind.LOCAL_PATH
    except ValueError:  # refused at validation
        return False


def job_image_refs(job: Job) -> list[tuple[str, int | None, str]]:
    """(field, index in its list or None, value) of each image reference of the job's input."""
    fields = resolve_endpoint(job.endpoint).image_fields
    return [(name, index, ref) for name in fields for index, ref in image_ref_values(job.input.get(name))]


def _ref_problem(ref: str, kind: ImageRefKind, base_dir: Path, max_bytes: int, probe: Any) -> str | None:
    if kind is ImageRefKind.DATA_URI and data_uri_size_bytes(ref) > max_bytes:
        return f"data URI holds {data_uri_size_bytes(ref):,} bytes, more than the cap of {max_bytes:,}"
    if kind is ImageRefKind.LOCAL_PATH:
        result: _Probe = probe(base_dir / ref, max_bytes)
        return result.problem
    return None


def _probe_file(path: Path, max_bytes: int) -> _Probe:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return _Probe(None, 0, f"no such file: {path}")
    except OSError as exc:
        return _Probe(None, 0, f"cannot read {path}: {exc.strerror}")
    except ValueError as exc:  # a NUL or a lone surrogate: no file system holds such a name
        return _Probe(None, 0, f"not a possible file name: {str(path)!a} ({exc})")
    if not path.is_file():
        return _Probe(None, size, f"not a file: {path}")
    if size > max_bytes:
        return _Probe(None, size, f"{path} is {size:,} bytes, more than the cap of {max_bytes:,} (--max-image-mb)")
    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return _Probe(None, size, f"not a readable image: {path} ({exc.__class__.__name__})")
    mime = Image.MIME.get(image_format or "")
    if mime is None:
        return _Probe(None, size, f"image format {image_format} has no MIME type: {path}")
    return _Probe(mime, size, None)
