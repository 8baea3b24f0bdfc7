"""Run directories the job children left: which one a resumed job continues from, which go.

Every job has ``<runs_dir>/<run_id>/`` (spec, result, checkpoint, candidate). A run without
``result.json`` was abandoned by a crash; the newest runs (and the checkpoint the next job
resumes from) are kept for inspection and resuming, the rest removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from daemon.supervisor import read_result
from trainer_core.spec import RESULT_FILE


def resumable_checkpoint(runs_dir: Path) -> Path | None:
    """The checkpoint named by the newest run that has a result, if that run was preempted.

    A job preempted before it saved anything reports the checkpoint it had resumed from, so a
    second preemption does not lose the first one's progress.
    """
    if not runs_dir.is_dir():
        return None
    for run in sorted(runs_dir.iterdir(), reverse=True):
        result, _ = read_result(run)
        if result is None:
            continue
        checkpoint = result.checkpoint_path
        if result.status == "preempted" and checkpoint is not None and checkpoint.is_dir():
            return checkpoint
        return None
    return None


def clean_runs(runs_dir: Path, keep_runs: int, protect: set[Path] | None = None) -> list[str]:
    """Remove run dirs a crash left without a result, and all but the newest ``keep_runs`` (and
    the one holding the checkpoint the next job resumes from, and those in ``protect``).
    Returns the ids of the abandoned runs removed."""
    if not runs_dir.is_dir():
        return []
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    protect = protect or set()
    keep = set(runs[-keep_runs:]) | protect
    resume = resumable_checkpoint(runs_dir)
    if resume is not None:
        keep.add(resume.parent)
    removed = []
    for run in runs:
        abandoned = not (run / RESULT_FILE).exists() and run not in protect
        if abandoned or run not in keep:
            shutil.rmtree(run, ignore_errors=True)
            if abandoned:
                removed.append(run.name)
    return removed
