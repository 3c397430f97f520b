"""Located problems found in a manifest: file, line, field and message."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

#: Groups of alike problems printed before the rest are only counted (`--max-errors`).
MAX_SHOWN_GROUPS = 50


class Severity(str, Enum):
    #: The manifest cannot run as written; nothing is submitted.
    ERROR = "error"
    #: The manifest runs, but probably not as the user meant.
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem, pointing at the place in the manifest that causes it."""

    file: str
    line: int | None
    field: str | None
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        place = self.file if self.line is None else f"{self.file}:{self.line}"
        kind = "warning: " if self.severity is Severity.WARNING else ""
        field = f"{self.field}: " if self.field else ""
        return f"{place}: {kind}{field}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "severity": self.severity.value,
        }


def dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Drop repeats (a bad default reported once per job), keeping first-seen order."""
    return list(dict.fromkeys(diagnostics))


def shorten(value: object, limit: int = 60) -> str:
    """A value as shown in a message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class DiagnosticGroup:
    """Diagnostics that differ only by line: one problem repeated down a manifest."""

    file: str
    field: str | None
    message: str
    severity: Severity
    #: In first-seen order; None for a problem of the whole file.
    lines: tuple[int | None, ...]

    def __str__(self) -> str:
        if len(self.lines) == 1:
            return str(Diagnostic(self.file, self.lines[0], self.field, self.message, self.severity))
        kind = "warning: " if self.severity is Severity.WARNING else ""
        field = f"{self.field}: " if self.field else ""
        return f"{self.file}: {kind}{field}{self.message} (on {len(self.lines):,} lines: {self.lines_shown()})"

    def lines_shown(self, limit: int = 3) -> str:
        """`3, 5, 7, ... (996 more)`: the first `limit` lines and how many others."""
        shown = ", ".join(str(line) for line in self.lines[:limit])
        rest = len(self.lines) - limit
        return f"{shown}, ... ({rest:,} more)" if rest > 0 else shown

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "field": self.field,
            "message": self.message,
            "severity": self.severity.value,
            "count": len(self.lines),
            "lines": list(self.lines),
        }


def group_diagnostics(diagnostics: list[Diagnostic]) -> list[DiagnosticGroup]:
    """Gather diagnostics alike but for their line (same file, field, message, severity), in first-seen order.

    One of the whole file (no line) is never grouped with located ones.
    """
    lines: dict[tuple[str, str | None, str, Severity, bool], list[int | None]] = {}
    for d in diagnostics:
        lines.setdefault((d.file, d.field, d.message, d.severity, d.line is None), []).append(d.line)
    return [DiagnosticGroup(*key[:4], lines=tuple(found)) for key, found in lines.items()]


def grouped_lines(diagnostics: list[Diagnostic], max_groups: int = MAX_SHOWN_GROUPS) -> list[str]:
    """The lines that show `diagnostics` grouped: at most `max_groups` groups (0: all), then what was left out."""
    groups = group_diagnostics(diagnostics)
    shown = groups[:max_groups] if max_groups > 0 else groups
    lines = [str(group) for group in shown]
    hidden = groups[len(shown) :]
    if hidden:
        count = sum(len(group.lines) for group in hidden)
        lines.append(
            f"... {len(hidden):,} more problem(s) not shown ({count:,} in all); "
            "`wan-batch validate --max-errors 0` shows every one, `--json` lists them"
        )
    return lines
