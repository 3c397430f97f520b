"""Turn a manifest into a validated batch of jobs.

`parse_manifest` reads the bytes, expands `matrix` over `defaults` (a row's
own values win), types CSV cells by the endpoint's schema, validates every
job and gives each a stable id. It reports every problem at once and never
raises on bad input.
"""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from jobs.batch import Batch, Tally
from jobs.diagnostics import Diagnostic, Severity, dedupe
from jobs.endpoints import Endpoint, FieldKind, close_known_endpoint, resolve_endpoint
from jobs.formats import open_manifest
from jobs.images import ImageRefKind, classify_image_ref, image_ref_values
from jobs.job import (
    Job,
    auto_job_id,
    canonical_json,
    check_user_id,
    fingerprint,
    variant_job_id,
    variant_name,
)
from jobs.manifest_file import Layer, ManifestFile, Record
from jobs.values import load_json, value_problem

#: Separates the values of a list field (e.g. `image_urls`) in one CSV cell.
LIST_SEPARATOR = "|"
#: Fields of a row that steer the runner and are never sent.
RESERVED = ("id", "endpoint", "pass_through")
#: How a CSV cell says true or false for `pass_through`.
_CSV_BOOLEANS = {"true": True, "false": False}
META_PREFIX = "_"


@dataclass(frozen=True)
class ManifestOptions:
    #: Endpoint of rows that name none (`--endpoint`).
    default_endpoint: str | None = None
    #: A manifest that would make more jobs than this (its rows times its matrix) is refused before any is
    #: made (`--max-jobs`).
    max_jobs: int = 100_000
    #: Endpoint ids close to a known one that are meant as written (`--allow-endpoint`), not typos.
    allowed_endpoints: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ImageSite:
    """An image reference in the manifest, for checks that need I/O (files beside it)."""

    line: int | None
    field: str
    value: str
    kind: ImageRefKind


#: What is wrong with a local image or data URI of the manifest (None: nothing), from I/O the caller does.
ImageCheck = Callable[[ImageSite], "str | None"]


def parse_manifest(file: str, data: bytes | Iterable[bytes], options: ManifestOptions | None = None,
                   check_image: ImageCheck | None = None, keep_jobs: bool = True) -> Batch:  # fmt: skip
    """Read, expand and validate a manifest (its bytes, or its lines); `file` names it in every diagnostic.

    `check_image` checks each local image path and data URI (none are checked without it). Without
    `keep_jobs`, jobs are counted and forgotten: validating a million rows holds little more than their ids.
    """
    options = options or ManifestOptions()
    manifest = open_manifest(file, io.BytesIO(data) if isinstance(data, bytes) else data)
    builder = _BatchBuilder(manifest, options, check_image, keep_jobs)
    builder.build()
    found = dedupe(manifest.diagnostics + builder.diagnostics)
    found.sort(key=lambda d: d.line or 0)
    return Batch(file, builder.jobs, builder.records, found, builder.made, manifest.complete)


