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
