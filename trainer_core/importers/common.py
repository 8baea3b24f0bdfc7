"""What every importer shares: the error type, the episode it produces, and the writer.

The writer makes two passes over the episodes an importer yields. The first validates the whole
source (the importer raises :class:`SourceError` on the first defect) and decides, per episode,
whether it is new, already there byte for byte (skipped), or in conflict with a different episode
of the same id (an error: a user's episode is never overwritten). Only when the whole source is
clean does the second pass write, each episode into a dot-prefixed staging directory inside the
output folder and then renamed into place, so a watching daemon never sees half an episode.
Ids are derived from the source, so importing the same source twice writes nothing new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_core.config import IngestConfig
from trainer_core.fsio import TEMP_PREFIX, fsync_dir, fsync_tree
from trainer_core.rlds.hashing import COMPLETE_MARKER

STAGING_PREFIX = TEMP_PREFIX + "import-"
STEPS_SHARD = "steps/000000.jsonl"
SCHEMA_VERSION = "1.1"
IMPORT_EXTRA_HINT = "pip install 'continuon-trainer[import]'"


class SourceError(Exception):
    """A source that cannot be imported, located as precisely as the format allows."""

    def __init__(
        self,
        path: Path | str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        where: str | None = None,
    ) -> None:
        self.path = str(path)
        self.message = message
        self.line = line
        self.column = column
        self.where = where
        self.written = 0  # episodes already renamed into place when this was raised
        super().__init__(str(self))

    def __str__(self) -> str:
        loc = self.path
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        if self.where:
            loc += f" ({self.where})"
        return f"{loc}: {self.message}"


class MissingExtraError(Exception):
    """An optional dependency an importer needs is not installed."""


@dataclass(frozen=True)
class ImportedEpisode:
    """One episode in layout A form: ``metadata.json`` content and one JSON object per step;
    ``source`` names the file it came from, for error messages."""

    episode_id: str
    metadata: dict[str, Any]
    steps: list[dict[str, Any]]
    source: str
    # blobs/<name> -> source file to copy, or the bytes themselves (frames stored in a table)
    blobs: dict[str, Path | bytes] = field(default_factory=dict)
    present_as: str | None = None  # already imported under this id (importer's own check)


@dataclass
class ImportSummary:
    """What an import did. ``steps`` counts the steps of the episodes written."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    steps: int = 0

    def line(self, label: str, out: Path) -> str:
        """One summary line for the operator."""
        return (
            f"{label}: {len(self.written)} episode(s) written, {len(self.skipped)} already "
            f"present and skipped, {self.steps} step(s) written to {out}"
        )


def find_sources(
    src: Path, is_source: Callable[[Path], bool], expected: str, none_found: str
) -> dict[Path, str]:
    """Folders at or under ``src`` that ``is_source`` accepts (never descending into one), with
    their names: the folder name, or the path below ``src`` (joined by ``-``) where two folders
    share a name. ``SourceError`` when ``src`` is no directory (``expected`` says what it should
    be) or holds none (``none_found``)."""
    if not src.is_dir():
        raise SourceError(src, f"not a directory (expected {expected})")
    if is_source(src):
        return {src: src.resolve().name}
    roots: list[Path] = []
    for dirpath, dirnames, _files in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != src and is_source(here):
            roots.append(here)
            dirnames[:] = []
    if not roots:
        raise SourceError(src, none_found)
    basenames = [r.name for r in roots]
    return {
        r: r.name if basenames.count(r.name) == 1 else "-".join(r.relative_to(src).parts)
        for r in roots
    }


def safe_name(text: str) -> str:
    """A file-name-safe, non-hidden rendering of ``text`` for episode ids."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return name or "unnamed"


def finite_float(value: Any, path: Path | str, where: str) -> float:
    """``value`` as a finite float, or a :class:`SourceError` naming where it was."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(path, f"expected a number, got {value!r}", where=where)
    out = float(value)
    if not math.isfinite(out):
        raise SourceError(path, f"value is not finite ({out})", where=where)
    return out


def finite_vector(value: Any, path: Path | str, where: str) -> list[float]:
    """A numeric list (or scalar, as a one-element list) of finite floats."""
    items = value if isinstance(value, list | tuple) else [value]
    return [finite_float(v, path, f"{where}[{i}]") for i, v in enumerate(items)]


def mark_episode_ends(steps: list[dict[str, Any]], terminal: bool) -> None:
    """Set the RLDS boundary flags: first, last, and terminal (on the last step only)."""
    for i, step in enumerate(steps):
        step["is_first"] = i == 0
        step["is_last"] = i == len(steps) - 1
        step["is_terminal"] = terminal and i == len(steps) - 1


