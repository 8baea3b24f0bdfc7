"""Donkeycar 5.x tubs into layout-A episodes.

A tub is a folder with ``manifest.json`` (five JSON lines: inputs, types, user metadata, manifest
metadata with ``sessions``, catalog metadata ``{paths, current_index, max_len,
deleted_indexes}``), ``catalog_N.catalog`` files of JSON-line records (``_index``,
``_session_id``, ``_timestamp_ms``, ``user/angle``, ``user/throttle``, ``user/mode``,
``cam/image_array`` ...), their ``catalog_N.catalog_manifest`` and ``images/``.

One episode per ``_session_id``, split again where the clock jumps by more than ``max_gap_s``
(or goes backwards). Deleted records are skipped. ``action.command = [user/angle,
user/throttle]``; images stay files, referenced by URI in ``observation.media.rgb``; other numeric
inputs go to ``observation.named_state``; timestamps are kept.

Frames are copied into the episode's ``blobs/`` (decoded once on the way, so a corrupt JPEG is
refused by name) and referenced relatively with their width and height: the episode moves as
one folder. ``prefix`` goes in front of every episode id, so two cars' ``data/`` tubs do not
collide; a session already imported from the same tub (provenance ``tub_path``, session,
first record) is not imported again, whatever folder above it is named.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.config import IngestConfig
from trainer_core.importers.common import (
    ImportedEpisode,
    ImportSummary,
    SourceError,
    find_sources,
    finite_float,
    mark_episode_ends,
    run_import,
    safe_name,
    write_episodes,
)

DEFAULT_MAX_GAP_S = 2.0
ANGLE, THROTTLE, MODE = "user/angle", "user/throttle", "user/mode"
IMAGE_TYPES = ("image_array", "image")
NUMERIC_TYPES = ("float", "int")
MANIFEST_LINES = ("inputs", "types", "metadata", "manifest metadata", "catalog metadata")


def import_command(args: Any, config: Any) -> int:
    """``continuon-trainer import donkey-tub SRC --out DIR [--max-gap-s S]``."""
    src, out = Path(args.src), Path(args.out)
    max_gap_s = float(getattr(args, "max_gap_s", DEFAULT_MAX_GAP_S))
    prefix = getattr(args, "prefix", None) or ""
    if not max_gap_s > 0:
        print(
            f"import donkey-tub: error: --max-gap-s must be > 0 (got {max_gap_s})",
            file=sys.stderr,
        )
        return 2
    present = imported_sessions(out)
    return run_import(
        "donkey-tub",
        lambda: iter_tub_episodes(src, max_gap_s, prefix, present),
        out,
        config.ingest,
    )


def import_tub(
    src: Path,
    out: Path,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    limits: IngestConfig | None = None,
    prefix: str = "",
) -> ImportSummary:
    """Import every tub at or under ``src`` into ``out`` (see module docstring)."""
    present = imported_sessions(Path(out))
    return write_episodes(
        lambda: iter_tub_episodes(Path(src), max_gap_s, prefix, present), Path(out), limits
    )


def imported_sessions(out: Path) -> dict[tuple[str, str, int], str]:
    """(tub path, session id, first index) -> episode id of donkey episodes already in ``out``."""
    found: dict[tuple[str, str, int], str] = {}
    if not Path(out).is_dir():
        return found
    for meta_path in Path(out).glob("*/metadata.json"):
        try:
            prov = json.loads(meta_path.read_text()).get("provenance", {})
            if prov.get("importer") == "donkey-tub" and "tub_path" in prov:
                key = (prov["tub_path"], prov["session_id"], int(prov["first_index"]))
                found[key] = meta_path.parent.name
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            continue  # not ours to judge here; the daemon validates episodes itself
    return found


def frame_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) of a fully decoded image; SourceError naming it when it is corrupt."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except Exception as exc:  # Pillow raises many types for damaged data
        raise SourceError(
            path, f"corrupt image, cannot be decoded ({exc}); record {where}"
        ) from None


# --- reading ----------------------------------------------------------------------------------


def _json_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines; Donkeycar ends lines with CRLF."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, f"unreadable ({exc})") from exc
    return [
        (n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()
    ]


def _parse(path: Path, n: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise SourceError(path, f"invalid JSON: {exc.msg}", line=n, column=exc.colno) from exc


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class _Manifest:
    path: Path
    inputs: dict[str, str]  # input name -> type
    metadata: dict[str, Any]
    catalogs: list[Path]
    current_index: int
    deleted: set[int]


def _read_manifest(tub: Path) -> _Manifest:
    path = tub / "manifest.json"
    if not path.is_file():
        raise SourceError(path, "missing (a Donkeycar tub needs manifest.json)")
    lines = _json_lines(path)
    if len(lines) != len(MANIFEST_LINES):
        raise SourceError(
            path,
            f"{len(lines)} JSON lines; a tub manifest has {len(MANIFEST_LINES)}: "
            + ", ".join(MANIFEST_LINES),
        )
    (n1, l1), (n2, l2), (n3, l3), (_n4, l4), (n5, l5) = lines
    inputs, types, metadata = _parse(path, n1, l1), _parse(path, n2, l2), _parse(path, n3, l3)
    _parse(path, _n4, l4)  # manifest metadata (created_at, sessions): checked, not needed
    catalog = _parse(path, n5, l5)
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise SourceError(path, "inputs must be a list of strings", line=n1)
    if not isinstance(types, list) or len(types) != len(inputs):
        raise SourceError(path, f"types must be a list as long as inputs ({len(inputs)})", line=n2)
    if not isinstance(metadata, dict):
        raise SourceError(path, "metadata must be an object", line=n3)
    if not isinstance(catalog, dict):
        raise SourceError(path, "catalog metadata must be an object", line=n5)
    paths, current, deleted = (
        catalog.get("paths"),
        catalog.get("current_index"),
        catalog.get("deleted_indexes", []),
    )
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SourceError(path, "'paths' must be a list of catalog file names", line=n5)
    if not _int(current) or current < 0:
        raise SourceError(
            path, f"'current_index' must be an integer >= 0, got {current!r}", line=n5
        )
    if not isinstance(deleted, list) or not all(_int(d) for d in deleted):
        raise SourceError(path, "'deleted_indexes' must be a list of integers", line=n5)
    for d in deleted:
        if not 0 <= d < current:
            raise SourceError(
                path,
                f"deleted index {d} is out of range: records are 0..{current - 1} "
                f"(current_index {current})",
                line=n5,
            )
    catalogs = []
    for p in paths:
        resolved = (tub / p).resolve()
        if resolved.parent != tub.resolve() or p.startswith("."):
            raise SourceError(path, f"catalog path {p!r} is not a file in the tub", line=n5)
        if not resolved.is_file():
            raise SourceError(tub / p, f"missing catalog (listed in {path.name} line {n5})")
        catalogs.append(tub / p)
    return _Manifest(
        path=path,
        inputs=dict(zip(inputs, (str(t) for t in types), strict=True)),
        metadata=metadata,
        catalogs=catalogs,
        current_index=current,
        deleted=set(deleted),
    )


@dataclass
class _Record:
    index: int
    session: str
    timestamp_ms: int
    angle: float
    throttle: float
    mode: str | None
    image: str | None
    named: dict[str, float]
    where: str  # "catalog_0.catalog:12" for messages


def _read_records(tub: Path, manifest: _Manifest) -> list[_Record]:
    image_key = next((k for k, t in manifest.inputs.items() if t in IMAGE_TYPES), None)
    numeric = [
        k
        for k, t in manifest.inputs.items()
        if t in NUMERIC_TYPES and k not in (ANGLE, THROTTLE) and not k.startswith("_")
    ]
    records: dict[int, _Record] = {}
    for catalog in manifest.catalogs:
        side = catalog.with_suffix(".catalog_manifest")
        for n, line in _json_lines(side) if side.is_file() else []:
            if not isinstance(_parse(side, n, line), dict):
                raise SourceError(side, "expected a JSON object", line=n)
        for n, line in _json_lines(catalog):
            rec = _parse(catalog, n, line)
            where = f"{catalog.name}:{n}"
            if not isinstance(rec, dict):
                raise SourceError(catalog, "expected a JSON object", line=n)
            index = rec.get("_index")
            if not _int(index) or index < 0:
                raise SourceError(
                    catalog, f"'_index' must be an integer >= 0, got {index!r}", line=n
                )
            if index in manifest.deleted:
                continue
            if index >= manifest.current_index:
                raise SourceError(
                    catalog,
                    f"_index {index} is past the manifest's current_index {manifest.current_index}",
                    line=n,
                )
            if index in records:
                raise SourceError(
                    catalog, f"_index {index} repeats ({records[index].where})", line=n
                )
            records[index] = _record(tub, catalog, n, where, rec, image_key, numeric)
    return [records[i] for i in sorted(records)]


def _record(
    tub: Path,
    catalog: Path,
    n: int,
    where: str,
    rec: dict[str, Any],
    image_key: str | None,
    numeric: list[str],
) -> _Record:
    def num(key: str) -> float:
        if key not in rec:
            raise SourceError(catalog, f"record has no {key!r}", line=n)
        return finite_float(rec[key], catalog, f"line {n}, {key!r}")

    ts = rec.get("_timestamp_ms")
    if not _int(ts) or ts < 0:
        raise SourceError(catalog, f"'_timestamp_ms' must be an integer >= 0, got {ts!r}", line=n)
    session = rec.get("_session_id", "")
    if not isinstance(session, str):
        raise SourceError(catalog, f"'_session_id' must be a string, got {session!r}", line=n)
    mode = rec.get(MODE)
    if mode is not None and not isinstance(mode, str):
        raise SourceError(catalog, f"{MODE!r} must be a string, got {mode!r}", line=n)
    image = rec.get(image_key) if image_key else None
    if image is not None:
        if not isinstance(image, str) or Path(image).name != image or image.startswith("."):
            raise SourceError(
                catalog, f"{image_key!r} must be an image file name, got {image!r}", line=n
            )
        if not (tub / "images" / image).is_file():
            raise SourceError(catalog, f"image images/{image} does not exist", line=n)
    return _Record(
        index=rec["_index"],
        session=session,
        timestamp_ms=ts,
        angle=num(ANGLE),
        throttle=num(THROTTLE),
        mode=mode,
        image=image,
        named={safe_name(k): num(k) for k in numeric if rec.get(k) is not None},
        where=where,
    )


# --- segmenting and mapping -------------------------------------------------------------------


def split_segments(records: list[_Record], max_gap_s: float) -> list[list[_Record]]:
    """Consecutive records of one session, cut where time jumps over ``max_gap_s`` or back."""
    segments: list[list[_Record]] = []
    for rec in records:
        last = segments[-1][-1] if segments else None
        if (
            last is None
            or rec.session != last.session
            or not 0 <= rec.timestamp_ms - last.timestamp_ms <= max_gap_s * 1000
        ):
            segments.append([rec])
        else:
            segments[-1].append(rec)
    return segments


def _step(tub: Path, i: int, rec: _Record, sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "robot_state": {
            "timestamp_nanos": rec.timestamp_ms * 1_000_000,
            "wall_time_millis": rec.timestamp_ms,
        }
    }
    if rec.named:
        observation["named_state"] = rec.named
    if rec.image is not None:
        observation["video_frame_id"] = rec.image
        width, height = sizes[rec.image]
        observation["media"] = {
            "rgb": {
                "uri": f"blobs/{rec.image}",
                "frame_id": rec.image,
                "timestamp_ns": rec.timestamp_ms * 1_000_000,
                "width": width,
                "height": height,
                "format": Path(rec.image).suffix.lstrip(".").lower() or "unknown",
            }
        }
    step_metadata = {"donkey_index": str(rec.index), "donkey_session_id": rec.session}
    if rec.mode is not None:
        step_metadata["donkey_mode"] = rec.mode
    return {
        "observation": observation,
        "action": {
            "command": [rec.angle, rec.throttle],
            "names": ["steering", "throttle"],
            "source": "human_teleop" if rec.mode in (None, "user") else f"donkey_{rec.mode}",
        },
        "reward": 0.0,
        "timestamp": rec.timestamp_ms / 1000.0,
        "step_index": i,
        "step_metadata": step_metadata,
    }


def _episode(
    tub: Path, name: str, manifest: _Manifest, segment: list[_Record], n: int, prefix: str
) -> ImportedEpisode:
    session = segment[0].session or "nosession"
    blobs = {r.image: tub / "images" / r.image for r in segment if r.image is not None}
    sizes = {r.image: frame_size(blobs[r.image], r.where) for r in segment if r.image}
    steps = [_step(tub, i, rec, sizes) for i, rec in enumerate(segment)]
    mark_episode_ends(steps, terminal=True)
    metadata = {
        "xr_mode": "trainer",
        "control_role": "human_teleop",
        "environment_id": f"donkey:{name}",
        "tags": [f"origin:donkey:{name}", f"donkey.session:{session}", "donkeycar"],
        "software": {
            "xr_app": "continuon-trainer import donkey-tub",
            "continuonbrain_os": "unknown",
            "glove_firmware": "absent",
        },
        "robot_model": "donkeycar",
        "start_time_unix_ms": segment[0].timestamp_ms,
        "duration_ms": segment[-1].timestamp_ms - segment[0].timestamp_ms,
        "provenance": {
            "importer": "donkey-tub",
            "tub": name,
            "tub_path": str(tub.resolve()),
            "session_id": segment[0].session,
            "segment": n,
            "first_index": segment[0].index,
            "last_index": segment[-1].index,
            "first_record": segment[0].where,
            "tub_metadata": manifest.metadata,
        },
    }
    lead = f"{safe_name(prefix)}-" if prefix else ""
    return ImportedEpisode(
        episode_id=f"donkey-{lead}{safe_name(name)}-{safe_name(session)}-{n:03d}",
        metadata=metadata,
        steps=steps,
        source=str(tub / segment[0].where.split(":")[0]),
        blobs=blobs,
    )


# --- entry ------------------------------------------------------------------------------------


def _looks_like_tub(path: Path) -> bool:
    return (path / "manifest.json").is_file() or any(path.glob("catalog_*.catalog"))


def find_tubs(src: Path) -> dict[Path, str]:
    """Tubs at or under ``src``, with their names (folder name, or path where names repeat)."""
    return find_sources(
        src,
        _looks_like_tub,
        "a Donkeycar tub folder",
        "no Donkeycar tub found: expected manifest.json here or below",
    )


def iter_tub_episodes(
    src: Path,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    prefix: str = "",
    present: dict[tuple[str, str, int], str] | None = None,
) -> Iterator[ImportedEpisode]:
    """Every episode of every tub at or under ``src``, validated as it is read; sessions in
    ``present`` (see :func:`imported_sessions`) are left out."""
    for tub, name in find_tubs(Path(src)).items():
        manifest = _read_manifest(tub)
        records = _read_records(tub, manifest)
        counters: dict[str, int] = {}
        for segment in split_segments(records, max_gap_s):
            n = counters.get(segment[0].session, 0)
            counters[segment[0].session] = n + 1
            key = (str(tub.resolve()), segment[0].session, segment[0].index)
            if present and key in present:
                yield ImportedEpisode(present[key], {}, [], str(tub), present_as=present[key])
                continue
            yield _episode(tub, name, manifest, segment, n, prefix)
