"""LeRobot datasets (local folders, codebase v2.0/v2.1 and v3.0) into layout-A episodes.

v2.x: ``meta/info.json``, ``meta/episodes.jsonl``, ``meta/tasks.jsonl`` and one parquet file per
episode at ``info.data_path``. v3.0: ``meta/info.json``, ``meta/tasks.parquet``,
``meta/episodes/chunk-*/file-*.parquet`` and data files holding many episodes each, located by
the episodes metadata (``data/chunk_index``, ``data/file_index``, ``dataset_from_index``,
``dataset_to_index``). Frames are grouped by ``episode_index`` and ordered by ``frame_index``.

Mapping: ``observation.state`` -> ``observation.robot_state.joint_positions`` (plus
``joint_names`` and ``observation.named_state``); ``action`` -> ``action.command`` (plus
``names``/``named``); the task -> ``observation.language_instruction`` and an ``instruction:``
tag; videos -> ``observation.media`` URIs and timestamps (trainer_core/frames.py decodes them
with PyAV at those timestamps when a config trains on them); image features (a struct of
``bytes``/``path`` per frame) -> copied into the episode's ``blobs/`` (decoded once on the way, so
a corrupt image is refused by name) and referenced relatively with width and height; the first
camera in ``info.json`` order is ``observation.media.rgb``, all are under
``observation.media.cameras``; other numeric
``observation.*`` features -> ``observation.<rest>``; ``next.reward`` -> ``reward``;
``next.done`` -> ``is_terminal``. pyarrow is an optional extra, imported only here.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.config import IngestConfig
from trainer_core.importers.common import (
    IMPORT_EXTRA_HINT,
    ImportedEpisode,
    ImportSummary,
    MissingExtraError,
    SourceError,
    find_sources,
    finite_float,
    finite_vector,
    mark_episode_ends,
    run_import,
    safe_name,
    write_episodes,
)

V2_VERSIONS = ("v2.0", "v2.1")
V3_VERSIONS = ("v3.0",)
# Columns this importer maps itself; any other numeric feature is carried along as is.
HANDLED = {
    "episode_index",
    "frame_index",
    "timestamp",
    "index",
    "task_index",
    "action",
    "observation.state",
    "next.reward",
    "next.done",
}
NUMERIC_DTYPES = {
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool",
}  # fmt: skip


def import_command(args: Any, config: Any) -> int:
    """``continuon-trainer import lerobot SRC --out DIR``."""
    src, out = Path(args.src), Path(args.out)
    return run_import("lerobot", lambda: iter_lerobot_episodes(src), out, config.ingest)


def import_lerobot(src: Path, out: Path, limits: IngestConfig | None = None) -> ImportSummary:
    """Import every LeRobot dataset at or under ``src`` into ``out`` (see module docstring)."""
    return write_episodes(lambda: iter_lerobot_episodes(Path(src)), Path(out), limits)


# --- parquet access (pyarrow is optional) -----------------------------------------------------


class _Parquet:
    """The few pyarrow calls we need, with errors turned into :class:`SourceError`."""

    def __init__(self) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise MissingExtraError(
                f"reading LeRobot datasets needs pyarrow, which is not installed ({exc}); "
                f"install it with: {IMPORT_EXTRA_HINT}"
            ) from exc
        self._pa, self._pq = pa, pq
        self._errors: tuple[type[BaseException], ...] = (OSError, ValueError, pa.ArrowException)

    def schema(self, path: Path) -> Any:
        if not path.is_file():
            raise SourceError(path, "missing parquet file")
        try:
            return self._pq.read_schema(path)
        except self._errors as exc:
            raise SourceError(path, f"not a readable parquet file ({exc})") from exc

    def columns(self, path: Path, required: list[str], optional: list[str]) -> dict[str, list]:
        """Read ``required`` (an error names the missing ones) and those of ``optional`` present."""
        schema = self.schema(path)
        names = set(schema.names)
        missing = [c for c in required if c not in names]
        if missing:
            raise SourceError(
                path,
                f"missing column(s) {missing}; columns present: {_some(sorted(names))}",
            )
        wanted = list(dict.fromkeys(required + [c for c in optional if c in names]))
        try:
            table = self._pq.read_table(path, columns=wanted)
        except self._errors as exc:
            raise SourceError(path, f"not a readable parquet file ({exc})") from exc
        out = {}
        for c in wanted:
            values = table.column(c).to_pylist()
            out[c] = (
                _short_floats(values) if self._is_float32(table.schema.field(c).type) else values
            )
        return out

    def _is_float32(self, typ: Any) -> bool:
        types = self._pa.types
        if types.is_list(typ) or types.is_fixed_size_list(typ) or types.is_large_list(typ):
            typ = typ.value_type
        return bool(types.is_float32(typ))

    def pandas_index_columns(self, path: Path) -> list[str]:
        """Columns pandas stored its index in (how LeRobot v3 keeps task strings)."""
        meta = self.schema(path).metadata or {}
        try:
            pandas = json.loads(meta.get(b"pandas", b"{}"))
        except ValueError:
            return []
        return [c for c in pandas.get("index_columns", []) if isinstance(c, str)]


def _some(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _short_f32(x: Any) -> Any:
    """The shortest decimal that is the same float32 (``0.1``, not ``0.10000000149011612``):
    float32 values widened to Python floats carry digits that are representation noise."""
    if not isinstance(x, float) or not math.isfinite(x):
        return x
    for digits in (6, 7, 8):
        y = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", y))[0] == x:
            return y
    return x


def _short_floats(values: list[Any]) -> list[Any]:
    return [[_short_f32(x) for x in v] if isinstance(v, list) else _short_f32(v) for v in values]


# --- finding datasets -------------------------------------------------------------------------


def _looks_like_dataset(path: Path) -> bool:
    data = path / "data"
    return (path / "meta").is_dir() or (data.is_dir() and any(data.glob("chunk-*")))


def find_datasets(src: Path) -> dict[Path, str]:
    """Dataset roots at or under ``src`` (not descending into a dataset), with their names:
    the folder name, or the path below ``src`` where two folders share a name."""
    return find_sources(
        src,
        _looks_like_dataset,
        "a LeRobot dataset folder",
        "no LeRobot dataset found: expected meta/info.json here or in a sub-folder",
    )


# --- metadata ---------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise SourceError(path, "missing (a LeRobot dataset needs it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SourceError(
            path, f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, f"unreadable ({exc})") from exc


def _load_jsonl(path: Path, required: dict[str, type]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; each object must hold ``required``."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, f"unreadable ({exc})") from exc
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(path, f"invalid JSON: {exc.msg}", line=n, column=exc.colno) from exc
        if not isinstance(obj, dict):
            raise SourceError(path, "expected a JSON object", line=n)
        for key, typ in required.items():
            value = obj.get(key)
            if not isinstance(value, typ) or isinstance(value, bool):
                raise SourceError(path, f"{key!r} must be {typ.__name__}, got {value!r}", line=n)
        rows.append((n, obj))
    return rows


def _flatten_names(names: Any) -> list[Any]:
    if isinstance(names, dict):
        return [n for v in names.values() for n in _flatten_names(v)]
    if isinstance(names, list):
        return [n for v in names for n in (_flatten_names(v) if isinstance(v, list) else [v])]
    return [names]


def _unique(names: list[str]) -> list[str]:
    """Repeated names (``gripper``, ``gripper``) get ``_2``, ``_3``... so named maps keep all."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _vector_names(info_path: Path, key: str, feature: Any) -> list[str]:
    """The element names of a vector feature, from ``names`` or ``<key>_<i>``."""
    where = f"features.{key}"
    if not isinstance(feature, dict):
        raise SourceError(info_path, "must be an object", where=where)
    shape = feature.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 1
        or not isinstance(shape[0], int)
        or shape[0] < 1
    ):
        raise SourceError(info_path, f"shape must be [n] with n >= 1, got {shape!r}", where=where)
    size = shape[0]
    raw = feature.get("names")
    if raw is None:
        return [f"{safe_name(key)}_{i}" for i in range(size)]
    names = _flatten_names(raw)
    if not all(isinstance(n, str) for n in names):
        raise SourceError(info_path, f"names must be strings, got {raw!r}", where=where)
    if len(names) != size:
        raise SourceError(info_path, f"{len(names)} names for shape [{size}]: {names}", where=where)
    return _unique(names)


