"""Crash-safe file writes: every file another process reads goes through here.

The order is the contract (a test checks it): write a temp file in the same directory, fsync it,
``os.replace`` it over the target, fsync the directory so the rename itself is durable.
A reader therefore sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"
# What atomic_write_bytes leaves when a crash or power cut hits it between mkstemp and replace:
# ".tmp-<target name>.<mkstemp's 8 random characters>", a regular file.
_OWN_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"(?P<target>.+)\.[A-Za-z0-9_]{8}")
STALE_TEMP_AGE_S = 60.0


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdirs_durable(path: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates, so a file named from
    elsewhere (a manifest naming ``releases/<id>``) cannot outlive its folder in a power cut."""
    missing: list[Path] = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def _kept_mode_and_group(path: Path, mode: int | None) -> tuple[int, int | None]:
    """The mode to write with and the group to keep: an existing file's own (so a runtime's
    group-writable 664 manifest stays 664 and keeps its group), else ``mode`` or 0o644."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0o644 if mode is None else mode), None
    return (stat.S_IMODE(st.st_mode) if mode is None else mode), st.st_gid


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (temp in same dir, fsync, replace, fsync dir).

    ``mode`` None keeps an existing file's mode and group (new files: 0o644)."""
    path = Path(path)
    mode, gid = _kept_mode_and_group(path, mode)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if gid is not None and gid != os.fstat(f.fileno()).st_gid:
                with contextlib.suppress(PermissionError):  # not a member: keep what we can
                    os.fchown(f.fileno(), -1, gid)
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    """Replace ``path`` with ``obj`` as indented JSON, atomically. NaN is refused, not written."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", mode
    )


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before renaming a staged tree into place)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A folder that appears whole or not at all: yields ``.tmp-<name>`` beside ``out`` to fill;
    when the block ends it is fsynced and renamed to ``out``, on an error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f"{TEMP_PREFIX}{out.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        fsync_tree(staging)
        os.rename(staging, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in chunks, never all at once)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def remove_stale_temps(
    folder: Path,
    targets: set[str] | None = None,
    boot_time: float | None = None,
    now: float | None = None,
) -> list[Path]:
    """Remove the temp files :func:`atomic_write_bytes` left in ``folder`` (not recursive):
    only regular files of its own naming (for a target in ``targets`` when given), from before
    ``boot_time`` (a power cut's) or older than STALE_TEMP_AGE_S (a crash's; a younger one may
    be another process's write in flight). Returns what was removed; errors leave a file be."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _OWN_TEMP.fullmatch(entry.name)
        if match is None or (targets is not None and match["target"] not in targets):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            before_boot = boot_time is not None and st.st_mtime < boot_time
            if not (before_boot or now - st.st_mtime >= STALE_TEMP_AGE_S):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed
