"""The content hash that identifies an episode in the ledger and in an adapter's card."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMPLETE_MARKER = "COMPLETE"
_CHUNK = 1 << 20


def hashed_file(rel: str) -> bool:
    """Whether a file inside an episode directory is part of its content: not the
    ``COMPLETE`` marker, and no hidden or temporary part (``.x``, ``x.tmp``, ``x~``)."""
    if rel == COMPLETE_MARKER:
        return False
    return not any(p.startswith(".") or p.endswith((".tmp", "~")) for p in rel.split("/"))


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
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    for rel in sorted(files if files is not None else _walk(path)):
        if not hashed_file(rel):
            continue
        h.update(rel.encode() + b"\0")
        with open(path / rel, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
