"""Semantic checks on a canonical :class:`~trainer_core.episode.Episode`.

Readers enforce structure and limits while parsing; this module decides whether the parsed
episode is usable training data: steps present, a numeric action of one shape throughout, finite
numbers, RLDS ``is_first``/``is_last`` flags where they belong. Every failure is an
:class:`EpisodeError` whose message names the step's location (given by the reader: file and
line, or record) and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from trainer_core.episode import Episode, Step
from trainer_core.rlds.errors import EpisodeError
from trainer_core.rlds.jsonio import describe_non_finite, find_non_finite, format_path

Where = Callable[[int], str]

# Action keys that describe or annotate a command rather than being one (FORMATS §1).
NON_CONTROL_KEYS = frozenset(
    {"source", "annotation", "ui_action", "dialog", "planner", "tool_calls", "type"}
)
# Observation fields the v1.1 contract (and layout C) define as numeric vectors.
ROBOT_STATE_VECTORS = ("joint_positions", "joint_velocities", "joint_efforts", "end_effector_twist")
_NON_FINITE_WORDS = frozenset(
    {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
)

_NON_FINITE_FIRST = frozenset("nNiI+- \t")

Signature = tuple[tuple[str, int], ...]


def step_where(i: int) -> str:
    """Default location of step ``i`` when the reader gives none."""
    return f"step {i}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number_problem(v: Any) -> str | None:
    """Why ``v`` is not a usable number, or None when it is one."""
    if _is_number(v):
        try:
            return None if math.isfinite(v) else describe_non_finite(float(v))
        except OverflowError:
            return f"number too large (got {str(v)[:20]}...)"
    if isinstance(v, str):
        if v.strip().lower() in _NON_FINITE_WORDS:
            return f"not a finite number (got {json.dumps(v)})"
        return f"not a number (got {json.dumps(v)[:40]})"
    return f"not a number (got {type(v).__name__ if v is not None else 'null'})"


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


_NUMBER_TYPES = frozenset({int, float})


def _vector(name: str, values: list[Any]) -> tuple[str, int]:
    # Fast path in C: every element an int/float and their sum finite (so each one is).
    if _NUMBER_TYPES.issuperset(map(type, values)):
        try:
            if math.isfinite(sum(values)):
                return name, len(values)
        except OverflowError:
            pass
    for j, v in enumerate(values):
        problem = _number_problem(v)
        if problem:
            raise EpisodeError(f"{name}[{j}]: {problem}")
    return name, len(values)


def _command_leaves(command: dict[str, Any]) -> list[tuple[str, int]]:
    """Numeric leaves of a typed command (layout E: ``{"type": "JointDelta", ...}``)."""
    out: list[tuple[str, int]] = []
    stack: list[tuple[str, Any]] = [("action.command", command)]
    while stack:
        name, v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "type":
                    out.append((f"{name}.type={x}", 0))
                else:
                    stack.append((f"{name}.{k}", x))
        elif isinstance(v, list) and v and all(_is_number(x) for x in v):
            out.append(_vector(name, v))
        elif _is_number(v):
            problem = _number_problem(v)
            if problem:
                raise EpisodeError(f"{name}: {problem}")
            out.append((name, 1))
    return sorted(out)


def action_signature(action: dict[str, Any]) -> Signature:
    """The numeric shape of an action: ``(("action.command", 2),)`` for a control vector,
    ``(("action.steering", 1), ("action.throttle", 1))`` for named floats. Raises
    :class:`EpisodeError` (without location) for numbers that are not finite or are strings."""
    sig: list[tuple[str, int]] = []
    for key, v in action.items():
        name = f"action.{key}"
        if key == "command":
            if isinstance(v, list):
                sig.append(_vector(name, v))
            elif isinstance(v, dict):
                sig.extend(_command_leaves(v))
            else:
                raise EpisodeError(f"{name}: {_number_problem(v)}")
        elif key in NON_CONTROL_KEYS or isinstance(v, bool) or v is None:
            continue
        elif _is_number(v):
            problem = _number_problem(v)
            if problem:
                raise EpisodeError(f"{name}: {problem}")
            sig.append((name, 1))
        elif isinstance(v, str):
            if _looks_numeric(v):  # "0.1" or "NaN": a number written as text
                raise EpisodeError(f"{name}: {_number_problem(v)}")
        elif isinstance(v, list) and any(_is_number(x) for x in v):
            sig.append(_vector(name, v))
    if not any(n for _, n in sig):
        raise EpisodeError(
            "action: nothing numeric (expected a numeric action.command or named numeric fields)"
        )
    return tuple(sig)


def _describe_change(first: Signature, now: Signature) -> str:
    a, b = dict(first), dict(now)
    for name, n in now:
        if name in a and a[name] != n:
            return f"{name}: has {n} values, step 0 had {a[name]} (action size must not change)"
    gone = sorted(set(a) - set(b))
    new = sorted(set(b) - set(a))
    return f"action: fields changed from step 0 (missing {gone}, new {new})"


def _check_flags(step: Step, i: int, n: int) -> str | None:
    last = i == n - 1
    if step.is_first != (i == 0):
        return (
            "is_first: true on a step that is not the first"
            if step.is_first
            else "is_first: false on the first step (episode starts mid-way?)"
        )
    if step.is_last != last:
        return (
            "is_last: true on a step that is not the last"
            if step.is_last
            else "is_last: false on the last step (episode truncated?)"
        )
    if step.is_terminal and not last:
        return "is_terminal: true on a step that is not the last"
    return None


def _vector_ok(v: Any) -> bool:
    """C-speed check that ``v`` is a list of finite ints/floats (bools are not numbers)."""
    if type(v) is not list or not _NUMBER_TYPES.issuperset(map(type, v)):
        return False
    try:
        return math.isfinite(sum(v))
    except OverflowError:
        return False


def _check_observation_vectors(obs: dict[str, Any]) -> None:
    """The contract's numeric vectors, when present, hold finite numbers only."""
    pose = obs.get("pose")
    if pose is not None and not _vector_ok(pose):
        _explain_vector("observation.pose", pose)
    state = obs.get("robot_state")
    if type(state) is dict:
        for key in ROBOT_STATE_VECTORS:
            v = state.get(key)
            if v is not None and not _vector_ok(v):
                _explain_vector(f"observation.robot_state.{key}", v)