def episode_files(episode: ImportedEpisode) -> dict[str, bytes]:
    """The exact bytes each file of the layout-A episode directory holds (deterministic, so a
    re-import can compare byte for byte)."""
    metadata = dict(episode.metadata)
    metadata["episode_id"] = episode.episode_id
    metadata.setdefault("schema_version", SCHEMA_VERSION)
    lines = [
        json.dumps(step, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        for step in episode.steps
    ]
    files = {
        "metadata.json": (
            json.dumps(metadata, allow_nan=False, ensure_ascii=False, indent=2) + "\n"
        ).encode("utf-8"),
        STEPS_SHARD: ("\n".join(lines) + "\n").encode("utf-8"),
    }
    for name, src in episode.blobs.items():  # the episode carries its frames: movable as is
        if isinstance(src, bytes):
            files[f"blobs/{name}"] = src
            continue
        try:
            files[f"blobs/{name}"] = src.read_bytes()
        except OSError as exc:
            raise SourceError(src, f"unreadable ({exc})") from exc
    files[COMPLETE_MARKER] = b""
    return files


def _same_as_existing(target: Path, files: dict[str, bytes]) -> bool:
    for rel, data in files.items():
        try:
            if (target / rel).read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def _check_limits(episode: ImportedEpisode, files: dict[str, bytes], limits: IngestConfig) -> None:
    where = f"episode {episode.episode_id}"
    if not episode.steps:
        raise SourceError(episode.source, "no steps", where=where)
    if len(episode.steps) > limits.max_steps:
        raise SourceError(
            episode.source,
            f"{len(episode.steps)} steps, more than ingest.max_steps={limits.max_steps}; "
            "the daemon would reject it",
            where=where,
        )
    biggest = max(len(data) for data in files.values())
    if biggest > limits.max_file_mb * 1024 * 1024:
        raise SourceError(
            episode.source,
            f"a file of {biggest / 2**20:.1f} MB, more than ingest.max_file_mb",
            where=where,
        )
    longest = max(len(line) for line in files[STEPS_SHARD].split(b"\n"))
    if longest > limits.max_line_bytes:
        raise SourceError(
            episode.source,
            f"a step is {longest} bytes of JSON, more than ingest.max_line_bytes",
            where=where,
        )


def _write_one(staging: Path, out: Path, episode_id: str, files: dict[str, bytes]) -> None:
    staged = staging / episode_id
    for rel, data in files.items():
        path = staged / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    fsync_tree(staged)
    # os.rename refuses a non-empty target, so a concurrent writer cannot be overwritten.
    os.rename(staged, out / episode_id)
    fsync_dir(out)


def write_episodes(
    produce: Callable[[], Iterable[ImportedEpisode]],
    out: Path,
    limits: IngestConfig | None = None,
) -> ImportSummary:
    """Validate everything ``produce()`` yields, then write the new episodes into ``out``.

    ``produce`` is called twice (validate, then write) so that memory holds one episode at a
    time. Raises :class:`SourceError` before anything is written when the source is malformed,
    two episodes share an id, or an existing episode of the same id differs.
    """
    limits = limits or IngestConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SourceError(out, "the output exists and is not a directory")
    plan: dict[str, str] = {}  # episode id -> sha256 of its files, for the new ones
    summary = ImportSummary()
    seen: set[str] = set()
    for episode in produce():
        if episode.present_as is not None:
            summary.skipped.append(episode.present_as)
            continue
        if episode.episode_id in seen:
            raise SourceError(out, f"two source episodes map to the id {episode.episode_id!r}")
        seen.add(episode.episode_id)
        files = episode_files(episode)
        _check_limits(episode, files, limits)
        target = out / episode.episode_id
        if target.exists() or target.is_symlink():
            if not _same_as_existing(target, files):
                raise SourceError(
                    target,
                    "an episode with this id already exists with different content; "
                    "it is never overwritten (move it away to re-import)",
                )
            summary.skipped.append(episode.episode_id)
        else:
            plan[episode.episode_id] = _digest(files)
    if not plan:
        return summary

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        for episode in produce():
            if episode.episode_id not in plan:
                continue
            files = episode_files(episode)
            if _digest(files) != plan[episode.episode_id]:
                raise SourceError(episode.episode_id, "the source changed during the import")
            _write_one(staging, out, episode.episode_id, files)
            summary.written.append(episode.episode_id)
            summary.steps += len(episode.steps)
    except SourceError as exc:
        exc.written = len(summary.written)
        raise
    except OSError as exc:
        err = SourceError(out, f"cannot write the episodes ({exc})")
        err.written = len(summary.written)
        raise err from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return summary


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel] + b"\0")
    return h.hexdigest()


def run_import(
    label: str,
    produce: Callable[[], Iterator[ImportedEpisode]],
    out: Path,
    limits: IngestConfig,
) -> int:
    """CLI wrapper: import, print a summary, map errors to exit code 2 on stderr."""
    try:
        summary = write_episodes(produce, out, limits)
    except SourceError as exc:
        print(f"import {label}: error: {exc}", file=sys.stderr)
        done = f"{exc.written} episode(s) were" if exc.written else "nothing was"
        print(f"import {label}: {done} written", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(f"import {label}: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(f"import {label}", out))
    return 0
