"""Read a YAML manifest: `endpoint`, `pass_through`, `defaults`, `matrix` and `jobs`, each value with its line.

The document is read whole (PyYAML's C loader when present), so a long `jobs`
list is warned of: CSV and JSONL stream (`jobs.formats`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import yaml

from jobs.manifest_file import Layer, ManifestFile, Record, check_shared_values, checked
from jobs.values import MAX_NESTING_DEPTH, MAX_NUMBER_DIGITS, OversizedNumber

YAML_KEYS = ("endpoint", "pass_through", "defaults", "matrix", "jobs", "name", "description")
#: A YAML `jobs` list is read whole, about 5 times slower than the same rows in CSV or JSONL (which stream):
#: longer ones are warned of (bench/bench_manifest.py measures it).
YAML_LIST_ADVISED = 20_000


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


def read_yaml(out: ManifestFile, text: str) -> None:
    """Read the YAML manifest `text` into `out`: its settings, `defaults`, `matrix` and `jobs`."""
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
    check_shared_values(out)
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
    out.records = list(checked(out, records))
