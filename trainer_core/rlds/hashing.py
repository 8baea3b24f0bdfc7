"""The content hash that identifies an episode in the ledger and in an adapter's card."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

COMPLETE_MARKER = "COMPLETE"
_CHUNK = 1 << 20
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def special_file(mode: int) -> str | None:
    """Why an entry with ``st_mode`` ``mode`` is refused (``"not a regular file (fifo)"``), or
    None for a regular file or a directory. Opening a FIFO or device would block a scan."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


def is_ignored_name(name: str) -> bool:
    """Hidden, temporary or partial names a producer may still be writing."""
    return (
        name.startswith(".")
        or name.endswith((".tmp", "~", ".part", ".partial", ".swp"))
        or name.startswith("~")
    )


def hashed_file(rel: str) -> bool:
    """Whether a file inside an episode directory is part of its content: not the
    ``COMPLETE`` marker, and no path part that :func:`is_ignored_name` ignores."""
    if rel == COMPLETE_MARKER:
        return False
    return not any(is_ignored_name(p) for p in rel.split("/"))


def _hash_file(path: Path, h: hashlib._Hash) -> None:
    """Feed ``path``'s bytes to ``h``; raises ``OSError`` for anything but a regular file."""
    # O_NONBLOCK: opening a FIFO that appeared since the caller looked must not block.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{path}: {special_file(mode) or 'is a directory'}")
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def _walk(path: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(path):
        rel = os.path.relpath(folder, path)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + f for f in files)
        dirs.sort()
    return sorted(out)


def content_hash(path: Path, files: list[str] | None = None) -> str:
    """sha256 of an episode's bytes: a file's contents (its name left out, so a copy hashes
    alike), or a directory's content files by sorted relative path (name, NUL, bytes, NUL).
    ``files`` (relative paths) spares the walk when the caller already listed the directory."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.is_dir():
        _hash_file(path, h)
        return h.hexdigest()
    for rel in sorted(files if files is not None else _walk(path)):
        if not hashed_file(rel):
            continue
        h.update(rel.encode() + b"\0")
        _hash_file(path / rel, h)
        h.update(b"\0")
    return h.hexdigest()
