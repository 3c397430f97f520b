"""A job: one request to one endpoint, with a stable id."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

#: A user-given id: safe as a file name, like OpenAI Batch's `custom_id`.
USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
AUTO_ID_HEX = 16
VARIANT_ID_HEX = 8
#: What a matrix value or field may look like to be part of a file name, and how long the name may grow.
NAME_PART = re.compile(r"^[A-Za-z0-9._+-]+$")
#: Between a variant's id and its values in its name: a character no id holds.
NAME_MARK = "@"
MAX_VALUE_CHARS = 24
MAX_NAME_CHARS = 120


@dataclass(frozen=True, slots=True)
class Job:
    """One request: endpoint, the body to send, and where in the manifest it came from."""

    id: str
    endpoint: str
    input: dict[str, Any]
    #: sha256 of endpoint and canonical input; a rerun compares it to catch an edited row.
    fingerprint: str
    file: str
    line: int | None
    #: 1-based number of the row, line or `jobs` item in the manifest.
    row: int
    #: 1-based index among the jobs a `matrix` made of that row; 1 without a matrix.
    variant: int = 1
    #: Columns starting with `_`: carried to the report, never sent.
    meta: dict[str, str] = field(default_factory=dict)
    #: The values a `matrix` gave this job (not those its row set itself): report columns `matrix.<field>`.
    matrix: dict[str, Any] = field(default_factory=dict)
    #: What its files are called when not by its id (`images/<name>_0.png`): a matrix variant named by the
    #: values it varies in, `storm@seed7`. Empty: by its id.
    name: str = ""

    @property
    def file_stem(self) -> str:
        """The start of its files' names: `<stem>_<n>.<ext>` for images, `<stem>.json` for its sidecar."""
        return self.name or self.id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


def canonical_json(value: Any) -> str:
    """The one JSON text of `value`: sorted keys, no spaces, NaN refused.

    Raises ValueError or TypeError when `value` is not plain JSON data.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(endpoint: str, canonical_input: str) -> str:
    return hashlib.sha256(f"{endpoint}\n{canonical_input}".encode()).hexdigest()


def auto_job_id(fingerprint_hex: str) -> str:
    """The id of a row without one: stable across reruns of the same input."""
    return fingerprint_hex[:AUTO_ID_HEX]


def variant_job_id(user_id: str, fingerprint_hex: str) -> str:
    """The id of one of several jobs a matrix makes of a row with a user id."""
    return f"{user_id}-{fingerprint_hex[:VARIANT_ID_HEX]}"


def variant_name(user_id: str, combo: dict[str, Any]) -> str | None:
    """A matrix variant's readable name, `<id>@seed7-strength0.5`, from the values it varies in; None when one
    is not a short plain scalar (a prompt, a list): its files are then named by its id. No id holds an `@`, so
    no name is ever another job's id."""
    parts = []
    for key, value in combo.items():
        text = scalar_text(value)
        if text is None or not NAME_PART.match(key):
            return None
        parts.append(f"{key}{text}")
    name = f"{user_id}{NAME_MARK}{'-'.join(parts)}"
    return name if parts and len(name) <= MAX_NAME_CHARS else None


def scalar_text(value: Any) -> str | None:
    """How a short plain scalar reads in a file name (`7`, `0.5`, `true`, `square_hd`); None for any other value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        text = str(value)
        return text if NAME_PART.match(text) and len(text) <= MAX_VALUE_CHARS else None
    return None


def check_user_id(value: Any) -> str:
    """The user's id as a string; raises ValueError when it cannot name a file."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be text or a number, got {type(value).__name__}")
    text = str(value)
    if not USER_ID.match(text):
        raise ValueError(
            f"{text[:60]!r} is not a valid id: 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text
