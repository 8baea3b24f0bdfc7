"""Layout D: TFRecord files, plain or gzip, read without TensorFlow.

Framing per record: u64 length, masked CRC-32C of those 8 bytes, the data, masked CRC-32C of the
data. Both CRCs are verified and a length is trusted only after its CRC matches and it fits in
the bytes that remain, so damage is an error naming the record and byte offset, never a hang or
a large allocation. Two payload shapes:

- continuonos: one ``tf.train.Example`` per step (``episode_id``, ``step_index``, ``reward``,
  ``is_terminal``, JSON ``observation``/``action``/``step_metadata``, float
  ``observation_command``/``action_command``);
- standard RLDS/TFDS: one Example per episode with ``steps/...`` keys flattened by ``/``,
  booleans as int64 and arrays flattened; per-step shapes come from a ``features.json`` beside
  the file when present, otherwise each key's values split evenly over the steps.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer_core import validate
from trainer_core.config import IngestConfig
from trainer_core.episode import Episode, Step
from trainer_core.rlds.crc32c import masked_crc32c
from trainer_core.rlds.errors import EpisodeError
from trainer_core.rlds.example import Feature, ProtoError, parse_example
from trainer_core.rlds.jsonio import (
    NonFiniteValue,
    describe_non_finite,
    format_path,
    loads_bounded,
)
from trainer_core.rlds.jsonlayouts import check_size, max_bytes

_GZIP_MAGIC = b"\x1f\x8b"
# Per-step keys of continuonos files; one of them marks the shape.
_CONTINUONOS_KEYS = frozenset({"step_index", "action", "action_command"})


# ---------------------------------------------------------------------------------------------
# Bytes and framing


def _gunzip(data: bytes, label: str, limit: int) -> bytes:
    """Every gzip member of ``data``, concatenated, bounded by ``limit`` decompressed bytes."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos : pos + 2] != _GZIP_MAGIC:
            what = (
                "no gzip header"
                if pos == 0
                else f"{len(data) - pos} bytes after the gzip member ending at byte {pos} "
                "are not gzip data"
            )
            raise EpisodeError(
                f"{label}: corrupt gzip file: {what} "
                f"(the readable part holds {len(out)} bytes of records)"
            )
        d = zlib.decompressobj(wbits=31)
        chunk = data[pos:]
        try:
            while True:
                out += d.decompress(chunk, limit - len(out) + 1)
                if len(out) > limit:
                    raise EpisodeError(
                        f"{label}: decompresses to more than the size limit (ingest.max_file_mb)"
                    )
                chunk = d.unconsumed_tail
                if not chunk or d.eof:
                    break
        except zlib.error as exc:
            raise EpisodeError(
                f"{label}: corrupt gzip data in the member at byte {pos}: {exc}"
            ) from None
        if not d.eof:
            raise EpisodeError(f"{label}: truncated gzip member at byte {pos}")
        pos = len(data) - len(d.unused_data)
    return bytes(out)


def load_bytes(path: Path, label: str, limits: IngestConfig) -> bytes:
    """The file's record stream: decompressed when it is gzip (by magic or by name)."""
    check_size(path, label, limits)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EpisodeError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if data[:2] == _GZIP_MAGIC or path.name.endswith(".gz"):
        return _gunzip(data, label, max_bytes(limits))
    return data