def _splits(info_path: Path, info: dict[str, Any]) -> list[tuple[str, int, int]]:
    raw = info.get("splits") or {}
    if not isinstance(raw, dict):
        raise SourceError(info_path, "must be an object", where="splits")
    out = []
    for split, spec in raw.items():
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
        if not m:
            raise SourceError(
                info_path,
                f"expected 'start:end' episode range, got {spec!r}",
                where=f"splits.{split}",
            )
        out.append((str(split), int(m.group(1)), int(m.group(2))))
    return out


@dataclass
class _Dataset:
    """What one dataset's metadata says, validated."""

    root: Path
    name: str
    version: str
    info_path: Path
    info: dict[str, Any]
    features: dict[str, Any]
    action_names: list[str]
    state_names: list[str] | None
    video_keys: list[str]
    image_keys: list[str]
    skipped: list[str]
    extras: list[str]
    splits: list[tuple[str, int, int]]
    tasks: dict[int, str]

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _load_dataset(root: Path, name: str) -> _Dataset:
    info_path = root / "meta" / "info.json"
    info = _load_json(info_path)
    if not isinstance(info, dict):
        raise SourceError(info_path, "must be a JSON object")
    version = info.get("codebase_version")
    if version not in V2_VERSIONS + V3_VERSIONS:
        raise SourceError(
            info_path,
            f"unsupported codebase_version {version!r} (supported: "
            f"{', '.join(V2_VERSIONS + V3_VERSIONS)})",
            where="codebase_version",
        )
    features = info.get("features")
    if not isinstance(features, dict):
        raise SourceError(info_path, "missing or not an object", where="features")
    if "action" not in features:
        raise SourceError(info_path, "no 'action' feature: nothing to learn from", where="features")
    if not isinstance(info.get("data_path"), str):
        raise SourceError(info_path, "missing or not a string", where="data_path")
    video_keys = [
        k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "video"
    ]
    if video_keys and not isinstance(info.get("video_path"), str):
        raise SourceError(
            info_path, "video features but no video_path template", where="video_path"
        )
    image_keys = [
        k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "image"
    ]
    extras = [
        k
        for k, f in features.items()
        if k not in HANDLED and isinstance(f, dict) and f.get("dtype") in NUMERIC_DTYPES
    ]
    return _Dataset(
        root=root,
        name=name,
        version="v3" if version in V3_VERSIONS else "v2",
        info_path=info_path,
        info=info,
        features=features,
        action_names=_vector_names(info_path, "action", features["action"]),
        state_names=(
            _vector_names(info_path, "observation.state", features["observation.state"])
            if "observation.state" in features
            else None
        ),
        video_keys=video_keys,
        image_keys=image_keys,
        skipped=[],
        extras=extras,
        splits=_splits(info_path, info),
        tasks={},
    )


