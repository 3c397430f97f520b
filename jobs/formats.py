"""Read a manifest's bytes (CSV, TSV, JSONL or YAML) into located records.

Every problem becomes a `Diagnostic` naming the file and line; nothing here
raises on bad input. Typing the values is left to `jobs.manifest`, which
knows each endpoint's schema.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import yaml

from jobs.diagnostics import Diagnostic, Severity
from jobs.errors import TooDeepError
from jobs.values import (
    MAX_NESTING_DEPTH,
    MAX_NUMBER_DIGITS,
    OversizedNumber,
    load_json,
    printable,
    scalar_problem,
    value_problem,
)

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".yaml": "yaml", ".yml": "yaml"}
YAML_KEYS = ("endpoint", "pass_through", "defaults", "matrix", "jobs", "name", "description")
#: CSV column suffix that makes a cell JSON, for fields the schema cannot type (pass-through).
JSON_SUFFIX = ":json"
_MAX_CELL_CHARS = 256 * 1024 * 1024
#: A YAML `jobs` list is read whole, about 5 times slower than the same rows in CSV or JSONL (which stream):
#: longer ones are warned of (bench/bench_manifest.py measures it).
YAML_LIST_ADVISED = 20_000


@dataclass
class Layer:
    """Field values from one place (a row, `defaults`, `matrix`), with the line of each."""

    values: dict[str, Any] = field(default_factory=dict)
    key_lines: dict[str, int] = field(default_factory=dict)
    #: Keys whose values are raw CSV cell text, still to be typed by the schema.
    text_keys: frozenset[str] = frozenset()
    line: int | None = None


@dataclass
class Record:
    """One row, line or `jobs` item: its 1-based number and its fields."""

    row: int
    layer: Layer
    #: Already reported as unreadable; counted, never turned into a job.
    broken: bool = False


@dataclass
class ManifestFile:
    """A manifest as read: file-level settings, records and the problems found."""

    file: str
    #: Read as iterated (once) for CSV, TSV and JSONL; a list for YAML and from `read_manifest`.
    records: Iterable[Record] = field(default_factory=list)
    endpoint: str | None = None
    endpoint_line: int | None = None
    defaults: Layer = field(default_factory=Layer)
    matrix: Layer = field(default_factory=Layer)
    has_jobs_list: bool = True
    #: A top-level `pass_through: true`: endpoint ids close to a known one are meant as written.
    pass_through: bool = False
    #: A value of `defaults` or `matrix` cannot be sent: it shapes every job, so none is made.
    shared_values_bad: bool = False
    #: Some text was read (a manifest of blank lines is empty).
    has_text: bool = False
    #: False when reading stopped before the end (the rest is unread): none of it may run.
    complete: bool = True
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, line: int | None, field_name: str | None, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.file, line, field_name, message))

    def warn(self, line: int | None, field_name: str | None, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.file, line, field_name, message, Severity.WARNING))


def read_manifest(file: str, data: bytes) -> ManifestFile:
    """Parse `data`, named `file` in messages, by the format its suffix names; every record read."""
    out = open_manifest(file, io.BytesIO(data))
    out.records = list(out.records)
    return out


def open_manifest(file: str, source: Iterable[bytes]) -> ManifestFile:
    """Start reading a manifest from its lines (bytes), named `file` in messages.

    CSV, TSV and JSONL records are read one at a time as `records` is iterated
    (once): a manifest of a million rows is never held whole. Their problems
    join `diagnostics` as they are met. YAML is read at once.
    """
    out = ManifestFile(file)
    kind = SUFFIXES.get(PurePath(file).suffix.lower())
    if kind is None:
        out.error(None, None, f"unknown manifest format; use one of {', '.join(SUFFIXES)}")
        return out
    lines = _decoded_lines(out, source)
    if kind in ("csv", "tsv"):
        out.records = _read_csv(out, lines, "," if kind == "csv" else "\t")
    elif kind == "jsonl":
        out.records = _read_jsonl(out, lines)
    else:
        text = "".join(lines)
        if not out.has_text and out.complete:
            out.error(None, None, "empty manifest: no jobs")
        elif out.complete:  # else not UTF-8: said
            _read_yaml(out, text)
    return out


def _checked(out: ManifestFile, records: Iterable[Record]) -> Iterator[Record]:
    """`records`, each marked broken if a value can never be sent where it sits (reported)."""
    for record in records:
        if not record.broken and _layer_problems(out, record.layer):
            record.broken = True
        yield record


def _check_shared_values(out: ManifestFile) -> None:
    for layer, where in ((out.defaults, "defaults"), (out.matrix, "matrix")):
        if _layer_problems(out, layer, where):  # it shapes every job: none is made, even with --skip-invalid
            out.shared_values_bad = True


def _layer_problems(out: ManifestFile, layer: Layer, where: str | None = None) -> list[str]:
    """Report each bad value of `layer` (or bad field name); the keys reported."""
    bad = []
    for key, value in layer.values.items():
        if key in layer.text_keys:
            continue  # CSV text decoded from UTF-8: nothing to find
        problem = scalar_problem(key) or value_problem(value)
        if problem:
            name = printable(str(key)) if where is None else f"{where}.{printable(str(key))}"
            out.error(layer.key_lines.get(key, layer.line), name, problem)
            bad.append(key)
    return bad


def _decoded_lines(out: ManifestFile, source: Iterable[bytes]) -> Iterator[str]:
    """The text of each line (ending kept); a line that is not UTF-8 is reported and ends the reading."""
    for number, raw in enumerate(source, 1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            out.error(number, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the"
                                    " file as UTF-8")  # fmt: skip
            out.complete = False
            return
        if text.strip():
            out.has_text = True
        yield text


# --- CSV / TSV ---------------------------------------------------------------


def _read_csv(out: ManifestFile, lines: Iterable[str], delimiter: str) -> Iterator[Record]:
    csv.field_size_limit(_MAX_CELL_CHARS)  # data URIs in cells outgrow the 128 KiB default
    reader = csv.reader(_universal(lines), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    line, rows = 1, 0
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = _read_header(out, start, cells)
                if header is None:
                    out.complete = False
                    return
                continue
            rows += 1
            yield from _checked(out, [_csv_record(out, rows, start, header, cells)])
    except csv.Error as exc:
        hint = " (a quoted cell is never closed)" if "end of data" in str(exc) else ""
        out.error(line, None, f"malformed CSV: {exc}{hint}")  # the line its record began on
        out.complete = False
        return
    if not out.complete:
        return  # not UTF-8: said
    if not out.has_text:
        out.error(None, None, "empty manifest: no jobs")
    elif header is None:
        out.error(1, None, "no header row: every cell is empty")
    elif not rows and not out.diagnostics:
        out.error(1, None, "no rows under the header")


def _universal(lines: Iterable[str]) -> Iterator[str]:
    """The lines split at a lone CR too, as CSV has it (old Mac files end lines so)."""
    for line in lines:
        if "\r" in line[:-2]:
            yield from io.StringIO(line, newline="")
        else:
            yield line


def _read_header(out: ManifestFile, line: int, cells: list[str]) -> list[str] | None:
    names = [cell.strip() for cell in cells]
    ok = True
    for position, name in enumerate(names, 1):
        if not name:
            out.error(line, None, f"header column {position} has no name")
            ok = False
        elif names.index(name) != position - 1:
            out.error(line, name, "column appears twice in the header")
            ok = False
    return names if ok else None


def _csv_record(out: ManifestFile, row: int, line: int, header: list[str], cells: list[str]) -> Record:
    if len(cells) != len(header):
        out.error(line, None, f"row has {len(cells)} fields, the header has {len(header)}")
        return Record(row, Layer(line=line), broken=True)  # keeps row numbers true
    layer = Layer(line=line)
    text_keys = set()
    broken = False
    for name, cell in zip(header, cells, strict=True):
        if not cell.strip():
            continue  # an empty cell leaves the field unset, so defaults apply
        if name.endswith(JSON_SUFFIX):
            if not _add_json_cell(out, line, layer, name[: -len(JSON_SUFFIX)], cell):
                broken = True  # not a job without that field, even with --skip-invalid
        else:
            layer.values[name] = cell
            text_keys.add(name)
    layer.text_keys = frozenset(text_keys)
    return Record(row, layer, broken=broken)


def _add_json_cell(out: ManifestFile, line: int, layer: Layer, key: str, cell: str) -> bool:
    """Put the cell's JSON value under `key`; whether it could be read (else it is reported)."""
    try:
        layer.values[key] = load_json(cell)
    except json.JSONDecodeError as exc:
        out.error(line, key, f"invalid JSON in a {JSON_SUFFIX} column: {exc.msg}")
        return False
    except ValueError as exc:
        out.error(line, key, str(exc))
        return False
    return True


