"""Record the file-system operations of one real operation under strace, as model events.

The operation runs in its own process under ``strace -y -xx`` (fd paths shown, every string hex,
buffers in full), so the real code's system calls are what gets recorded: opens, writes (with
their bytes), truncates, renames, unlinks, mkdirs, symlinks, fsyncs. Only paths under the
scenario's root are kept. ``shutil``'s sendfile fast path is switched off in the traced process
(see :data:`DRIVER_PRELUDE`) so copied bytes appear as ordinary ``write`` calls.

The result is a list of :class:`Event` on inode numbers of a small in-memory file-system model
(:mod:`tests.crashstates.model`), starting from a snapshot of the root taken before the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TRACED = (
    "openat,open,creat,write,pwrite64,writev,pwritev,lseek,rename,renameat,renameat2,unlink,"
    "unlinkat,mkdir,mkdirat,rmdir,symlink,symlinkat,fsync,fdatasync,ftruncate,truncate,link,"
    "linkat,sendfile,copy_file_range,close"
)
DRIVER_PRELUDE = "import shutil; shutil._USE_CP_SENDFILE = False\n"
LINE = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\) += (?P<ret>-?\d+)(?P<rest>.*)$")
FD_ARG = re.compile(r"^(?:-?\d+|AT_FDCWD)<(?P<path>[^>]*)>")
STR_ARG = re.compile(r'^"(?P<hex>(?:\\x[0-9a-f]{2})*)"')


class TraceError(RuntimeError):
    """strace is missing, the run failed, or it made a call the model does not know."""


def have_strace() -> bool:
    """Whether strace is installed (CI: apt-get install -y strace)."""
    return shutil.which("strace") is not None


def run_traced(code: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``python -c code args...`` under strace writing ``log``; return its stdout."""
    cmd = [
        "strace", "-o", str(log), "-qq", "-y", "-xx", "-s", "100000000", "-e",
        f"trace={TRACED}", sys.executable, "-c", DRIVER_PRELUDE + code, *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise TraceError(f"traced run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return proc.stdout


def _unhex(s: str) -> bytes:
    return bytes.fromhex(s.replace("\\x", ""))


def _split_args(args: str) -> list[str]:
    """Top-level comma split (strings are all-hex under -xx, so no quoting to worry about)."""
    out, depth, cur = [], 0, []
    for ch in args:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


def _fd_path(arg: str) -> str | None:
    m = FD_ARG.match(arg)
    return _unhex(m["path"]).decode("utf-8", "surrogateescape") if m else None


def _str(arg: str) -> str:
    m = STR_ARG.match(arg)
    if m is None:
        raise TraceError(f"expected a string argument, got {arg[:80]!r}")
    return _unhex(m["hex"]).decode("utf-8", "surrogateescape")


def _bytes(arg: str) -> bytes:
    m = STR_ARG.match(arg)
    if m is None or arg[m.end() :].startswith("..."):
        raise TraceError(f"buffer not recorded in full: {arg[:80]!r}")
    return _unhex(m["hex"])


@dataclass
class Call:
    """One successful system call: name, raw args, return value and the fd path it returned."""

    name: str
    args: list[str]
    ret: int
    ret_path: str | None = None
    extra: dict = field(default_factory=dict)


def parse_log(log: Path) -> list[Call]:
    """Successful calls in order (failed ones changed nothing)."""
    calls = []
    for line in log.read_text(encoding="ascii", errors="replace").splitlines():
        m = LINE.match(line)
        if m is None or int(m["ret"]) < 0:
            continue
        rest = m["rest"]
        ret_path = None
        if rest.startswith("<"):
            end = rest.find(">")
            ret_path = _unhex(rest[1:end]).decode("utf-8", "surrogateescape")
        calls.append(Call(m["name"], _split_args(m["args"]), int(m["ret"]), ret_path))
    return calls


def resolve(dirfd_arg: str | None, path: str) -> str:
    """Absolute path of ``path`` relative to the ``dirfd`` argument (AT_FDCWD shows the cwd)."""
    if path.startswith("/"):
        return os.path.normpath(path)
    base = _fd_path(dirfd_arg) if dirfd_arg is not None else os.getcwd()
    if base is None:
        raise TraceError(f"cannot resolve {path!r} against {dirfd_arg!r}")
    return os.path.normpath(os.path.join(base, path))