def _format_template(ds: _Dataset, key: str, **fields: Any) -> str:
    template = ds.info[key]
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise SourceError(
            ds.info_path, f"template {template!r} cannot be filled ({exc!r})", where=key
        ) from exc


# --- frames -> steps --------------------------------------------------------------------------


@dataclass
class _Video:
    uri: str
    offset_s: float  # where this episode starts inside the file (v3 packs many per file)
    size: dict[str, int]  # width/height when info.json says


def _video_size(ds: _Dataset, key: str) -> dict[str, int]:
    info = ds.features[key].get("info")
    info = info if isinstance(info, dict) else {}
    return {
        k: info[f"video.{k}"]
        for k in ("width", "height")
        if isinstance(info.get(f"video.{k}"), int)
    }


def _frame_columns(ds: _Dataset) -> tuple[list[str], list[str]]:
    required = ["episode_index", "frame_index", "timestamp", "action"]
    if ds.state_names is not None:
        required.append("observation.state")
    required += ds.image_keys
    optional = ["index", "task_index", "next.reward", "next.done", *ds.extras]
    return required, optional


IMAGE_MAGIC = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg"}


def _image_cell(
    ds: _Dataset, key: str, cell: Any, data_path: Path, where: str, frame: int
) -> tuple[str, bytes | Path, dict[str, Any]]:
    """(blob name, its bytes or source file, the camera entry) of one LeRobot image cell."""
    from PIL import Image

    if not isinstance(cell, dict):
        raise SourceError(
            data_path, f"image cell is {type(cell).__name__}, not {{bytes, path}}", where=where
        )
    data, path = cell.get("bytes"), cell.get("path")
    src: bytes | Path
    if isinstance(data, bytes) and data:
        src, label = data, f"{data_path} {where}"
    elif isinstance(path, str) and path:
        src = Path(path) if Path(path).is_absolute() else ds.root / path
        label = str(src)
        if not src.is_file():
            raise SourceError(src, f"image file missing ({where} of {data_path})")
    else:
        raise SourceError(data_path, "image cell has neither bytes nor a path", where=where)
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            img.load()
            width, height, fmt = img.width, img.height, img.format
    except Exception as exc:  # Pillow raises many types for damaged data
        raise SourceError(label, f"corrupt image, cannot be decoded ({exc})", where=where) from None
    head = src[:4] if isinstance(src, bytes) else src.read_bytes()[:4]
    suffix = next((s for m, s in IMAGE_MAGIC.items() if head.startswith(m)), f".{fmt}".lower())
    name = f"{_extra_key(key)}_{frame:06d}{suffix}"
    return (
        name,
        src,
        {"uri": f"blobs/{name}", "width": width, "height": height, "format": suffix.lstrip(".")},
    )