# --- JSONL -------------------------------------------------------------------


def _read_jsonl(out: ManifestFile, lines: Iterable[str]) -> Iterator[Record]:
    rows = 0
    # Lines end at "\n" only: JSON strings may hold U+2028 and friends.
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            value = load_json(raw, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            out.error(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except _DuplicateKeyError as exc:
            out.error(number, printable(exc.key), "key appears twice in this object")
            continue
        except TooDeepError as exc:
            out.error(number, exc.key, str(exc))
            continue
        if not isinstance(value, dict):
            out.error(number, None, f"expected a JSON object, got {type(value).__name__}")
            continue
        rows += 1
        yield from _checked(out, [Record(rows, Layer(values=value, line=number))])
    if out.complete and not out.has_text:
        out.error(None, None, "empty manifest: no jobs")


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


# --- YAML --------------------------------------------------------------------


class _LocatedDict(dict[str, Any]):
    """A YAML mapping that remembers its line, its keys' lines and repeated keys."""

    line: int
    key_lines: dict[str, int]
    repeated: list[tuple[str, int]]


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _ManifestLoader(_BaseLoader):  # type: ignore[misc]
    pass


def _construct_located_map(loader: Any, node: yaml.MappingNode) -> Iterator[_LocatedDict]:
    data = _LocatedDict()
    data.line, data.key_lines, data.repeated = node.start_mark.line + 1, {}, []
    yield data
    data.update(loader.construct_mapping(node))
    for key_node, _ in node.value:
        key, key_line = str(key_node.value), key_node.start_mark.line + 1
        if key in data.key_lines:
            data.repeated.append((key, key_line))
        data.key_lines.setdefault(key, key_line)


def _construct_int(loader: Any, node: yaml.ScalarNode) -> int | OversizedNumber:
    digits = len(str(node.value).lstrip("+-").replace("_", ""))
    if digits > MAX_NUMBER_DIGITS:
        return OversizedNumber(digits)
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


_ManifestLoader.add_constructor("tag:yaml.org,2002:map", _construct_located_map)
_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_yaml(out: ManifestFile, text: str) -> None:
    try:
        doc = yaml.load(text, Loader=_ManifestLoader)
    except yaml.YAMLError as exc:
        out.error(*_yaml_error_place(exc))
        return
    except (ValueError, TypeError) as exc:  # e.g. an unhashable key, a bad timestamp
        out.error(None, None, f"YAML error: {exc}")
        return
    except RecursionError:  # only the pure-Python loader recurses; libyaml stops at its own depth limit
        out.error(None, None, f"YAML error: nested deeper than {MAX_NESTING_DEPTH} levels")
        return
    if doc is None:
        out.error(None, None, "empty manifest: no jobs")
        return
    if isinstance(doc, list):
        doc = _LocatedDict(jobs=doc)
        doc.line, doc.key_lines, doc.repeated = 1, {"jobs": 1}, []
    if not isinstance(doc, _LocatedDict):
        out.error(1, None, "expected a mapping with `endpoint`, `defaults`, `matrix` and `jobs`")
        return
    _report_repeats(out, doc)
    for key in doc:
        if key not in YAML_KEYS:
            name = key if isinstance(key, str) else repr(key)  # YAML keys may be null, numbers, ...
            out.error(doc.key_lines.get(key, doc.line), name, _unknown_key_message(name))
    _read_yaml_endpoint(out, doc)
    _read_yaml_pass_through(out, doc)
    out.defaults = _read_yaml_layer(out, doc, "defaults")
    out.matrix = _read_yaml_layer(out, doc, "matrix")
    _check_matrix(out)
    _check_shared_values(out)
    _read_yaml_jobs(out, doc)


def _yaml_error_place(exc: yaml.YAMLError) -> tuple[int | None, None, str]:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return (mark.line + 1 if mark is not None else None), None, message


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, YAML_KEYS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(YAML_KEYS)}"
    return f"unknown top-level key; {hint}"


def _report_odd_keys(out: ManifestFile, mapping: _LocatedDict, where: str) -> bool:
    """Report keys that are not field names (YAML allows null, numbers, ...); whether there were any."""
    odd = [key for key in mapping if not isinstance(key, str)]
    for key in odd:
        out.error(mapping.key_lines.get(key, mapping.line), f"{where}.{key!r}", "a field name must be text")
    return bool(odd)


def _report_repeats(out: ManifestFile, mapping: _LocatedDict) -> None:
    for key, line in mapping.repeated:
        out.error(line, key, f"key appears twice in this mapping (first at line {mapping.key_lines[key]})")


def _read_yaml_endpoint(out: ManifestFile, doc: _LocatedDict) -> None:
    if "endpoint" not in doc:
        return
    out.endpoint_line = doc.key_lines["endpoint"]
    if isinstance(doc["endpoint"], str):
        out.endpoint = doc["endpoint"]
    else:
        out.error(out.endpoint_line, "endpoint", "must be a string such as fal-ai/wan-25-preview/image-to-image")


def _read_yaml_pass_through(out: ManifestFile, doc: _LocatedDict) -> None:
    value = doc.get("pass_through", False)
    if isinstance(value, bool):
        out.pass_through = value
    else:
        out.error(doc.key_lines["pass_through"], "pass_through", "must be true or false")


def _read_yaml_layer(out: ManifestFile, doc: _LocatedDict, key: str) -> Layer:
    value = doc.get(key)
    if value is None:
        return Layer()
    if not isinstance(value, _LocatedDict):
        out.error(doc.key_lines[key], key, "must be a mapping of field names to values")
        return Layer()
    _report_repeats(out, value)
    _report_odd_keys(out, value, key)
    for reserved in ("id",):
        if reserved in value:
            out.error(value.key_lines[reserved], f"{key}.{reserved}", f"`{reserved}` belongs to a job, not to {key}")
    values = {k: v for k, v in value.items() if k != "id" and isinstance(k, str)}
    return Layer(values=values, key_lines=value.key_lines, line=doc.key_lines[key])


def _check_matrix(out: ManifestFile) -> None:
    for key, values in list(out.matrix.values.items()):
        if not isinstance(values, list) or not values:
            out.error(out.matrix.key_lines.get(key), f"matrix.{key}", "must be a non-empty list of values")
            del out.matrix.values[key]


def _read_yaml_jobs(out: ManifestFile, doc: _LocatedDict) -> None:
    jobs = doc.get("jobs")
    if jobs is None:
        out.has_jobs_list = False
        if not out.matrix.values and not out.diagnostics:
            out.error(doc.line, "jobs", "no jobs: give a `jobs` list, a `matrix`, or both")
        return
    line = doc.key_lines.get("jobs", doc.line)
    if not isinstance(jobs, list):
        out.error(line, "jobs", "must be a list of jobs")
        return
    if not jobs and not out.matrix.values:
        out.error(line, "jobs", "no jobs: the list is empty")
    if len(jobs) > YAML_LIST_ADVISED:
        out.warn(line, "jobs", f"a YAML list of {len(jobs):,} jobs is read whole, about 5 times slower than CSV or"
                               f" JSONL, which stream; beyond {YAML_LIST_ADVISED:,} jobs write JSONL (one JSON object"
                               " per line) or a `matrix`")  # fmt: skip
    records = []
    for number, item in enumerate(jobs, 1):
        if not isinstance(item, _LocatedDict):
            out.error(line, f"jobs[{number - 1}]", "each job must be a mapping of field names to values")
            records.append(Record(number, Layer(line=line), broken=True))
            continue
        _report_repeats(out, item)
        broken = _report_odd_keys(out, item, f"jobs[{number - 1}]")
        layer = Layer(values=dict(item), key_lines=item.key_lines, line=item.line)
        records.append(Record(number, layer, broken=broken))
    out.records = list(_checked(out, records))
