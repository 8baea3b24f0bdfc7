"""The real job child (``trainer_core.job``), paused where a test wants to act.

The in-process daemon's supervisor runs this instead of ``python -m trainer_core.job`` (see
``tests/daemon_harness.py:paused_child``). When the file ``$CONTINUON_TEST_PAUSE_FILE`` names
the phase the child just announced (load, train, eval), the child removes the file (so only
this job pauses) and waits until its own SIGTERM handler saw a preemption, or until
``<run_dir>/go`` appears; then the job goes on exactly as it would have.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from trainer_core import job

PAUSE_FILE = Path(os.environ.get("CONTINUON_TEST_PAUSE_FILE", "/nonexistent"))
MAX_PAUSE_S = 300.0  # a test that forgot the child must not leave it behind for ever


class SeenPreemption(job.Preemption):
    """The job's own preemption flag, remembered so the pause can end on it."""

    last: SeenPreemption | None = None

    def __init__(self) -> None:
        super().__init__()
        SeenPreemption.last = self


real_emit = job.emit


def emit(event: dict[str, Any]) -> None:
    real_emit(event)
    try:
        wanted = PAUSE_FILE.read_text().strip()
    except OSError:
        return
    if event.get("event") != "phase" or event.get("phase") != wanted:
        return
    PAUSE_FILE.unlink()
    go = Path(sys.argv[1]).parent / "go"
    deadline = time.monotonic() + MAX_PAUSE_S
    preempt = SeenPreemption.last
    # Before training the handler raises out of this sleep at once (the job aborts); later it
    # only sets the flag, which the job checks as soon as this returns.
    while not go.exists() and not (preempt and preempt.requested):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)


job.emit = emit
job.Preemption = SeenPreemption

if __name__ == "__main__":
    sys.exit(job.main(sys.argv[1:]))
