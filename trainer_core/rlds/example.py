"""A minimal protobuf wire-format decoder for ``tf.train.Example`` (no TensorFlow).

Only what Example needs: ``Example{features=1}``, ``Features{map<string, Feature> feature=1}``,
``Feature{oneof bytes_list=1 | float_list=2 | int64_list=3}``, whose ``value=1`` fields may be
packed or not. Every length is checked against the bytes that remain, so a damaged record is an
error, never a large allocation. Unknown fields are skipped as protobuf requires.
"""

from __future__ import annotations

import struct
from typing import Literal

Kind = Literal["bytes", "float", "int64", "none"]
Feature = tuple[Kind, list]


class ProtoError(ValueError):
    """A byte string that is not a well-formed Example; the message says where."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ProtoError(f"varint runs past the end at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: bytes, pos: int, end: int):
    """Yield ``(field_number, wire_type, value_or_span)`` over ``buf[pos:end]``; length-delimited
    values come as ``(start, stop)``."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtoError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise ProtoError(
                    f"field {field}: length {length} runs past the end ({end - pos} bytes left)"
                )
            yield field, wire, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if size > end - pos:
                raise ProtoError(f"field {field}: fixed{size * 8} runs past the end")
            yield field, wire, (pos, pos + size)
            pos += size
        else:
            raise ProtoError(f"field {field}: unsupported wire type {wire} at byte {pos}")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _float_list(buf: bytes, start: int, end: int) -> list[float]:
    out: list[float] = []
    for field, wire, val in _fields(buf, start, end):
        if field != 1:
            continue
        a, b = val
        if wire == 2:
            if (b - a) % 4:
                raise ProtoError(f"packed float list of {b - a} bytes is not a multiple of 4")
            out.extend(struct.unpack_from(f"<{(b - a) // 4}f", buf, a))
        elif wire == 5:
            out.append(struct.unpack_from("<f", buf, a)[0])
        else:
            raise ProtoError(f"float list: wire type {wire}")
    return out


def _int64_list(buf: bytes, start: int, end: int) -> list[int]:
    out: list[int] = []
    for field, wire, val in _fields(buf, start, end):
        if field != 1:
            continue
        if wire == 0:
            out.append(_signed64(val))
        elif wire == 2:
            pos, stop = val
            while pos < stop:
                v, pos = _varint(buf, pos, stop)
                out.append(_signed64(v))
        else:
            raise ProtoError(f"int64 list: wire type {wire}")
    return out


def _bytes_list(buf: bytes, start: int, end: int) -> list[bytes]:
    out: list[bytes] = []
    for field, wire, val in _fields(buf, start, end):
        if field == 1:
            if wire != 2:
                raise ProtoError(f"bytes list: wire type {wire}")
            out.append(bytes(buf[val[0] : val[1]]))
    return out


def _feature(buf: bytes, start: int, end: int) -> Feature:
    kind: Kind = "none"
    values: list = []
    for field, wire, val in _fields(buf, start, end):
        if wire != 2 or field not in (1, 2, 3):
            continue
        if field == 1:
            kind, values = "bytes", _bytes_list(buf, *val)
        elif field == 2:
            kind, values = "float", _float_list(buf, *val)
        else:
            kind, values = "int64", _int64_list(buf, *val)
    return kind, values


def parse_example(buf: bytes) -> dict[str, Feature]:
    """Decode a serialized ``tf.train.Example`` into ``{name: (kind, values)}``."""
    out: dict[str, Feature] = {}
    end = len(buf)
    for field, wire, val in _fields(buf, 0, end):
        if field != 1 or wire != 2:
            continue
        for f2, w2, entry in _fields(buf, *val):  # Features
            if f2 != 1 or w2 != 2:
                continue
            key: str | None = None
            feature: Feature = ("none", [])
            for f3, w3, v3 in _fields(buf, *entry):  # map entry
                if f3 == 1 and w3 == 2:
                    try:
                        key = bytes(buf[v3[0] : v3[1]]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtoError("feature name is not UTF-8") from None
                elif f3 == 2 and w3 == 2:
                    feature = _feature(buf, *v3)
            if key is None:
                raise ProtoError("feature map entry without a name")
            out[key] = feature
    return out