def iter_records(buf: bytes, label: str, max_records: int) -> Iterator[bytes]:
    """The records of a TFRecord stream, both CRCs verified."""
    off = 0
    index = 0
    size = len(buf)
    mv = memoryview(buf)
    while off < size:
        at = f"{label}: record {index} at byte {off}"
        if index >= max_records:
            raise EpisodeError(f"{at}: more than {max_records} records (ingest.max_steps)")
        if size - off < 12:
            raise EpisodeError(f"{at}: truncated record header ({size - off} bytes left)")
        (length,) = struct.unpack_from("<Q", buf, off)
        (length_crc,) = struct.unpack_from("<I", buf, off + 8)
        if masked_crc32c(mv[off : off + 8]) != length_crc:
            raise EpisodeError(f"{at}: length CRC mismatch (corrupt or not a TFRecord file)")
        if length > size - off - 16:
            raise EpisodeError(
                f"{at}: length {length} runs past the end of the file "
                f"({size - off - 12} bytes left; truncated?)"
            )
        start = off + 12
        data = mv[start : start + length]
        (data_crc,) = struct.unpack_from("<I", buf, start + length)
        if masked_crc32c(data) != data_crc:
            raise EpisodeError(f"{at}: data CRC mismatch (corrupt record)")
        yield bytes(data)
        off = start + length + 4
        index += 1


def read_examples(path: Path, label: str, limits: IngestConfig) -> list[dict[str, Feature]]:
    """Every Example of a TFRecord file."""
    buf = load_bytes(path, label, limits)
    if not buf:
        raise EpisodeError(f"{label}: no records (empty file)")
    examples = []
    for i, record in enumerate(iter_records(buf, label, limits.max_steps)):
        try:
            examples.append(parse_example(record))
        except ProtoError as exc:
            raise EpisodeError(f"{label}: record {i}: not a tf.train.Example: {exc}") from None
    return examples


# ---------------------------------------------------------------------------------------------
# Feature values


def _one(ex: dict[str, Feature], key: str, kind: str, at: str) -> Any:
    """The single value of a scalar feature, or None when the key is absent."""
    if key not in ex:
        return None
    got_kind, values = ex[key]
    if got_kind != kind or len(values) != 1:
        raise EpisodeError(f"{at}: {key}: expected one {kind} value (got {len(values)} {got_kind})")
    return values[0]


def _floats(ex: dict[str, Feature], key: str, at: str) -> list[float]:
    if key not in ex:
        return []
    kind, values = ex[key]
    if kind not in ("float", "none"):
        raise EpisodeError(f"{at}: {key}: expected floats (got {kind})")
    for j, v in enumerate(values):
        if not math.isfinite(v):
            raise EpisodeError(f"{at}: {key}[{j}]: {describe_non_finite(v)}")
    return list(values)


def _json_feature(ex: dict[str, Feature], key: str, at: str, limits: IngestConfig) -> Any:
    raw = _one(ex, key, "bytes", at)
    if raw is None:
        return None
    try:
        value = loads_bounded(raw, f"{at}: {key}", limits.max_depth)
    except NonFiniteValue as exc:
        raise EpisodeError(
            f"{at}: {format_path([key, *exc.path])}: {describe_non_finite(exc.value)}"
        ) from None
    if not isinstance(value, dict):
        raise EpisodeError(f"{at}: {key}: JSON is not an object")
    return value


