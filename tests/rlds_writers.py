"""Writers for test episodes in every layout, including a small TFRecord/Example encoder.

The encoder is written from the protobuf and TFRecord specs independently of the reader; its
CRC comes from the reader's crc32c, which tests check against the published check value and the
TensorFlow-written samples."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from trainer_core.rlds.crc32c import masked_crc32c


def step(i: int = 0, command: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A valid v1.1-shaped step."""
    out: dict[str, Any] = {
        "observation": {"robot_state": {"joint_positions": [0.1 * i, 0.2]}},
        "action": {"command": command if command is not None else [0.1, -0.2], "source": "t"},
        "step_metadata": {"human_distance_m": str(2.0 + i)},
    }
    out.update(extra)
    return out


def write_a(
    folder: Path,
    name: str,
    steps: list[Any],
    metadata: Any = None,
    shard: str = "000000.jsonl",
) -> Path:
    """Layout A: ``name/metadata.json`` + ``name/steps/<shard>``; a str step is written raw."""
    d = folder / name
    (d / "steps").mkdir(parents=True, exist_ok=True)
    meta = {"episode_id": name, "xr_mode": "trainer"} if metadata is None else metadata
    (d / "metadata.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    lines = [s if isinstance(s, str) else json.dumps(s) for s in steps]
    text = "".join(line + "\n" for line in lines)
    (d / "steps" / shard).write_bytes(text.encode("utf-8", "surrogateescape"))  # \udcff -> 0xff
    return d


def write_b(folder: Path, name: str, doc: Any) -> Path:
    """Layout B: one JSON file (``doc`` is written raw when it is bytes or str)."""
    p = folder / name
    if isinstance(doc, bytes):
        p.write_bytes(doc)
    else:
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


# -- protobuf / TFRecord -------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def feature(kind: str, values: list[Any], packed: bool = True) -> bytes:
    if kind == "bytes":
        return ld(1, b"".join(ld(1, v.encode() if isinstance(v, str) else v) for v in values))
    if kind == "float":
        if packed:
            body = ld(1, struct.pack(f"<{len(values)}f", *values))
        else:
            body = b"".join(varint(1 << 3 | 5) + struct.pack("<f", v) for v in values)
        return ld(2, body)
    if packed:
        body = ld(1, b"".join(varint(v) for v in values))
    else:
        body = b"".join(varint(1 << 3 | 0) + varint(v) for v in values)
    return ld(3, body)


def example(features: dict[str, tuple[str, list[Any]]], packed: bool = True) -> bytes:
    entries = b"".join(
        ld(1, ld(1, key.encode()) + ld(2, feature(kind, vals, packed)))
        for key, (kind, vals) in features.items()
    )
    return ld(1, entries)


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def continuonos_step(i: int, n: int, episode_id: str = "tf_ep", **override: Any) -> dict:
    feats: dict[str, tuple[str, list[Any]]] = {
        "episode_id": ("bytes", [episode_id]),
        "step_index": ("int64", [i]),
        "reward": ("float", [0.5]),
        "is_terminal": ("int64", [1 if i == n - 1 else 0]),
        "observation": ("bytes", [json.dumps({"robot_state": {"joint_positions": [i, 1.0]}})]),
        "action": ("bytes", [json.dumps({"command": [0.25 * i, 0.5], "source": "t"})]),
        "action_command": ("float", [0.25 * i, 0.5]),
        "observation_command": ("float", []),
        "step_metadata": ("bytes", [json.dumps({"human_distance_m": 3.0 - i})]),
    }
    feats.update(override)
    return feats


def tfrecord_bytes(examples: list[dict], packed: bool = True) -> bytes:
    return b"".join(frame(example(e, packed)) for e in examples)


def write_tfrecord(folder: Path, name: str, n: int = 3, **override: Any) -> Path:
    p = folder / name
    p.write_bytes(tfrecord_bytes([continuonos_step(i, n, **override) for i in range(n)]))
    return p
