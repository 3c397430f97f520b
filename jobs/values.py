"""Values a manifest may hold and that can never be sent: too deep, too many, too large, not Unicode.

`load_json` parses manifest JSON without overflowing the stack or refusing a
long integer; `value_problem` says why a parsed value can never be sent.
Both are pure, and neither raises on bad input but as documented.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from jobs.errors import TooDeepError

#: Deeper values are refused: no model input nests so deep, and deeper ones exhaust the stack of what checks them.
MAX_NESTING_DEPTH = 100
#: Bigger values of one field are refused: YAML aliases make a few lines into billions of values.
MAX_FIELD_VALUES = 1_000_000
#: Longer integers are refused before Python refuses to convert them (sys.get_int_max_str_digits).
MAX_NUMBER_DIGITS = 1000
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON string (possibly a key, then its colon) or a bracket: enough to follow nesting without parsing.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"(?=(\s*:))?|[\[\]{}]')


@dataclass(frozen=True, slots=True)
class OversizedNumber:
    """Stands for an integer too long to convert; `value_problem` reports it where it sits."""

    digits: int


def load_json(text: str, **options: Any) -> Any:
    """`json.loads` for manifest text: it never overflows the stack, nor refuses a long integer.

    An integer of more than MAX_NUMBER_DIGITS digits becomes a marker that
    `value_problem` reports. Raises json.JSONDecodeError, or ValueError (no
    JSONDecodeError) when the text nests too deep to parse.
    """
    try:
        return json.loads(text, parse_int=_parse_int, **options)
    except RecursionError:
        raise TooDeepError(f"nested deeper than {MAX_NESTING_DEPTH} levels", _deep_json_key(text)) from None


def _parse_int(text: str) -> int | OversizedNumber:
    digits = len(text.lstrip("-"))
    return OversizedNumber(digits) if digits > MAX_NUMBER_DIGITS else int(text)


def _deep_json_key(text: str) -> str | None:
    """The top-level key of a JSON object whose value nests past the limit, to say where."""
    depth, key = 0, None
    for match in _JSON_TOKEN.finditer(text):
        token = match[0]
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING_DEPTH + 1:  # the row's own braces are not its fields' nesting
                return key
        elif token in ("]", "}"):
            depth -= 1
        elif depth == 1 and match[1] is not None:
            key = printable(token[1:-1])
    return None


def value_problem(value: Any) -> str | None:
    """Why a parsed value can never be sent, or None.

    It may nest too deep, hold too many values or itself (YAML aliases), a
    number out of range, or text that is not Unicode. Walks without recursion,
    and visits an alias's value once however often it is used (but counts its
    values each time, as they would be sent).
    """
    shapes: dict[int, tuple[int, int]] = {}  # id of a list or mapping -> (depth, values in all)
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, closing = stack.pop()
        if not isinstance(node, dict | list):
            problem = scalar_problem(node)
            if problem:
                return problem
            continue
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if closing:
            open_ids.discard(id(node))
            problem = _shape_problem(node, children, shapes)
            if problem:
                return problem
        elif id(node) in open_ids:
            return "holds itself (a YAML alias inside its own anchor)"
        elif id(node) not in shapes:
            open_ids.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return None


def _shape_problem(node: Any, children: list[Any], shapes: dict[int, tuple[int, int]]) -> str | None:
    depth, size = 1, 1
    for child in children:
        child_depth, child_size = shapes.get(id(child), (0, 1))
        depth, size = max(depth, child_depth + 1), size + child_size
    shapes[id(node)] = depth, size
    if depth > MAX_NESTING_DEPTH:
        return f"nested deeper than {MAX_NESTING_DEPTH} levels"
    if size > MAX_FIELD_VALUES:
        return f"holds more than {MAX_FIELD_VALUES:,} values (a YAML alias counts each time it is used)"
    return None


def scalar_problem(value: Any) -> str | None:
    if isinstance(value, OversizedNumber):
        return f"a number of {value.digits:,} digits is too large"
    if isinstance(value, float) and not math.isfinite(value):
        return f"not a finite number ({value}); JSON has no such value"
    if isinstance(value, str) and (match := _SURROGATE.search(value)):
        return f"not valid Unicode text (a lone surrogate {match[0]!a})"
    return None


def printable(text: str) -> str:
    """`text` with lone surrogates escaped, safe to print and to encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