def _text(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


# ---------------------------------------------------------------------------------------------
# continuonos: one Example per step


def _continuonos_episode(
    examples: list[dict[str, Feature]],
    label: str,
    limits: IngestConfig,
    fallback: str,
    source: Path,
) -> Episode:
    steps: list[Step] = []
    episode_id: str | None = None
    n = len(examples)
    for i, ex in enumerate(examples):
        at = f"{label}: record {i}"
        raw_id = _one(ex, "episode_id", "bytes", at)
        eid = _text(raw_id) if raw_id is not None else fallback
        if not isinstance(eid, str) or not eid:
            raise EpisodeError(f"{at}: episode_id: not UTF-8 text")
        if episode_id is None:
            episode_id = eid
        elif eid != episode_id:
            raise EpisodeError(
                f"{at}: episode_id {eid!r} differs from record 0's {episode_id!r} "
                "(one episode per file)"
            )
        index = _one(ex, "step_index", "int64", at)
        if index is not None and index != i:
            raise EpisodeError(f"{at}: step_index: {index}, expected {i} (missing or reordered)")
        observation = _json_feature(ex, "observation", at, limits) or {}
        action = _json_feature(ex, "action", at, limits)
        command = _floats(ex, "action_command", at)
        if action is None:
            action = {}
        if command and "command" not in action:
            action["command"] = command
        if not action:
            raise EpisodeError(f"{at}: action: missing (neither action nor action_command)")
        obs_command = _floats(ex, "observation_command", at)
        if obs_command:
            observation.setdefault("command", obs_command)
        reward = _one(ex, "reward", "float", at)
        terminal = _one(ex, "is_terminal", "int64", at)
        if terminal not in (None, 0, 1):
            raise EpisodeError(f"{at}: is_terminal: expected 0 or 1 (got {terminal})")
        steps.append(
            Step(
                observation=observation,
                action=action,
                reward=0.0 if reward is None else reward,
                is_first=i == 0,
                is_last=i == n - 1,
                is_terminal=bool(terminal),
                step_metadata=_json_feature(ex, "step_metadata", at, limits) or {},
            )
        )
    episode = Episode(
        episode_id=episode_id or fallback,
        metadata={"episode_id": episode_id or fallback},
        steps=steps,
        source=str(source),
        layout="D",
    )
    validate.validate_episode(episode, lambda i: f"{label}: record {i}")
    return episode


# ---------------------------------------------------------------------------------------------
# Standard RLDS/TFDS: one Example per episode


def tfds_shapes(features_json: Any) -> dict[str, tuple[int, ...]]:
    """Per-step shapes by flattened key (``steps/observation/state`` -> ``(7,)``) from a TFDS
    ``features.json``; unknown parts of the document are ignored."""
    shapes: dict[str, tuple[int, ...]] = {}
    stack: list[tuple[str, Any]] = [("", features_json)]
    while stack:
        prefix, node = stack.pop()
        if not isinstance(node, dict):
            continue
        inner = node.get("featuresDict", {}).get("features")
        if isinstance(inner, dict):
            for name, child in inner.items():
                stack.append((f"{prefix}/{name}" if prefix else name, child))
            continue
        seq = node.get("sequence", {}).get("feature")
        if isinstance(seq, dict):  # a sequence's feature keeps its parent's name
            stack.append((prefix, seq))
            continue
        for kind in ("tensor", "image"):
            spec = node.get(kind)
            if isinstance(spec, dict):
                dims = spec.get("shape", {}).get("dimensions", [])
                try:
                    shape = tuple(int(d) for d in dims)
                except (TypeError, ValueError):
                    continue
                if all(d >= 0 for d in shape):  # -1 marks a variable dimension
                    shapes[prefix] = shape
    return shapes


def _nest(target: dict[str, Any], parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        target = target.setdefault(p, {})
        if not isinstance(target, dict):
            raise EpisodeError(f"{'/'.join(parts)}: clashes with a value at {p}")
    target[parts[-1]] = value


def _step_count(ex: dict[str, Feature], label: str) -> int:
    for key in ("steps/is_first", "steps/is_last", "steps/reward", "steps/is_terminal"):
        if key in ex:
            return len(ex[key][1])
    per_step = [k for k in ex if k.startswith("steps/")]
    if not per_step:
        raise EpisodeError(f"{label}: no steps/... features (not an RLDS episode)")
    raise EpisodeError(
        f"{label}: cannot tell the number of steps (no steps/is_first, steps/is_last or "
        "steps/reward feature)"
    )


def _rlds_episode(
    ex: dict[str, Feature],
    label: str,
    limits: IngestConfig,
    fallback: str,
    source: Path,
    shapes: dict[str, tuple[int, ...]],
) -> Episode:
    n = _step_count(ex, label)
    if n == 0:
        raise EpisodeError(f"{label}: no steps")
    if n > limits.max_steps:
        raise EpisodeError(f"{label}: {n} steps, more than {limits.max_steps} (ingest.max_steps)")
    per_step: list[dict[str, Any]] = [{} for _ in range(n)]
    metadata: dict[str, Any] = {}
    for key, (kind, values) in sorted(ex.items()):
        if kind == "float":
            for j, v in enumerate(values):
                if not math.isfinite(v):
                    raise EpisodeError(f"{label}: {key}[{j}]: {describe_non_finite(v)}")
        if not key.startswith("steps/"):
            vals = [_text(v) for v in values] if kind == "bytes" else values
            _nest(metadata, key.split("/"), vals[0] if len(vals) == 1 else vals)
            continue
        shape = shapes.get(key)
        width = math.prod(shape) if shape is not None and kind != "bytes" else None
        if width is None:
            if len(values) % n:
                raise EpisodeError(
                    f"{label}: {key}: {len(values)} values do not split evenly into {n} steps"
                )
            width = len(values) // n
        elif width * n != len(values):
            raise EpisodeError(
                f"{label}: {key}: {len(values)} values, expected {n} steps x {width} "
                f"(shape {list(shape or ())} in features.json)"
            )
        scalar = shape == () or (shape is None and width == 1)
        parts = key.split("/")[1:]
        for i in range(n):
            chunk = values[i * width : (i + 1) * width]
            if kind == "bytes":
                chunk = [_text(v) for v in chunk]
            _nest(per_step[i], parts, chunk[0] if scalar and chunk else chunk)
    steps = []
    for i, raw in enumerate(per_step):
        at = f"{label}: step {i}"
        action = raw.pop("action", None)
        if isinstance(action, list):
            action = {"command": action}
        if not isinstance(action, dict):
            raise EpisodeError(f"{at}: action: missing (no steps/action feature)")
        observation = raw.pop("observation", {})
        if not isinstance(observation, dict):
            observation = {"state": observation}
        flags = {}
        for flag in ("is_first", "is_last", "is_terminal"):
            v = raw.pop(flag, None)
            if v not in (None, 0, 1):
                raise EpisodeError(f"{at}: {flag}: expected 0 or 1 (got {v})")
            flags[flag] = v
        reward = raw.pop("reward", 0.0)
        steps.append(
            Step(
                observation=observation,
                action=action,
                reward=reward,
                is_first=i == 0 if flags["is_first"] is None else bool(flags["is_first"]),
                is_last=i == n - 1 if flags["is_last"] is None else bool(flags["is_last"]),
                is_terminal=bool(flags["is_terminal"]),
                step_metadata=raw,
            )
        )
    eid = (
        metadata.get("episode_metadata", {}).get("episode_id")
        if isinstance(metadata.get("episode_metadata"), dict)
        else None
    )
    episode = Episode(
        episode_id=eid if isinstance(eid, str) and eid else fallback,
        metadata=metadata,
        steps=steps,
        source=str(source),
        layout="D",
    )
    validate.validate_episode(episode, lambda i: f"{label}: step {i}")
    return episode


def _features_json(path: Path, limits: IngestConfig) -> dict[str, tuple[int, ...]]:
    side = path.parent / "features.json"
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_bytes()[: max_bytes(limits)])
    except (OSError, ValueError) as exc:
        raise EpisodeError(f"features.json beside {path.name}: unreadable ({exc})") from None
    return tfds_shapes(doc)


def read_tfrecord_episode(path: Path, limits: IngestConfig, fallback_id: str) -> Episode:
    """Read one TFRecord file as one episode (either payload shape)."""
    label = path.name
    examples = read_examples(path, label, limits)
    if any(k.startswith("steps/") for k in examples[0]):
        if len(examples) != 1:
            raise EpisodeError(
                f"{label}: {len(examples)} RLDS episodes in one file; expected one per file"
            )
        return _rlds_episode(
            examples[0], label, limits, fallback_id, path, _features_json(path, limits)
        )
    if _CONTINUONOS_KEYS & examples[0].keys():
        return _continuonos_episode(examples, label, limits, fallback_id, path)
    keys = sorted(examples[0])[:8]
    raise EpisodeError(f"{label}: record 0: unknown Example features {keys} (not an episode)")
