"""Read a manifest's bytes (CSV, TSV, JSONL or YAML) into located records; CSV, TSV and JSONL here.

Every problem becomes a `Diagnostic` naming the file and line; nothing here
raises on bad input. Typing the values is left to `jobs.manifest`, which
knows each endpoint's schema.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from typing import Any

from jobs.errors import TooDeepError
from jobs.manifest_file import Layer, ManifestFile, Record, checked
from jobs.values import load_json, printable
from jobs.yaml_format import read_yaml

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".yaml": "yaml", ".yml": "yaml"}
#: CSV column suffix that makes a cell JSON, for fields the schema cannot type (pass-through).
JSON_SUFFIX = ":json"
_MAX_CELL_CHARS = 256 * 1024 * 1024


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
            read_yaml(out, text)
    return out


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
            yield from checked(out, [_csv_record(out, rows, start, header, cells)])
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
        yield from checked(out, [Record(rows, Layer(values=value, line=number))])
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
