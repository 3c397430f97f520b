"""Located problems found in a manifest: file, line, field and message."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


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
