"""Readers for the JSON layouts (architecture §4): A (directory of JSONL shards), B (one JSON
file, or the arm recorder's ``<id>/episode.json``), C (the older task-library shape) and E (the
XR app's camelCase spelling of A). All produce a validated canonical :class:`Episode`.

JSONL lines are read in bounded chunks (``max_line_bytes``) and parsed with the C JSON decoder
directly; checks are cheap per step so reading stays close to bare ``json.loads`` speed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from trainer_core import validate
from trainer_core.config import IngestConfig
from trainer_core.episode import Episode, Step
from trainer_core.rlds.errors import EpisodeError, NotTrainingData
from trainer_core.rlds.hashing import hashed_file
from trainer_core.rlds.jsonio import (
    JsonProblem,
    NonFiniteValue,
    describe_non_finite,
    format_path,
    loads_bounded,
    may_overflow,
    parse_json,
)

_CHUNK = 1 << 20  # JSONL read size; memory per shard is this plus one line at most
_CANONICAL = frozenset(
    {"observation", "action", "reward", "is_first", "is_last", "is_terminal", "step_metadata"}
)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_HAS_HUMP = re.compile(r"[a-z0-9][A-Z]")
# Layout E spells these two metadata keys with a literal dot.
_DOTTED_META = {"continuon.xr_mode": "xr_mode", "continuon.control_role": "control_role"}


def max_bytes(limits: IngestConfig) -> int:
    """The per-file size limit in bytes (``ingest.max_file_mb``)."""
    return int(limits.max_file_mb * 1024 * 1024)


def check_size(path: Path, label: str, limits: IngestConfig) -> int:
    """The file's size, or an error when it is over ``max_file_mb`` or not a regular file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise EpisodeError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise EpisodeError(f"{label}: not a regular file")
    if st.st_size > max_bytes(limits):
        raise EpisodeError(
            f"{label}: {st.st_size} bytes is over the {limits.max_file_mb:g} MB limit "
            "(ingest.max_file_mb)"
        )
    return st.st_size