def _extra_key(key: str) -> str:
    return key.removeprefix("observation.").replace(".", "_").replace("/", "_")


def _build_episode(
    ds: _Dataset,
    episode_index: int,
    cols: dict[str, list],
    rows: list[int],
    data_path: Path,
    videos: dict[str, _Video],
    episode_tasks: list[str],
) -> ImportedEpisode:
    """One episode from the rows of ``cols`` that belong to it."""
    frame_col = cols["frame_index"]
    rows = sorted(rows, key=lambda r: frame_col[r])
    for a, b in itertools.pairwise(rows):
        if frame_col[a] == frame_col[b]:
            raise SourceError(
                data_path,
                f"frame_index {frame_col[a]} appears twice in episode {episode_index}",
                where=f"rows {a} and {b}",
            )
    steps: list[dict[str, Any]] = []
    instructions: list[str] = []
    blobs: dict[str, bytes | Path] = {}
    cameras = [k for k in ds.features if k in videos or k in ds.image_keys]
    for i, r in enumerate(rows):

        def at(col: str, r: int = r) -> str:
            return f"row {r}, column {col!r}"

        ts = finite_float(cols["timestamp"][r], data_path, at("timestamp"))
        action = finite_vector(cols["action"][r], data_path, at("action"))
        if len(action) != len(ds.action_names):
            raise SourceError(
                data_path,
                f"{len(action)} values, info.json declares {len(ds.action_names)}",
                where=at("action"),
            )
        observation: dict[str, Any] = {}
        if ds.state_names is not None:
            state = finite_vector(cols["observation.state"][r], data_path, at("observation.state"))
            if len(state) != len(ds.state_names):
                raise SourceError(
                    data_path,
                    f"{len(state)} values, info.json declares {len(ds.state_names)}",
                    where=at("observation.state"),
                )
            observation["robot_state"] = {
                "joint_positions": state,
                "joint_names": ds.state_names,
                "timestamp_nanos": _nanos(ts),
            }
            observation["named_state"] = dict(zip(ds.state_names, state, strict=True))
        task = _task_of(ds, cols, r, data_path, episode_tasks)
        if task is not None:
            observation["language_instruction"] = task
            if task not in instructions:
                instructions.append(task)
        if cameras:
            cams = {
                key: {
                    "uri": v.uri,
                    "timestamp_ns": _nanos(v.offset_s + ts),
                    "format": "mp4",
                    **v.size,
                }
                for key, v in videos.items()
            }
            for key in ds.image_keys:
                name, src, cams[key] = _image_cell(
                    ds, key, cols[key][r], data_path, at(key), frame_col[r]
                )
                blobs[name] = src
            observation["media"] = {
                "rgb": cams[cameras[0]],
                "cameras": {k: cams[k] for k in cameras},
            }
        for key in ds.extras:
            if key in cols and key.startswith("observation."):
                observation[_extra_key(key)] = _plain_value(cols[key][r], data_path, at(key))
        step_metadata = {"lerobot_frame_index": str(frame_col[r])}
        if "index" in cols:
            step_metadata["lerobot_index"] = str(cols["index"][r])
        for key in ds.extras:
            if key in cols and not key.startswith("observation."):
                value = _plain_value(cols[key][r], data_path, at(key))
                step_metadata[_extra_key(key)] = (
                    value if isinstance(value, str) else json.dumps(value)
                )
        reward = 0.0
        if "next.reward" in cols:
            reward = finite_vector(cols["next.reward"][r], data_path, at("next.reward"))[0]
        steps.append(
            {
                "observation": observation,
                "action": {
                    "command": action,
                    "names": ds.action_names,
                    "named": dict(zip(ds.action_names, action, strict=True)),
                    "source": "lerobot",
                },
                "reward": reward,
                "timestamp": ts,
                "step_index": i,
                "step_metadata": step_metadata,
            }
        )
    terminal = True
    if "next.done" in cols and rows:
        done = cols["next.done"][rows[-1]]
        terminal = bool(done[0] if isinstance(done, list) and done else done)
    mark_episode_ends(steps, terminal)
    return ImportedEpisode(
        episode_id=f"lerobot-{safe_name(ds.name)}-ep{episode_index:06d}",
        metadata=_metadata(ds, episode_index, data_path, steps, instructions),
        steps=steps,
        source=str(data_path),
        blobs=blobs,
    )


