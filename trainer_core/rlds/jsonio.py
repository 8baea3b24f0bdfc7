"""Bounded JSON parsing shared by the JSON layouts.

Limits are checked before the parser runs (nesting depth on the raw bytes, so a hostile
``[[[[...`` cannot exhaust the stack) and non-finite numbers are found without walking every
parsed value: the parser's own hooks flag ``NaN``/``Infinity`` literals and a cheap regex flags
exponents large enough to overflow to ``inf``; only then is the value walked to name the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from trainer_core.rlds.errors import EpisodeError

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
# Number "shapes": digits -> "0", e/E -> "e", "+" kept, anything else -> " ". A float can only
# overflow to inf with a 3-digit exponent or 309+ digits, which show as plain substrings here
# (text such as "time000" is a harmless false positive: it only triggers the exact walk);
# bytes.translate and `in` run in C, far cheaper than a regex or a parse_float hook.
_SHAPE = bytes(
    ord("0") if chr(c).isdigit() else ord("e") if chr(c) in "eE" else c if chr(c) == "+" else 32
    for c in range(256)
)


_LONG_DIGITS = b"0" * 300


def may_overflow(data: bytes) -> bool:
    """Whether some number in ``data`` might parse to ``inf`` (false positives are fine)."""
    shape = data.translate(_SHAPE)
    # needles start with the rare "e" so the C substring search skips ahead quickly
    return b"e000" in shape or b"e+000" in shape or _LONG_DIGITS in shape


class _NonFiniteLiteral(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteLiteral(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SCAN_ONCE = _DECODER.scan_once


def _decode(text: str) -> Any:
    """``JSONDecoder.decode`` minus its two whitespace regex matches on the common path; any
    irregular input goes through ``decode`` itself for its exact error message."""
    try:
        value, end = _SCAN_ONCE(text, 0)
    except StopIteration:
        return _DECODER.decode(text)
    if end != len(text) and not text[end:].isspace():
        return _DECODER.decode(text)
    return value


def depth_exceeds(data: bytes, max_depth: int) -> bool:
    """Whether the JSON text nests objects/arrays deeper than ``max_depth``, without parsing.

    Each regex pass deletes the innermost empty ``[]``/``{}`` pairs once strings are removed, so
    the number of passes is the depth. Unbalanced text returns False: the parser reports it.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    passes = 0
    while brackets:
        reduced = _EMPTY_PAIR.sub(b"", brackets)
        if len(reduced) == len(brackets):
            return False
        passes += 1
        if passes > max_depth:
            return True
        brackets = reduced
    return False


def format_path(parts: list[str | int]) -> str:
    """``["action", "command", 1]`` -> ``action.command[1]``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "(top level)"


def find_non_finite(value: Any) -> tuple[list[str | int], float] | None:
    """The path to the first non-finite float inside ``value`` (iterative, no recursion)."""
    stack: list[tuple[list[str | int], Any]] = [([], value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return path, v
        elif isinstance(v, dict):
            stack.extend(([*path, k], x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend(([*path, i], x) for i, x in reversed(list(enumerate(v))))
    return None


def describe_non_finite(v: float) -> str:
    """The rejection reason for a NaN or infinite value."""
    return f"not a finite number (got {json.dumps(v)})"


class JsonProblem(Exception):
    """Why a JSON text was refused, without its location (the caller adds it). ``path`` and
    ``value`` are set for a non-finite number."""

    def __init__(
        self, message: str, path: list[str | int] | None = None, value: float = 0.0
    ) -> None:
        super().__init__(message)
        self.path = path
        self.value = value


def parse_json(data: bytes, max_depth: int, check_overflow: bool = True) -> Any:
    """Parse JSON bytes or raise :class:`JsonProblem`. ``check_overflow=False`` skips the
    overflow scan when the caller already scanned a larger buffer holding ``data``."""
    if depth_exceeds(data, max_depth):
        raise JsonProblem(f"nested deeper than {max_depth} levels (ingest.max_depth)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonProblem(f"not UTF-8 text (byte {exc.start})") from None
    try:
        value = _decode(text)
        suspicious = check_overflow and may_overflow(data)
    except _NonFiniteLiteral:
        value = json.loads(text)
        suspicious = True
    except json.JSONDecodeError as exc:
        raise JsonProblem(
            f"not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise JsonProblem("nested too deeply to parse") from None
    if suspicious:
        found = find_non_finite(value)
        if found is not None:
            path, v = found
            raise JsonProblem(f"{format_path(path)}: {describe_non_finite(v)}", path, v)
    return value


def loads_bounded(data: bytes, where: str, max_depth: int) -> Any:
    """:func:`parse_json` with the location prefixed: ``<where>: <field>: not a finite number
    (got NaN)``; a non-finite number raises :class:`NonFiniteValue` (path kept)."""
    try:
        return parse_json(data, max_depth)
    except JsonProblem as problem:
        if problem.path is not None:
            raise NonFiniteValue(where, problem.path, problem.value) from None
        raise EpisodeError(f"{where}: {problem}") from None


class NonFiniteValue(EpisodeError):
    """A NaN/Inf number; keeps the path so a caller can re-anchor it (``step 3: ...``)."""

    def __init__(self, where: str, path: list[str | int], value: float) -> None:
        self.where = where
        self.path = path
        self.value = value
        super().__init__(f"{where}: {format_path(path)}: {describe_non_finite(value)}")