def read_json_file(path: Path, label: str, limits: IngestConfig) -> Any:
    """A whole (size-checked) JSON document."""
    size = check_size(path, label, limits)
    if size == 0:
        raise EpisodeError(f"{label}: empty file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EpisodeError(f"{label}: cannot read ({exc.strerror or exc})") from None
    return loads_bounded(data, label, limits.max_depth)


# ---------------------------------------------------------------------------------------------
# Key spelling (layout E)


def snake(key: str) -> str:
    """``jointPositions`` -> ``joint_positions``; ``targetID`` -> ``target_id``."""
    return _CAMEL_HUMP.sub("_", key).lower() if _HAS_HUMP.search(key) else key


def snake_keys(value: Any) -> Any:
    """A copy of ``value`` with every mapping key in snake_case (depth is already bounded)."""
    if isinstance(value, dict):
        return {snake(k): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def is_camel(metadata: dict[str, Any], first_step: Any) -> bool:
    """Layout E: dotted ``continuon.*`` metadata keys or camelCase step/observation keys."""
    if any(k in _DOTTED_META for k in metadata):
        return True
    keys: list[str] = []
    if isinstance(first_step, dict):
        keys.extend(first_step)
        obs = first_step.get("observation")
        if isinstance(obs, dict):
            keys.extend(obs)
    return any(_HAS_HUMP.search(k) for k in keys)


def camel_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """camelCase metadata keys as snake_case, dotted legacy keys mapped to their plain names."""
    out = snake_keys({k: v for k, v in metadata.items() if k not in _DOTTED_META})
    for dotted, plain in _DOTTED_META.items():
        if dotted in metadata:
            out.setdefault(plain, metadata[dotted])
    return out


def task_library_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """Layout C: ``{"episode_metadata": {..., "continuon": {xr_mode, control_role, tags}}}``
    flattened, with the v1.1 keys lifted to the top so consumers find them in one place."""
    inner = doc["episode_metadata"]
    if not isinstance(inner, dict):
        raise EpisodeError("metadata.json: episode_metadata: not an object")
    meta = dict(inner)
    cont = inner.get("continuon")
    if isinstance(cont, dict):
        for key in ("xr_mode", "control_role", "tags"):
            if key in cont:
                meta.setdefault(key, cont[key])
    return meta


def refuse_other_shapes(metadata: dict[str, Any], label: str) -> None:
    """Recognise well-formed files that are not control data and say why they are skipped."""
    if str(metadata.get("schema_version", "")).strip() in ("2.0", "2"):
        raise NotTrainingData(
            f"{label}: schema_version 2.0 tool-use trace, no numeric action (not training data)"
        )
    if str(metadata.get("episode_id", "")).startswith("adapter_promotion"):
        raise NotTrainingData(f"{label}: promotion audit record, not training data")


# ---------------------------------------------------------------------------------------------
# Steps


def _flag(raw: dict[str, Any], key: str, derived: bool) -> bool:
    v = raw.get(key)
    if v is None:
        return derived
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise EpisodeError(f"{key}: not a boolean (got {v!r:.40})")


def make_step(raw: Any, i: int, n: int) -> Step:
    """One canonical step from a v1.1-shaped mapping (keys already snake_case). Absent
    ``is_first``/``is_last`` come from the position; extra scalar keys (``timestamp_micros``,
    ``step_index``, ``discount``) are kept in ``step_metadata``."""
    if not isinstance(raw, dict):
        raise EpisodeError(f"not an object (got {type(raw).__name__})")
    obs = raw.get("observation")
    if not isinstance(obs, dict):
        raise EpisodeError("observation: missing or not an object")
    action = raw.get("action")
    if not isinstance(action, dict):
        raise EpisodeError("action: missing or not an object")
    meta = raw.get("step_metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise EpisodeError("step_metadata: not an object")
    if not _CANONICAL.issuperset(raw):
        for k, v in raw.items():
            if k not in _CANONICAL and not isinstance(v, dict | list):
                meta.setdefault(k, v)
    reward = raw.get("reward", 0.0)
    if type(reward) is int:
        reward = float(reward)
    return Step(
        observation=obs,
        action=action,
        reward=float(reward)
        if isinstance(reward, int) and not isinstance(reward, bool)
        else reward,
        is_first=_flag(raw, "is_first", i == 0),
        is_last=_flag(raw, "is_last", i == n - 1),
        is_terminal=_flag(raw, "is_terminal", False),
        step_metadata=meta,
    )


def build_steps(raws: list[Any], where: validate.Where) -> list[Step]:
    """Canonical steps from raw step objects; an error names the step via ``where``."""
    n = len(raws)
    steps = []
    for i, raw in enumerate(raws):
        try:
            steps.append(make_step(raw, i, n))
        except EpisodeError as exc:
            raise EpisodeError(f"{where(i)}: {exc}") from None
    return steps


def read_jsonl_shard(
    path: Path, label: str, limits: IngestConfig, raws: list[Any], lines: list[tuple[str, int]]
) -> None:
    """Append the shard's steps to ``raws`` (and their ``(label, line)`` to ``lines``).

    Reads in bounded blocks (``_CHUNK``, plus at most one partial line of ``max_line_bytes``)
    and checks each line's length before parsing it; the overflow scan runs once per block."""
    check_size(path, label, limits)
    limit = limits.max_line_bytes
    max_steps = limits.max_steps
    depth = limits.max_depth
    lineno = 0
    try:
        with open(path, "rb") as f:
            carry = b""
            while True:
                block = f.read(_CHUNK)
                data = carry + block if carry else block
                if block:
                    pieces = data.split(b"\n")
                    carry = pieces.pop()
                    if len(carry) > limit:
                        raise EpisodeError(
                            f"{label}: line {lineno + len(pieces) + 1}: longer than {limit} "
                            "bytes (ingest.max_line_bytes)"
                        )
                else:
                    pieces = [carry] if carry else []
                check_overflow = may_overflow(data)
                for line in pieces:
                    lineno += 1
                    if len(line) > limit and len(line.removesuffix(b"\r")) > limit:
                        raise EpisodeError(
                            f"{label}: line {lineno}: longer than {limit} bytes "
                            "(ingest.max_line_bytes)"
                        )
                    if not line or line.isspace():
                        continue
                    try:
                        step = parse_json(line, depth, check_overflow)
                    except JsonProblem as problem:
                        raise EpisodeError(f"{label}: line {lineno}: {problem}") from None
                    if len(raws) >= max_steps:
                        raise EpisodeError(
                            f"{label}: line {lineno}: more than {max_steps} steps "
                            "(ingest.max_steps)"
                        )
                    raws.append(step)
                    lines.append((label, lineno))
                if not block:
                    return
    except OSError as exc:
        raise EpisodeError(f"{label}: cannot read ({exc.strerror or exc})") from None


def _finish(
    episode_id: str,
    metadata: dict[str, Any],
    raws: list[Any],
    where: validate.Where,
    source: Path,
    layout: str,
) -> Episode:
    if not raws:
        raise EpisodeError(f"{source.name}: no steps")
    episode = Episode(
        episode_id=episode_id,
        metadata=metadata,
        steps=build_steps(raws, where),
        source=str(source),
        layout=layout,
    )
    validate.validate_episode(episode, where)
    return episode


def episode_id_of(metadata: dict[str, Any], fallback: str, label: str) -> str:
    """The metadata's ``episode_id``, or ``fallback`` when absent; EpisodeError if not a
    non-empty string."""
    eid = metadata.get("episode_id")
    if eid is None:
        return fallback
    if not isinstance(eid, str) or not eid.strip():
        raise EpisodeError(f"{label}: episode_id: not a non-empty string (got {eid!r:.40})")
    return eid


# ---------------------------------------------------------------------------------------------
# Layouts


def read_directory(path: Path, limits: IngestConfig) -> Episode:
    """Layouts A, C and E: ``<id>/metadata.json`` + ``steps/*.jsonl`` (every shard, name
    order); or the arm recorder's ``<id>/episode.json`` (layout B)."""
    if (path / "episode.json").exists() and not (path / "metadata.json").exists():
        return read_single_file(path / "episode.json", limits, "episode.json", path.name, path)
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise EpisodeError("metadata.json: missing")
    doc = read_json_file(meta_path, "metadata.json", limits)
    if not isinstance(doc, dict):
        raise EpisodeError("metadata.json: top level is not an object")
    layout = "C" if "episode_metadata" in doc else "A"
    metadata = task_library_metadata(doc) if layout == "C" else doc
    refuse_other_shapes(metadata, "metadata.json")
    steps_dir = path / "steps"
    if not steps_dir.is_dir():
        raise EpisodeError("steps/: missing")
    try:
        shards = sorted(
            e.name
            for e in os.scandir(steps_dir)
            if e.name.endswith(".jsonl") and hashed_file(f"steps/{e.name}")
        )
    except OSError as exc:
        raise EpisodeError(f"steps/: cannot list ({exc.strerror or exc})") from None
    if not shards:
        raise EpisodeError("steps/: no *.jsonl shards")
    raws: list[Any] = []
    lines: list[tuple[str, int]] = []
    for name in shards:
        read_jsonl_shard(steps_dir / name, f"steps/{name}", limits, raws, lines)
    if not raws:
        raise EpisodeError("steps/: no steps (every shard is empty)")
    if layout == "A" and is_camel(metadata, raws[0]):
        layout = "E"
        metadata = camel_metadata(metadata)
        raws = [snake_keys(r) for r in raws]

    def where(i: int) -> str:
        label, line = lines[i]
        return f"{label}: line {line}"

    eid = episode_id_of(metadata, path.name, "metadata.json")
    return _finish(eid, metadata, raws, where, path, layout)


def read_single_file(
    path: Path, limits: IngestConfig, label: str, fallback_id: str, source: Path
) -> Episode:
    """Layout B: ``{"metadata": {...}, "steps": [...]}`` in one file."""
    try:
        doc = read_json_file(path, label, limits)
    except NonFiniteValue as exc:
        p = exc.path
        if len(p) >= 2 and p[0] == "steps" and isinstance(p[1], int):
            raise EpisodeError(
                f"{label}: step {p[1]}: {format_path(p[2:])}: {describe_non_finite(exc.value)}"
            ) from None
        raise
    if not isinstance(doc, dict):
        raise EpisodeError(f"{label}: top level is not an object")
    if "episode_metadata" in doc:
        metadata, layout = task_library_metadata(doc), "C"
    elif "metadata" in doc:
        metadata, layout = doc["metadata"], "B"
        if not isinstance(metadata, dict):
            raise EpisodeError(f"{label}: metadata: not an object")
    else:
        raise EpisodeError(f"{label}: metadata: missing")
    refuse_other_shapes(metadata, label)
    raws = doc.get("steps")
    if not isinstance(raws, list):
        raise EpisodeError(f"{label}: steps: missing or not a list")
    if len(raws) > limits.max_steps:
        raise EpisodeError(
            f"{label}: {len(raws)} steps, more than {limits.max_steps} (ingest.max_steps)"
        )
    if raws and is_camel(metadata, raws[0]):
        layout = "E"
        metadata = camel_metadata(metadata)
        raws = [snake_keys(r) for r in raws]

    def where(i: int) -> str:
        return f"{label}: step {i}"

    eid = episode_id_of(metadata, fallback_id, label)
    return _finish(eid, metadata, raws, where, source, layout)
