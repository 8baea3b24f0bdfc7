"""One daemon per state folder: a second one (or ``once`` beside the service) would reap the
first one's child and delete its runs."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class AlreadyRunning(RuntimeError):
    """Another daemon holds this state folder."""


def take_instance_lock(state_dir: Path, pid: int) -> IO[str]:
    """Lock ``state_dir/daemon.lock`` for this process's lifetime (keep the returned file open);
    raise :class:`AlreadyRunning` naming the holder's pid when another process has it."""
    path = state_dir / "daemon.lock"
    lock = open(path, "a+")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise AlreadyRunning(
            f"another continuon-trainer (pid {holder}) is running on {state_dir}"
        ) from None
    lock.truncate(0)
    lock.write(f"{pid}\n")
    lock.flush()
    return lock
