"""Build and configure the faultfs LD_PRELOAD shim (faultfs.c): EIO, ENOSPC and slow fsync for
files under one folder, switched on and off by a flag file, so a test injects SD-card faults at
the file-system boundary of the real daemon and lifts them again."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("faultfs.c")


def build(out_dir: Path) -> Path | None:
    """Compile the shim into ``out_dir``; None when no C compiler is installed."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    lib = Path(out_dir) / "faultfs.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    return lib


def env(lib: Path, prefix: Path, flag: Path, kinds: str, delay_s: int = 2) -> dict[str, str]:
    """Environment for a process that should see the faults (while ``flag`` exists)."""
    return {
        "LD_PRELOAD": str(lib),
        "FAULTFS_PREFIX": str(Path(prefix).absolute()),
        "FAULTFS_FLAG": str(Path(flag).absolute()),
        "FAULTFS_KIND": kinds,
        "FAULTFS_DELAY_S": str(delay_s),
    }
