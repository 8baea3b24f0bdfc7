"""The status file the daemon rewrites, and ``continuon-trainer status`` that reads it.

The status file lives in the state dir (``status.json``), written atomically so the CLI never
reads half of it. ``status`` works with the daemon down too: it then says so and reads the
ledger and the adapter store directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from daemon.config import TrainerConfig
from trainer_core.fsio import atomic_write_json

STALE_AFTER_S = 30.0  # a running daemon rewrites the file at least every second


def write_status(path: Path, snapshot: dict[str, Any]) -> None:
    """Atomically replace the status file."""
    atomic_write_json(path, snapshot)


def read_status(path: Path) -> dict[str, Any] | None:
    """The last snapshot, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_running(snapshot: dict[str, Any] | None, now: float) -> bool:
    """A live pid that still rewrites the file."""
    if not snapshot or not isinstance(snapshot.get("pid"), int):
        return False
    fresh = now - float(snapshot.get("updated_at", 0)) < STALE_AFTER_S
    return fresh and psutil.pid_exists(snapshot["pid"])


def offline_snapshot(cfg: TrainerConfig) -> dict[str, Any]:
    """What can be known without the daemon: ledger counts and the current release."""
    from daemon.ledger import Ledger, LedgerError
    from daemon.store import AdapterStore, StoreError

    info: dict[str, Any] = {"ledger": None, "current_release": None}
    if cfg.ledger_path.exists():
        try:
            ledger = Ledger.open(cfg.ledger_path)
            try:
                info["ledger"] = ledger.counts()
            finally:
                ledger.close()
        except LedgerError as exc:
            info["ledger_error"] = str(exc)
    try:
        current = AdapterStore(cfg.adapters_dir, cfg.paths.manifest).current()
        info["current_release"] = current.id if current else None
    except (OSError, StoreError) as exc:
        info["store_error"] = str(exc)
    return info


def _fmt_counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return "no ledger yet"
    return (
        f"{counts.get('valid', 0)} valid ({counts.get('train', 0)} train / "
        f"{counts.get('eval', 0)} eval), {counts.get('rejected', 0)} rejected, "
        f"{counts.get('new', 0)} new"
    )


def headline(reasons: list[str]) -> str:
    """The reason worth one line: the first failed check, else the improvement, else the first."""
    for prefix in ("FAIL", "ok improvement"):
        for reason in reasons:
            if reason.startswith(prefix):
                return reason
    return reasons[0] if reasons else ""


def render(snapshot: dict[str, Any], running: bool) -> str:
    """The human table."""
    lines = []
    if running:
        lines.append(
            f"continuon-trainer: running (pid {snapshot['pid']}) - "
            f"{snapshot.get('status_line', '')}"
        )
    else:
        lines.append("continuon-trainer: not running")
    gate = snapshot.get("gate")
    if gate:
        state = "open" if gate.get("open") else "closed"
        reasons = "; ".join(gate.get("reasons") or []) or "-"
        lines.append(f"  gate       {state}: {reasons}")
    lines.append(f"  episodes   {_fmt_counts(snapshot.get('ledger'))}")
    job = snapshot.get("job")
    if job:
        loss = f"{job['loss']:.4g}" if isinstance(job.get("loss"), int | float) else "-"
        lines.append(
            f"  job        {job['job_id']} {job['phase']}: step {job['step']}/"
            f"{job['max_steps']}, loss {loss}, {job['elapsed_s']} s of "
            f"{job['budget_s']:.0f} s budget"
        )
    lines.append(f"  release    {snapshot.get('current_release') or 'none (base policy only)'}")
    for key in ("ledger_error", "store_error"):
        if snapshot.get(key):
            lines.append(f"  error      {snapshot[key]}")
    for d in snapshot.get("last_decisions") or []:
        reason = headline(d.get("reasons") or [])
        release = f" {d['release']}" if d.get("release") else ""
        lines.append(f"  decision   {d['at']} {d['job_id']}: {d['verdict']}{release} - {reason}")
    return "\n".join(lines)


def status_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer status [--json]``: works whether or not the daemon runs."""
    snapshot = read_status(cfg.status_path)
    running = daemon_running(snapshot, time.time())
    if not running:
        last = snapshot or {}
        snapshot = {
            "pid": None,
            "last_decisions": last.get("last_decisions", []),
            **offline_snapshot(cfg),
        }
    snapshot["running"] = running
    if args.json:
        print(json.dumps(snapshot, indent=2, default=str))
    else:
        print(render(snapshot, running))
    return 0
