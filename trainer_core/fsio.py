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
import stat
import tempfile
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in chunks, never all at once)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