class _BatchBuilder:
    def __init__(self, manifest: ManifestFile, options: ManifestOptions, check_image: ImageCheck | None,
                 keep_jobs: bool) -> None:  # fmt: skip
        self.manifest = manifest
        self.options = options
        self.check_image = check_image
        self.keep_jobs = keep_jobs
        self.diagnostics: list[Diagnostic] = []
        self.jobs: list[Job] = []
        self.made = Tally()
        self.records = 0
        self._endpoints: dict[str, Endpoint | None] = {}
        #: Each user id: the row and line it was first seen at, packed in one int (a million rows are many tuples).
        self._user_ids: dict[str, int] = {}
        #: Each job id made: the line of its first job; and how often each repeated id was made.
        self._job_lines: dict[str, int | None] = {}
        self._repeats: Counter[str] = Counter()
        #: The names of jobs named otherwise than by their id (matrix variants).
        self._names: set[str] = set()

    def build(self) -> None:
        if self.manifest.shared_values_bad:
            return
        records: Iterable[Record] = self.manifest.records
        if not self.manifest.has_jobs_list:
            records = [Record(1, Layer(line=self.manifest.matrix.line))]
        if isinstance(records, list) and not self._fits(sum(self._variant_count(r) for r in records)):
            return  # refused before a job is made: a matrix may expand to millions
        counted = 0
        for record in records:
            self.records += 1
            counted += self._variant_count(record)
            if record.broken or counted > self.options.max_jobs:
                continue
            made = 0
            for job in self._expand(record):
                job = self._settle_id(job)
                made += 1
                self.made.add(job)
                if self.keep_jobs:
                    self.jobs.append(job)
            self.made.row_done(made)
        if not self._fits(counted):
            self.jobs.clear()
            self.made = Tally()
        if not self.manifest.has_jobs_list:
            self.records = 1  # the matrix alone is one row

    def _fits(self, total: int) -> bool:
        """Whether `total` jobs are allowed (if not, it is reported)."""
        if total <= self.options.max_jobs:
            return True
        limit = self.options.max_jobs
        if self.manifest.matrix.values:
            what, line, field = "its matrix expands to", self.manifest.matrix.line, "matrix"
        else:
            what, line, field = "it has", None, None
        self._error(line, field, f"{what} {total:,} jobs, more than {limit:,}: raise --max-jobs to run them all, or"
                                 " split the manifest")  # fmt: skip
        return False

    def _matrix_keys(self, record: Record) -> list[str]:
        return [key for key in self.manifest.matrix.values if key not in record.layer.values]

    def _variant_count(self, record: Record) -> int:
        count = 1
        for key in self._matrix_keys(record):
            count *= len(self.manifest.matrix.values[key])
        return count

    def _expand(self, record: Record) -> Iterator[Job]:
        """The valid jobs of `record`, one per combination of its matrix values, made as they are taken."""
        keys = self._matrix_keys(record)
        several = self._variant_count(record) > 1
        combos = itertools.product(*(self.manifest.matrix.values[key] for key in keys))
        for number, combo in enumerate(combos, 1):
            job = self._make_job(record, dict(zip(keys, combo, strict=True)), number, several)
            if job is not None:
                yield job

    def _make_job(self, record: Record, combo: dict[str, Any], variant: int, several: bool) -> Job | None:
        merged = _Merged(self.manifest, record, combo)
        before = len(self.diagnostics)  # before the endpoint's: a bad pass_through keeps the row from running
        endpoint = self._endpoint_of(merged)
        if endpoint is None:
            return None
        raw, meta = self._inputs(merged, endpoint)
        result = endpoint.validate_input(raw)
        for name, message in result.errors:
            self._error(merged.line_of(name), name, message)
        for name, message in result.warnings:
            self._warn(merged.line_of(name), name, message)
        self._check_images(merged, endpoint, raw)
        try:
            canonical = canonical_json(result.body)
        except (TypeError, ValueError) as exc:
            self._error(merged.line, None, f"input is not plain JSON data: {exc}")
            return None
        user_id = self._user_id(merged, record.row)
        if any(d.severity is Severity.ERROR for d in self.diagnostics[before:]):
            return None
        digest = fingerprint(endpoint.id, canonical)
        name = ""
        if user_id is None:
            job_id = auto_job_id(digest)
        elif several:
            job_id, name = variant_job_id(user_id, digest), variant_name(user_id, combo) or ""
        else:
            job_id = user_id
        return Job(
            id=job_id, endpoint=endpoint.id, input=result.body, fingerprint=digest, file=self.manifest.file,
            line=merged.line, row=record.row, variant=variant, meta=meta, matrix=combo, name=name,
        )  # fmt: skip

    def _endpoint_of(self, merged: _Merged) -> Endpoint | None:
        name = merged.get("endpoint") or self.manifest.endpoint or self.options.default_endpoint
        if name is None:
            self._error(merged.line, "endpoint", "no endpoint: add an `endpoint` column/key or pass --endpoint")
            return None
        if not isinstance(name, str):
            self._error(merged.line_of("endpoint"), "endpoint", "must be a string")
            return None
        if name not in self._endpoints:
            try:
                self._endpoints[name] = resolve_endpoint(name)
            except ValueError as exc:
                self._endpoints[name] = None
                self._error(merged.line_of("endpoint"), "endpoint", str(exc))
        endpoint = self._endpoints[name]
        meant = self._pass_through(merged) or name in self.options.allowed_endpoints
        if endpoint is None or endpoint.is_known or meant:
            return endpoint
        return self._unless_typo(merged, endpoint)

    def _unless_typo(self, merged: _Merged, endpoint: Endpoint) -> Endpoint | None:
        """The pass-through `endpoint`, unless its id is close to a known one (then an error)."""
        close = close_known_endpoint(endpoint.id)
        if close is None:
            return endpoint
        if merged.get("endpoint"):
            line = merged.line_of("endpoint")
        else:  # the YAML's top-level key, or --endpoint (None: one error for the whole file)
            line = self.manifest.endpoint_line if self.manifest.endpoint else None
        self._error(line, "endpoint", (
            f"unknown endpoint {endpoint.id!r}; did you mean {close!r}? If it is meant as written, "
            f"confirm it with --allow-endpoint {endpoint.id} (or `pass_through: true` in the manifest)"
        ))  # fmt: skip
        return None

    def _pass_through(self, merged: _Merged) -> bool:
        """Whether the manifest or the row confirms a pass-through endpoint (`pass_through: true`)."""
        value = merged.get("pass_through")
        if isinstance(value, str) and "pass_through" in merged.text_keys:
            value = _CSV_BOOLEANS.get(value.strip().lower(), value)
        if value is not None and not isinstance(value, bool):
            self._error(merged.line_of("pass_through"), "pass_through", "must be true or false")
            return False
        return value if isinstance(value, bool) else self.manifest.pass_through

    def _inputs(self, merged: _Merged, endpoint: Endpoint) -> tuple[dict[str, Any], dict[str, str]]:
        """Split merged values into the model input and `_meta` columns; type CSV text."""
        raw: dict[str, Any] = {}
        meta: dict[str, str] = {}
        for key, value in merged.values.items():
            if key in RESERVED:
                continue
            if key.startswith(META_PREFIX):
                meta[key] = value if isinstance(value, str) else json.dumps(value)
                continue
            kind = endpoint.field_kinds.get(key, FieldKind.SCALAR)
            if key in merged.text_keys:
                value = self._type_cell(merged, key, value, kind)
            elif kind is FieldKind.LIST and not isinstance(value, list):
                value = [value]
            raw[key] = value
        return raw, meta

    def _type_cell(self, merged: _Merged, key: str, text: str, kind: FieldKind) -> Any:
        if kind is FieldKind.LIST:
            return [part.strip() for part in text.split(LIST_SEPARATOR) if part.strip()]
        if kind is FieldKind.OBJECT and text.lstrip().startswith("{"):
            try:
                value = load_json(text)
            except json.JSONDecodeError as exc:
                self._error(merged.line_of(key), key, f"invalid JSON object: {exc.msg}")
                return text
            except ValueError as exc:
                self._error(merged.line_of(key), key, str(exc))
                return text
            problem = value_problem(value)
            if problem is None:
                return value
            self._error(merged.line_of(key), key, problem)
        return text

    def _check_images(self, merged: _Merged, endpoint: Endpoint, raw: dict[str, Any]) -> None:
        for name in endpoint.image_fields:
            value = raw.get(name)
            for index, ref in image_ref_values(value):
                label = name if index is None else f"{name}[{index}]"
                try:
                    kind = classify_image_ref(ref).kind
                except ValueError as exc:
                    self._error(merged.line_of(name), label, str(exc))
                    continue
                if kind is ImageRefKind.URL or self.check_image is None:
                    continue
                problem = self.check_image(ImageSite(merged.line_of(name), label, ref, kind))
                if problem:
                    self._error(merged.line_of(name), label, problem)

    def _user_id(self, merged: _Merged, row: int) -> str | None:
        if merged.get("id") is None:
            return None
        try:
            user_id = check_user_id(merged.get("id"))
        except ValueError as exc:
            self._error(merged.line_of("id"), "id", str(exc))
            return None
        first = self._user_ids.setdefault(user_id, _pack(row, merged.line))
        first_row, first_line = _unpack(first)
        if first_row != row:
            self._error(merged.line_of("id"), "id", f"duplicate id {user_id!r} (first at line {first_line})")
        return user_id

    def _settle_id(self, job: Job) -> Job:
        """The job, numbered (`<id>-2`, ...) if an earlier one had the same id (an identical input), and warned of;
        named by its id if its name is an earlier variant's (file names are unique in a batch)."""
        if job.id in self._job_lines:
            self._repeats[job.id] += 1
            new_id = f"{job.id}-{self._repeats[job.id] + 1}"
            self._warn(job.line, None, f"same input as line {self._job_lines[job.id]}; runs again as job {new_id!r}")
            job = replace(job, id=new_id, name="")
        self._job_lines[job.id] = job.line
        if job.name in self._names:  # 7 and "7" read alike
            job = replace(job, name="")
        elif job.name:
            self._names.add(job.name)
        return job

    def _error(self, line: int | None, name: str | None, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.manifest.file, line, name, message))

    def _warn(self, line: int | None, name: str | None, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.manifest.file, line, name, message, Severity.WARNING))


def _pack(row: int, line: int | None) -> int:
    return row << 32 | (line or 0)


def _unpack(packed: int) -> tuple[int, int | None]:
    return packed >> 32, (packed & 0xFFFFFFFF) or None


class _Merged:
    """A job's values: `defaults`, then its matrix combination, then the row; with lines."""

    def __init__(self, manifest: ManifestFile, record: Record, combo: dict[str, Any]) -> None:
        row, defaults, matrix = record.layer, manifest.defaults, manifest.matrix
        self.values = {**defaults.values, **combo, **row.values}
        self.text_keys = row.text_keys
        self.line = row.line
        self._lines = {
            **{key: defaults.key_lines.get(key) for key in defaults.values},
            **{key: matrix.key_lines.get(key) for key in combo},
            **{key: row.key_lines.get(key, row.line) for key in row.values},
        }

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def line_of(self, path: str) -> int | None:
        """The line of the value a field path (`image_size.width`) came from."""
        top = path if path in self._lines else path.split(".")[0].split("[")[0]
        return self._lines.get(top) or self.line
