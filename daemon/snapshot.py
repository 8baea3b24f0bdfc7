"""What the daemon shows: the one-line systemd STATUS, the status file's job view and the
entries of its ``last_decisions`` list. Pure functions of the service's state."""

from __future__ import annotations

from typing import Any

from daemon.supervisor import Progress
from gating import GateDecision
from trainer_core.spec import JobResult

RUNNING_PHASES = ("training", "evaluating")
QUIET_PHASES = ("idle", "cooldown")  # phases whose line adds why the gate is closed


def status_line(
    phase: str, reason: str, progress: Progress | None, gate: GateDecision | None
) -> str:
    """The line systemd shows: what the daemon does and why. ``progress`` is the running job's
    (None when no job runs)."""
    if phase in RUNNING_PHASES and progress is not None:
        loss = f" loss {progress.loss:.4g}" if progress.loss is not None else ""
        return f"{phase}: step {progress.step}/{progress.max_steps}{loss}"
    line = f"{phase}: {reason}"
    if gate is not None and not gate.open and phase in QUIET_PHASES:
        line += f"; gate {gate.summary()}"
    return line


def job_view(
    run_id: str, pid: int | None, progress: Progress, elapsed_s: float, budget_s: float
) -> dict[str, Any]:
    """The running job as ``status`` shows it."""
    return {
        "job_id": run_id,
        "pid": pid,
        "phase": progress.phase,
        "step": progress.step,
        "max_steps": progress.max_steps,
        "loss": progress.loss,
        "elapsed_s": round(elapsed_s, 1),
        "budget_s": budget_s,
    }


def decision_entry(
    run_id: str,
    at: str,
    verdict: str,
    reasons: list[str],
    result: JobResult | None,
    release_id: str | None = None,
) -> dict[str, Any]:
    """One entry of ``last_decisions``: a job's verdict, its reasons and its metrics, less the
    per-episode evidence (``metrics.episodes``: in the run's ``result.json`` and the release
    card). That list grows with the held-out set, and the status file is rewritten, with two
    fsyncs, at every change."""
    metrics = (
        result.metrics.model_dump(exclude={"episodes"})
        if result is not None and result.metrics
        else None
    )
    return {
        "job_id": run_id,
        "at": at,
        "verdict": verdict,
        "release": release_id,
        "reasons": reasons,
        "metrics": metrics,
        "steps": result.steps if result is not None else None,
    }
