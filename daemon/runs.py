"""Run directories the job children left: which one a resumed job continues from, which go,
and which candidate waits for the gate.

Every job has ``<runs_dir>/<run_id>/`` (spec, result, checkpoint, candidate). A run without
``result.json`` was abandoned by a crash; the newest runs (and the checkpoint the next job
resumes from) are kept for inspection and resuming, the rest removed.

A candidate that passed while the gate was closed is named in ``<state_dir>/pending.json``
(written atomically), so it waits across a daemon restart: :func:`load_waiting` finds it again
and says why it can no longer be judged (its files gone or incomplete) when it cannot.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from daemon.store import StoreError, check_candidate
from daemon.supervisor import read_result
from trainer_core.fsio import atomic_write_json
from trainer_core.spec import RESULT_FILE, SPEC_FILE, JobResult, JobSpec

WAITING_FILE = "pending.json"  # in the state dir: the candidate that waits for the gate


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


@dataclass(frozen=True)
class Waiting:
    """The candidate named by ``pending.json``: its run, what the child reported and planned,
    or why it cannot be judged again (``problem``; ``result`` and ``spec`` are None then)."""

    run_id: str
    run_dir: Path
    result: JobResult | None
    spec: JobSpec | None
    problem: str = ""


def save_waiting(state_dir: Path, run_dir: Path, since: float) -> None:
    """Name the run whose candidate waits for the gate (atomically: a crash leaves the old
    file or the new one)."""
    atomic_write_json(
        state_dir / WAITING_FILE, {"run_id": run_dir.name, "run_dir": str(run_dir), "since": since}
    )


def clear_waiting(state_dir: Path) -> None:
    """No candidate waits any more (it was judged, or dropped)."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / WAITING_FILE).unlink()


def load_waiting(state_dir: Path, runs_dir: Path) -> Waiting | None:
    """The waiting candidate a previous daemon left, or None when none waits.

    Only a run directly under ``runs_dir`` whose child finished (``done``/``budget``) with
    metrics and a complete candidate (the files a promotion needs) can be judged again; any
    other state is a :attr:`Waiting.problem`, never a guess.
    """
    path = state_dir / WAITING_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Waiting("?", path, None, None, f"unreadable {WAITING_FILE}: {exc}")
    run_dir = Path(str(data.get("run_dir", ""))) if isinstance(data, dict) else Path()
    run_id = run_dir.name or "?"
    if not run_dir.name or run_dir.parent != runs_dir:
        return Waiting(run_id, run_dir, None, None, f"{WAITING_FILE} names no run under {runs_dir}")

    def problem(why: str) -> Waiting:
        return Waiting(run_id, run_dir, None, None, why)

    if not run_dir.is_dir():
        return problem(f"its run directory {run_dir} is gone")
    result, why = read_result(run_dir)
    if result is None:
        return problem(why)
    try:
        spec = JobSpec.model_validate_json((run_dir / SPEC_FILE).read_bytes())
    except (OSError, ValidationError, ValueError) as exc:
        return problem(f"unreadable {SPEC_FILE}: {str(exc).splitlines()[0]}")
    candidate = result.candidate_path
    if result.status not in ("done", "budget") or result.metrics is None or candidate is None:
        return problem(f"the run ended {result.status} without an evaluated candidate")
    if candidate.parent != run_dir:
        return problem(f"its candidate {candidate} is outside the run directory")
    try:
        check_candidate(candidate)
    except (OSError, StoreError) as exc:
        return problem(str(exc))
    return Waiting(run_id, run_dir, result, spec)
