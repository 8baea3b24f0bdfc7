"""Decode once, read many: preprocessed frames on disk, and the split-wide view over them.

Each episode's frames are decoded once into ``<state>/frames/<episode hash>-<spec key>.u8``
(raw uint8 rows of shape (C, H, W), written atomically), reused by every later job on the same
episode and image spec, and pruned oldest-first beyond a size cap. A :class:`FrameStore` reads
batches from those files with ``pread`` rather than ``mmap``: mapped pages would count in the
child's RSS as they are touched, and an epoch touches all of them, while ``pread`` leaves them
in the kernel's page cache, which the job's ``max_rss_mb`` does not pay for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from trainer_core.fsio import atomic_write_bytes
from trainer_core.image_config import ImageFeature

SUFFIX = ".u8"
DEFAULT_MAX_CACHE_MB = 4096.0


class FrameStore:
    """Rows (C, H, W) uint8 of a split, from cache files and/or in-memory arrays, in order."""

    def __init__(self, shape: tuple[int, int, int], parts: Sequence[Path | np.ndarray]) -> None:
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(self.shape))
        self.parts = list(parts)
        sizes = [self._rows(p) for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._fds: dict[int, int] = {}

    def _rows(self, part: Path | np.ndarray) -> int:
        if isinstance(part, np.ndarray):
            return len(part)
        return os.stat(part).st_size // self.row_bytes

    def __len__(self) -> int:
        return int(self.starts[-1])

    @classmethod
    def join(cls, stores: Sequence[FrameStore]) -> FrameStore:
        """One store over several, rows in the given order."""
        return cls(stores[0].shape, [p for s in stores for p in s.parts])

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` as one (B, C, H, W) uint8 array."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        flat = out.reshape(len(idx), -1)
        for j, (i, part_no) in enumerate(zip(idx.tolist(), which.tolist(), strict=True)):
            row = i - int(self.starts[part_no])
            part = self.parts[part_no]
            if isinstance(part, np.ndarray):
                out[j] = part[row]
                continue
            fd = self._fds.get(part_no)
            if fd is None:
                fd = self._fds[part_no] = os.open(part, os.O_RDONLY)
            data = os.pread(fd, self.row_bytes, row * self.row_bytes)
            flat[j] = np.frombuffer(data, dtype=np.uint8)
        return out

    def close(self) -> None:
        """Close the cache files this store opened."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def cache_path(cache_dir: Path, episode_hash: str, spec: ImageFeature) -> Path:
    """Where one episode's decoded frames for one image spec live."""
    return Path(cache_dir) / f"{episode_hash[:32]}-{spec.cache_key()}{SUFFIX}"


def cached_frames(
    cache_dir: Path | None,
    episode_hash: str,
    spec: ImageFeature,
    n_steps: int,
    decode_all: Callable[[], np.ndarray],
) -> FrameStore:
    """The episode's frames, decoded now only when no complete cache file exists."""
    if cache_dir is None:
        return FrameStore(spec.shape, [decode_all()])
    path = cache_path(cache_dir, episode_hash, spec)
    row_bytes = int(np.prod(spec.shape))
    if path.is_file() and path.stat().st_size == n_steps * row_bytes:
        os.utime(path)  # recently used: pruned last
        return FrameStore(spec.shape, [path])
    frames = decode_all()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, frames.tobytes())
    del frames
    return FrameStore(spec.shape, [path])


def prune(cache_dir: Path, max_mb: float = DEFAULT_MAX_CACHE_MB, keep: Sequence[Path] = ()) -> int:
    """Delete least recently used cache files beyond ``max_mb`` (never ``keep``); count removed."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return 0
    files = sorted(cache_dir.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    keep_set = {Path(k).resolve() for k in keep if isinstance(k, str | Path)}
    total, removed = 0, 0
    for f in files:
        total += f.stat().st_size
        if total > max_mb * 1024 * 1024 and f.resolve() not in keep_set:
            f.unlink(missing_ok=True)
            removed += 1
    return removed


def cache_dir_for(run_dir: Path) -> Path:
    """The shared cache of a job: ``<state>/frames`` for a run in ``<state>/runs/<id>``."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == "runs":
        return run_dir.parent.parent / "frames"
    return run_dir / "frames"