def _nanos(seconds: float) -> int:
    """Seconds as integer nanoseconds, rounded to the microsecond (finer digits of LeRobot's
    float32 timestamps are noise, and 0.5 + 0.1 must not come out as 599999999 ns)."""
    return round(seconds * 1e6) * 1000


def _plain_value(value: Any, path: Path, where: str) -> Any:
    """A JSON-safe copy of a numeric/bool/string cell (NaN is an error, not a silent null)."""
    if isinstance(value, list):
        return [_plain_value(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        return finite_float(value, path, where)
    return value


def _task_of(
    ds: _Dataset, cols: dict[str, list], r: int, path: Path, episode_tasks: list[str]
) -> str | None:
    if "task_index" in cols and ds.tasks:
        idx = cols["task_index"][r]
        if idx not in ds.tasks:
            raise SourceError(
                path, f"task_index {idx!r} is not in the task table", where=f"row {r}"
            )
        return ds.tasks[idx]
    return episode_tasks[0] if episode_tasks else None


def _metadata(
    ds: _Dataset,
    episode_index: int,
    data_path: Path,
    steps: list[dict[str, Any]],
    instructions: list[str],
) -> dict[str, Any]:
    tags = [f"origin:lerobot:{ds.name}"]
    tags += [f"hf.split:{s}" for s, lo, hi in ds.splits if lo <= episode_index < hi]
    tags += [f"instruction:{t}" for t in instructions]
    tags.append("lerobot")
    duration_s = steps[-1]["timestamp"] - steps[0]["timestamp"] if steps else 0.0
    return {
        "xr_mode": "trainer",
        "control_role": "human_teleop",
        "environment_id": f"lerobot:{ds.name}",
        "tags": tags,
        "software": {
            "xr_app": "continuon-trainer import lerobot",
            "continuonbrain_os": "unknown",
            "glove_firmware": "absent",
        },
        "robot_model": str(ds.info.get("robot_type") or "unknown"),
        "duration_ms": round(duration_s * 1000),
        "provenance": {
            "importer": "lerobot",
            "dataset": ds.name,
            "codebase_version": ds.info["codebase_version"],
            "episode_index": episode_index,
            "data_file": ds.rel(data_path),
            "fps": ds.info.get("fps"),
            "state_names": ds.state_names,
            "action_names": ds.action_names,
            "video_keys": ds.video_keys,
            "image_keys": ds.image_keys,
            "features_not_imported": ds.skipped,
        },
    }


# --- v2.x -------------------------------------------------------------------------------------


def _iter_v2(pq: _Parquet, ds: _Dataset) -> Iterator[ImportedEpisode]:
    chunks_size = ds.info.get("chunks_size")
    if not isinstance(chunks_size, int) or isinstance(chunks_size, bool) or chunks_size < 1:
        raise SourceError(
            ds.info_path, f"must be an integer >= 1, got {chunks_size!r}", where="chunks_size"
        )
    tasks_path = ds.root / "meta" / "tasks.jsonl"
    if tasks_path.is_file():
        for n, row in _load_jsonl(tasks_path, {"task_index": int, "task": str}):
            if row["task_index"] in ds.tasks:
                raise SourceError(tasks_path, f"task_index {row['task_index']} repeats", line=n)
            ds.tasks[row["task_index"]] = row["task"]
    episodes_path = ds.root / "meta" / "episodes.jsonl"
    if not episodes_path.is_file():
        raise SourceError(episodes_path, "missing (a LeRobot v2 dataset needs it)")
    episodes = _load_jsonl(episodes_path, {"episode_index": int})
    if not episodes:
        raise SourceError(episodes_path, "lists no episodes")
    seen: set[int] = set()
    required, optional = _frame_columns(ds)
    for n, row in sorted(episodes, key=lambda item: item[1]["episode_index"]):
        ep = row["episode_index"]
        if ep in seen:
            raise SourceError(episodes_path, f"episode_index {ep} repeats", line=n)
        seen.add(ep)
        tasks = row.get("tasks", [])
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise SourceError(episodes_path, "'tasks' must be a list of strings", line=n)
        chunk = ep // chunks_size
        data_path = ds.root / _format_template(
            ds, "data_path", episode_chunk=chunk, chunk_index=chunk, episode_index=ep
        )
        if not data_path.is_file():
            raise SourceError(
                data_path, f"missing data file of episode {ep} ({episodes_path.name} line {n})"
            )
        cols = pq.columns(data_path, required, optional)
        for r, value in enumerate(cols["episode_index"]):
            if value != ep:
                raise SourceError(
                    data_path,
                    f"episode_index {value!r} in the file of episode {ep}",
                    where=f"row {r}",
                )
        if not cols["episode_index"]:
            raise SourceError(data_path, f"no frames for episode {ep}")
        videos = {
            key: _Video(
                uri=(
                    ds.root
                    / _format_template(
                        ds,
                        "video_path",
                        episode_chunk=chunk,
                        chunk_index=chunk,
                        episode_index=ep,
                        video_key=key,
                    )
                )
                .resolve()
                .as_uri(),
                offset_s=0.0,
                size=_video_size(ds, key),
            )
            for key in ds.video_keys
        }
        rows = list(range(len(cols["episode_index"])))
        yield _build_episode(ds, ep, cols, rows, data_path, videos, tasks)


# --- v3.0 -------------------------------------------------------------------------------------


def _load_v3_tasks(pq: _Parquet, ds: _Dataset) -> None:
    path = ds.root / "meta" / "tasks.parquet"
    names = set(pq.schema(path).names)
    # pandas keeps the task strings in the index: a "task" column, or an unnamed index level.
    text_col = next(
        (c for c in ["task", *pq.pandas_index_columns(path), "__index_level_0__"] if c in names),
        None,
    )
    if text_col is None:
        raise SourceError(
            path, f"no task text column ('task' or a pandas index); columns: {sorted(names)}"
        )
    cols = pq.columns(path, ["task_index", text_col], [])
    for r, (idx, text) in enumerate(zip(cols["task_index"], cols[text_col], strict=True)):
        if not isinstance(idx, int) or not isinstance(text, str):
            raise SourceError(path, f"bad task row ({idx!r}, {text!r})", where=f"row {r}")
        if idx in ds.tasks:
            raise SourceError(path, f"task_index {idx} repeats", where=f"row {r}")
        ds.tasks[idx] = text


@dataclass
class _V3Episode:
    index: int
    data_chunk: int
    data_file: int
    start: int
    stop: int
    tasks: list[str]
    videos: dict[str, tuple[int, int, float]]
    where: str


def _load_v3_episodes(pq: _Parquet, ds: _Dataset) -> list[_V3Episode]:
    folder = ds.root / "meta" / "episodes"
    files = sorted(folder.glob("chunk-*/file-*.parquet"))
    if not files:
        raise SourceError(folder, "no chunk-*/file-*.parquet episode metadata files")
    required = [
        "episode_index",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
    ]
    for key in ds.video_keys:
        required += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    out: dict[int, _V3Episode] = {}
    for path in files:
        cols = pq.columns(path, required, ["tasks"])
        for r in range(len(cols["episode_index"])):
            where = f"{ds.rel(path)} row {r}"
            ints = {}
            for c in required:
                if c.endswith("from_timestamp"):
                    continue
                v = cols[c][r]
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise SourceError(
                        path, f"expected an integer >= 0, got {v!r}", where=f"row {r}, column {c!r}"
                    )
                ints[c] = v
            ep = ints["episode_index"]
            if ep in out:
                raise SourceError(path, f"episode_index {ep} repeats", where=f"row {r}")
            if ints["dataset_to_index"] <= ints["dataset_from_index"]:
                raise SourceError(
                    path, "dataset_to_index must exceed dataset_from_index", where=f"row {r}"
                )
            tasks = cols["tasks"][r] if "tasks" in cols else []
            if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                raise SourceError(path, "'tasks' must be a list of strings", where=f"row {r}")
            videos = {
                key: (
                    ints[f"videos/{key}/chunk_index"],
                    ints[f"videos/{key}/file_index"],
                    finite_float(
                        cols[f"videos/{key}/from_timestamp"][r],
                        path,
                        f"row {r}, column 'videos/{key}/from_timestamp'",
                    ),
                )
                for key in ds.video_keys
            }
            out[ep] = _V3Episode(
                index=ep,
                data_chunk=ints["data/chunk_index"],
                data_file=ints["data/file_index"],
                start=ints["dataset_from_index"],
                stop=ints["dataset_to_index"],
                tasks=tasks,
                videos=videos,
                where=where,
            )
    return [out[k] for k in sorted(out)]


def _iter_v3(pq: _Parquet, ds: _Dataset) -> Iterator[ImportedEpisode]:
    _load_v3_tasks(pq, ds)
    episodes = _load_v3_episodes(pq, ds)
    by_file: dict[tuple[int, int], list[_V3Episode]] = {}
    for e in episodes:
        by_file.setdefault((e.data_chunk, e.data_file), []).append(e)
    required, optional = _frame_columns(ds)
    for (chunk, file), members in sorted(by_file.items()):
        data_path = ds.root / _format_template(ds, "data_path", chunk_index=chunk, file_index=file)
        if not data_path.is_file():
            raise SourceError(
                data_path, f"missing data file of episode {members[0].index} ({members[0].where})"
            )
        cols = pq.columns(data_path, required, optional)
        rows_of: dict[int, list[int]] = {}
        for r, ep in enumerate(cols["episode_index"]):
            rows_of.setdefault(ep, []).append(r)
        for e in members:
            rows = rows_of.get(e.index, [])
            if len(rows) != e.stop - e.start:
                raise SourceError(
                    data_path,
                    f"episode {e.index} has {len(rows)} frames here, its metadata "
                    f"({e.where}) says {e.stop - e.start} (dataset_from_index {e.start} to "
                    f"dataset_to_index {e.stop})",
                )
            if "index" in cols:
                got = sorted(cols["index"][r] for r in rows)
                if got != list(range(e.start, e.stop)):
                    raise SourceError(
                        data_path,
                        f"episode {e.index}'s 'index' values do not span "
                        f"[{e.start}, {e.stop}) as its metadata ({e.where}) says",
                    )
            videos = {
                key: _Video(
                    uri=(
                        ds.root
                        / _format_template(
                            ds, "video_path", video_key=key, chunk_index=vc, file_index=vf
                        )
                    )
                    .resolve()
                    .as_uri(),
                    offset_s=offset,
                    size=_video_size(ds, key),
                )
                for key, (vc, vf, offset) in e.videos.items()
            }
            yield _build_episode(ds, e.index, cols, rows, data_path, videos, e.tasks)


# --- entry ------------------------------------------------------------------------------------


def iter_lerobot_episodes(src: Path) -> Iterator[ImportedEpisode]:
    """Every episode of every dataset at or under ``src``, validated as it is read."""
    pq = _Parquet()
    for root, name in find_datasets(Path(src)).items():
        ds = _load_dataset(root, name)
        yield from (_iter_v3 if ds.version == "v3" else _iter_v2)(pq, ds)
