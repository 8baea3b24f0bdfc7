"""RLDS episode readers: every layout of architecture §4 into one canonical, validated Episode.

Public API (pure stdlib + pydantic config; never torch or numpy, the daemon runs this):

- :func:`read_episode` — read and validate one episode entry (a directory or a file).
- :func:`is_episode_path` — whether a folder entry is something to read as an episode.
- :func:`layout_hint` — the layout an entry looks like, from its name alone.
- :func:`content_hash` — the sha256 that names an episode's content (ledger, adapter card).
- :class:`EpisodeError` — every reason an episode is unusable (a ``ValueError``);
  :class:`NotTrainingData` — its subclass for files recognised on purpose and skipped.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainer_core.config import IngestConfig
from trainer_core.episode import Episode
from trainer_core.rlds.errors import EpisodeError, NotTrainingData
from trainer_core.rlds.hashing import content_hash, is_ignored_name

__all__ = [
    "EpisodeError",
    "NotTrainingData",
    "content_hash",
    "is_episode_path",
    "is_ignored_name",
    "kind_of",
    "layout_hint",
    "read_episode",
]

_TFRECORD = re.compile(r"\.tfrecord(\.gz)?$|\.tfrecord-\d+-of-\d+$")
# Files that live beside episodes but are not episodes (TFDS dataset descriptions).
_SIDECARS = frozenset({"features.json", "dataset_info.json"})
_PROMOTION_PREFIX = "adapter_promotion"


def kind_of(name: str, is_dir: bool) -> str | None:
    """``"dir"``, ``"json"`` or ``"tfrecord"`` for a folder entry that looks like an episode,
    else None. Pure: decides from the name and whether it is a directory."""
    if is_ignored_name(name) or name in _SIDECARS:
        return None
    if is_dir:
        return "dir"
    if name.endswith(".json"):
        return "json"
    if _TFRECORD.search(name):
        return "tfrecord"
    return None


def layout_hint(path: Path) -> str | None:
    """:func:`kind_of` for a path (one ``is_dir`` call)."""
    return kind_of(path.name, path.is_dir())


def is_episode_path(path: Path) -> bool:
    """Whether ``path`` (an entry of the episodes folder) is an episode to read: a directory
    (``metadata.json``/``episode.json``/``steps/`` inside, or not: an unreadable one is rejected
    with a reason rather than ignored), a ``*.json`` file (not ``features.json``) or a TFRecord
    (``*.tfrecord``, ``*.tfrecord.gz``, ``*.tfrecord-00000-of-00001``). Hidden and temporary
    names (``.x``, ``x.tmp``, ``x~``) are not episodes."""
    return layout_hint(path) is not None


def _stem(name: str) -> str:
    for suffix in (".tfrecord.gz", ".tfrecord", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return _TFRECORD.sub("", name)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while an episode is parsed: JSON trees hold no
    reference cycles, and with tens of thousands of new containers alive the collector would
    rescan them over and over (a third of the read time on a large episode)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_episode(path: Path, limits: IngestConfig) -> Episode:
    """Read one episode entry, normalise it to the canonical :class:`Episode` and validate it.

    Raises :class:`EpisodeError` whose message names the file (relative to the entry), the line,
    step or record, and the field: ``steps/000000.jsonl: line 3: action.command[1]: not a
    finite number (got "NaN")``. Never modifies the episode."""
    path = Path(path)
    with _gc_paused():
        return _read(path, limits)


def _read(path: Path, limits: IngestConfig) -> Episode:
    from trainer_core.rlds import jsonlayouts

    if path.name.startswith(_PROMOTION_PREFIX):
        raise NotTrainingData(f"{path.name}: promotion audit record, not training data")
    hint = layout_hint(path)
    if hint == "dir":
        return jsonlayouts.read_directory(path, limits)
    if hint == "json":
        return jsonlayouts.read_single_file(path, limits, path.name, _stem(path.name), path)
    if hint == "tfrecord":
        from trainer_core.rlds import tfrecord

        return tfrecord.read_tfrecord_episode(path, limits, _stem(path.name))
    if not path.exists():
        raise EpisodeError(f"{path.name}: does not exist")
    raise EpisodeError(
        f"{path.name}: not an episode (expected a directory with metadata.json, "
        "a .json file or a .tfrecord[.gz] file)"
    )
