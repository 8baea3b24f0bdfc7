"""The status file the daemon rewrites, and ``continuon-trainer status`` that reads it.

The status file lives in the state dir (``status.json``), written atomically so the CLI never
reads half of it. ``status`` works with the daemon down too: it then says so and reads the
ledger and the adapter store directly.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from daemon.config import TrainerConfig
from daemon.fleet import fleet_lines, read_fleet_status
from trainer_core.fsio import atomic_write_json, remove_stale_temps

STALE_AFTER_S = 30.0  # a running daemon rewrites the file at least every second
# ``status --json`` has this one schema whether or not the daemon runs (README "status --json").
SCHEMA = "continuon-trainer.status/2"
# Top-level keys of ``status --json``; a key the source did not know is null.
SCHEMA_KEYS = (
    "pid",
    "updated_at",
    "phase",
    "reason",
    "status_line",
    "gate",
    "ledger",
    "episodes",
    "job",
    "current_release",
    "health",
    "blocked",
    "last_decisions",
    "ledger_error",
    "store_error",
)
# The one vocabulary for episode states, in this order everywhere (status, once, journal).
EPISODE_STATES = ("settling", "valid", "trainable", "rejected", "excluded")


def write_status(path: Path, snapshot: dict[str, Any]) -> None:
    """Atomically replace the status file."""
    atomic_write_json(path, snapshot)


def remove_stale_state_temps(cfg: TrainerConfig) -> list[Path]:
    """At start: the atomic writer's temp files a power cut or crash left beside the files the
    daemon and its jobs write (state dir: status, health, job pid; each run dir: spec, result;
    the metrics textfile's folder: only the textfile's own). Never anything in the episodes
    folder (a user's), and the store cleans its own (``AdapterStore.recover``)."""
    episodes = cfg.paths.episodes.resolve()
    folders: list[tuple[Path, set[str] | None]] = [(cfg.state_dir, None)]
    if cfg.runs_dir.is_dir():
        folders += [(run, None) for run in sorted(cfg.runs_dir.iterdir()) if run.is_dir()]
    textfile = cfg.metrics.textfile
    if textfile is not None:
        folders.append((textfile.parent, {textfile.name}))
    boot = psutil.boot_time()
    removed: list[Path] = []
    for folder, targets in folders:
        resolved = folder.resolve()
        if resolved == episodes or episodes in resolved.parents:
            continue  # a user's folder: never ours to clean
        removed += remove_stale_temps(folder, targets, boot_time=boot)
    return removed


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


def episode_states(counts: dict[str, Any] | None) -> dict[str, int] | None:
    """Ledger counts in the one vocabulary: ``settling`` (still being written), ``valid`` (passed
    validation), ``trainable`` (valid, in the train split, usable by the features), ``held_out``
    (valid, in the eval split), ``rejected``, ``excluded`` (kept out of training by the health
    window), ``new`` (trainable and not trained on yet)."""
    if not isinstance(counts, dict):
        return None

    def n(key: str) -> int:
        value = counts.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return {
        "settling": n("settling"),
        "valid": n("valid"),
        "trainable": max(0, n("train") - n("train_excluded") - n("unusable")),
        "held_out": n("eval"),
        "rejected": n("rejected"),
        "excluded": n("excluded"),
        "new": n("new"),
        "unusable": n("unusable"),
    }


def format_episodes(counts: dict[str, Any] | None) -> str:
    """One line of episode counts in the shared vocabulary (status, once, journal)."""
    states = episode_states(counts)
    if states is None:
        return "no ledger yet"
    return (
        f"{states['valid']} valid ({states['trainable']} trainable / {states['held_out']} "
        f"held out), {states['settling']} settling, {states['rejected']} rejected, "
        f"{states['excluded']} excluded, {states['new']} new"
    ) + (
        f", {states['unusable']} unusable by the features (journal: episode_unusable)"
        if states["unusable"]
        else ""
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
    lines.append(f"  episodes   {format_episodes(ledger if isinstance(ledger, dict) else None)}")
    job = snapshot.get("job")
    if isinstance(job, dict):
        lines.append(
            f"  job        {job.get('job_id', '?')} {job.get('phase', '?')}: step "
            f"{_num(job.get('step'), '')}/{_num(job.get('max_steps'), '')}, loss "
            f"{_num(job.get('loss'), '.4g')}, {_num(job.get('elapsed_s'), '.1f')} s of "
            f"{_num(job.get('budget_s'), '.0f')} s budget"
        )
    lines.append(f"  release    {snapshot.get('current_release') or 'none (base policy only)'}")
    health = snapshot.get("health")
    if isinstance(health, dict) and health.get("state"):
        lines.append(f"  health     {health['state']}: {health.get('reason')}")
    lines.extend(fleet_lines(snapshot.get("fleet")))
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


def has_state(cfg: TrainerConfig) -> bool:
    """Whether a daemon ever ran at this root: its status file or its ledger exists (or a
    fleet file: ``fleet serve`` alone keeps no ledger)."""
    return cfg.status_path.exists() or cfg.ledger_path.exists() or bool(read_fleet_status(cfg))


def schema_snapshot(
    snapshot: dict[str, Any], running: bool, cfg: TrainerConfig, found: bool = True
) -> dict[str, Any]:
    """``snapshot`` in the one documented shape: every :data:`SCHEMA_KEYS` key present."""
    out: dict[str, Any] = {"schema": SCHEMA, "running": running, "state_found": found}
    out["root"] = str(cfg.root)
    for key in SCHEMA_KEYS:
        out[key] = snapshot.get(key)
    out["episodes"] = episode_states(out["ledger"])
    out["last_decisions"] = out["last_decisions"] or []
    out["fleet"] = read_fleet_status(cfg)  # fleet join / serve: role, round, last result
    return out


def status_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer status [--json]``: works whether or not the daemon runs. Exit 1 when
    there is neither a daemon nor any state at the root (wrong root or config, or never run)."""
    snapshot = read_status(cfg.status_path)
    running = daemon_running(snapshot, time.time())
    found = running or has_state(cfg)
    if not running:
        last = snapshot or {}
        snapshot = {"last_decisions": last.get("last_decisions", []), **offline_snapshot(cfg)}
    snapshot = schema_snapshot(snapshot, running, cfg, found)
    if args.json:
        print(json.dumps(snapshot, indent=2, default=str))
    elif found:
        print(render(snapshot, running))
    if not found:
        print(
            f"continuon-trainer: no daemon and no state at {cfg.root} (no {cfg.status_path.name} "
            f"or {cfg.ledger_path.name} in {cfg.state_dir}): wrong --root/--config, or the "
            "service never ran here",
            file=sys.stderr if args.json else sys.stdout,
        )
        return 1
    return 0