def _explain_vector(name: str, v: Any) -> None:
    if not isinstance(v, list):
        raise EpisodeError(f"{name}: not a list of numbers")
    _vector(name, v)


def check_step(step: Step, i: int, n: int, deep: bool = False) -> Signature:
    """Validate one step; return its action signature. Messages carry no location."""
    if not isinstance(step.action, dict):
        raise EpisodeError("action: missing or not an object")
    sig = action_signature(step.action)
    reward = step.reward
    if type(reward) is not float or not math.isfinite(reward):
        problem = _number_problem(reward)
        if problem:
            raise EpisodeError(f"reward: {problem}")
    for key, v in step.step_metadata.items():
        if type(v) is str:
            # only text that could spell nan/inf is lowered and compared
            if v[:1] in _NON_FINITE_FIRST and v.strip().lower() in _NON_FINITE_WORDS:
                raise EpisodeError(
                    f"step_metadata.{key}: not a finite number (got {json.dumps(v)})"
                )
        elif type(v) is float and not math.isfinite(v):
            raise EpisodeError(f"step_metadata.{key}: {describe_non_finite(v)}")
    _check_observation_vectors(step.observation)
    if deep:
        found = find_non_finite(step.observation)
        if found:
            path_s = format_path(["observation", *found[0]])
            raise EpisodeError(f"{path_s}: {describe_non_finite(found[1])}")
    last = i == n - 1
    if step.is_first is not (i == 0) or step.is_last is not last or (step.is_terminal and not last):
        raise EpisodeError(_check_flags(step, i, n) or "is_first/is_last: not booleans")
    return sig


def validate_episode(episode: Episode, where: Where = step_where, deep: bool = False) -> None:
    """Raise :class:`EpisodeError` when ``episode`` is not usable training data.

    ``where(i)`` names step ``i``'s origin (``steps/000000.jsonl: line 4``). ``deep`` also walks
    every observation for NaN/Inf; readers already catch those while parsing, so they skip it.
    """
    n = len(episode.steps)
    if n == 0:
        raise EpisodeError(f"{episode.source}: no steps")
    first: Signature | None = None
    for i, step in enumerate(episode.steps):
        try:
            sig = check_step(step, i, n, deep)
            if first is None:
                first = sig
            elif sig != first:
                raise EpisodeError(_describe_change(first, sig))
        except EpisodeError as exc:
            raise EpisodeError(f"{where(i)}: {exc}") from None
