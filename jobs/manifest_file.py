"""A manifest as read, before any schema: file-level settings and located records, with the problems found.

The format readers (`jobs.formats`, `jobs.yaml_format`) fill a `ManifestFile`;
`jobs.manifest` turns its records into jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jobs.diagnostics import Diagnostic, Severity
from jobs.values import printable, scalar_problem, value_problem


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


def checked(out: ManifestFile, records: Iterable[Record]) -> Iterator[Record]:
    """`records`, each marked broken if a value can never be sent where it sits (reported)."""
    for record in records:
        if not record.broken and _layer_problems(out, record.layer):
            record.broken = True
        yield record


def check_shared_values(out: ManifestFile) -> None:
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
