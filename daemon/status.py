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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The snapshot's top-level keys and the JSON types each may hold (None always allowed but for
# updated_at): a file of another shape was not written by this daemon version, or is damaged.
_SHAPE: dict[str, tuple[type, ...]] = {
    "pid": (int,),
    "status_line": (str,),
    "gate": (dict,),
    "ledger": (dict,),
    "job": (dict,),
    "current_release": (str,),
    "last_decisions": (list,),
}


def valid_snapshot(data: Any) -> bool:
    """Whether ``data`` has the shape :meth:`Service.snapshot` writes (top level and lists)."""
    if not isinstance(data, dict) or not _is_number(data.get("updated_at")):
        return False
    for key, types in _SHAPE.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return False
    return all(isinstance(d, dict) for d in data.get("last_decisions") or [])


def read_status(path: Path) -> dict[str, Any] | None:
    """The last snapshot, or None when there is none (or it cannot be read, or has a shape
    this version did not write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if valid_snapshot(data) else None


def daemon_running(snapshot: dict[str, Any] | None, now: float) -> bool:
    """A live pid that still rewrites the file."""
    if not snapshot or not isinstance(snapshot.get("pid"), int):
        return False
    updated_at = snapshot.get("updated_at")
    fresh = _is_number(updated_at) and now - updated_at < STALE_AFTER_S
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


def _strings(value: Any) -> list[str]:
    """A list of reasons as strings; anything else is no reasons."""
    return [str(v) for v in value] if isinstance(value, list) else []


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if _is_number(value) else "?"


def render(snapshot: dict[str, Any], running: bool) -> str:
    """The human table. Tolerates missing or mistyped fields (shown as ``?``)."""
    lines = []
    if running:
        lines.append(
            f"continuon-trainer: running (pid {snapshot.get('pid')}) - "
            f"{snapshot.get('status_line') or ''}"
        )
    else:
        lines.append("continuon-trainer: not running")
    gate = snapshot.get("gate")
    if isinstance(gate, dict):
        state = "open" if gate.get("open") is True else "closed"
        reasons = "; ".join(_strings(gate.get("reasons"))) or "-"
        lines.append(f"  gate       {state}: {reasons}")
    ledger = snapshot.get("ledger")
    lines.append(f"  episodes   {_fmt_counts(ledger if isinstance(ledger, dict) else None)}")
    job = snapshot.get("job")
    if isinstance(job, dict):
        lines.append(
            f"  job        {job.get('job_id', '?')} {job.get('phase', '?')}: step "
            f"{_num(job.get('step'), '')}/{_num(job.get('max_steps'), '')}, loss "
            f"{_num(job.get('loss'), '.4g')}, {_num(job.get('elapsed_s'), '.1f')} s of "
            f"{_num(job.get('budget_s'), '.0f')} s budget"
        )
    lines.append(f"  release    {snapshot.get('current_release') or 'none (base policy only)'}")
    for key in ("ledger_error", "store_error"):
        if snapshot.get(key):
            lines.append(f"  error      {snapshot[key]}")
    decisions = snapshot.get("last_decisions")
    for d in decisions if isinstance(decisions, list) else []:
        if not isinstance(d, dict):
            continue
        reason = headline(_strings(d.get("reasons")))
        release = f" {d['release']}" if d.get("release") else ""
        lines.append(
            f"  decision   {d.get('at', '?')} {d.get('job_id', '?')}: "
            f"{d.get('verdict', '?')}{release} - {reason}"
        )
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
