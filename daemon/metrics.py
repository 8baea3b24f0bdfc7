"""A Prometheus textfile for node_exporter's textfile collector (off by default).

``metrics.textfile: /var/lib/node_exporter/textfile/continuon_trainer.prom`` makes the daemon
rewrite that file atomically (temp file in the same folder, then rename: the collector never
reads half of it) whenever it rewrites its status file. The exposition format is written here
by hand (text format 0.0.4: ``# HELP``, ``# TYPE``, ``name{label="value"} number``) so the daemon
stays free of the prometheus_client import; the tests parse it with prometheus_client's parser.

Everything comes from one mapping of facts (:func:`gather` builds it from the status snapshot
and the ledger), so the file and ``status`` never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainer_core.fsio import atomic_write_text

PREFIX = "continuon_trainer_"
JOB_PHASES = ("starting", "loading", "training", "evaluating", "saving")


class MetricsConfig(BaseModel):
    """Where the textfile goes (None: no file)."""

    model_config = ConfigDict(extra="forbid")

    textfile: Path | None = None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Exposition:
    """Collects metric families and renders the text format, each family once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float | None]],
    ) -> None:
        """One family: HELP and TYPE lines, then a sample per ``(labels, value)`` (None skipped)."""
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        sample_name = full + ("_total" if kind == "counter" else "")
        for labels, value in samples:
            if value is None:
                continue
            inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            self.lines.append(
                f"{sample_name}{{{inner}}} {_number(value)}"
                if inner
                else f"{sample_name} {_number(value)}"
            )

    def text(self) -> str:
        """The file's content (ends with a newline, as the format requires)."""
        return "\n".join(self.lines) + "\n"


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def gate_check(reason: str) -> str:
    """A gate reason's check name (``mode manual_control ...`` -> ``mode``), a bounded label."""
    return (reason.split(maxsplit=1) or ["unknown"])[0].strip(":").lower()


def render(facts: dict[str, Any]) -> str:
    """The textfile for one set of facts (see :func:`gather` for the keys)."""
    out = Exposition()
    gate = facts.get("gate") or {}
    out.family("up", "gauge", "1 while the daemon writes this file", [({}, 1)])
    out.family(
        "gate_open", "gauge", "1 when the gate lets a job run", [({}, _num(gate.get("open")))]
    )
    reasons = [str(r) for r in gate.get("reasons") or []]
    out.family(
        "gate_closed_reason",
        "gauge",
        "1 per check that keeps the gate closed",
        [({"check": gate_check(r)}, 1) for r in dict.fromkeys(reasons)],
    )
    blocked = facts.get("blocked")
    out.family(
        "blocked",
        "gauge",
        "1 while something an operator must fix stops training (reason in the journal)",
        [({}, 1 if blocked else 0)],
    )
    episodes = facts.get("episodes") or {}
    out.family(
        "episodes",
        "gauge",
        "episodes by state (settling, valid, trainable, held_out, rejected, excluded, new)",
        [({"state": k}, _num(v)) for k, v in episodes.items()],
    )
    job = facts.get("job") or {}
    phase = str(job.get("phase") or "")
    out.family("job_running", "gauge", "1 while a training job runs", [({}, 1 if job else 0)])
    out.family(
        "job_phase",
        "gauge",
        "1 for the running job's phase",
        [({"phase": p}, 1 if p == phase else 0) for p in dict.fromkeys((*JOB_PHASES, phase)) if p],
    )
    for key, help_text in (
        ("step", "optimizer steps done by the running job"),
        ("max_steps", "the running job's step budget"),
        ("loss", "the running job's last training loss"),
        ("elapsed_s", "seconds the running job has run"),
    ):
        out.family(f"job_{key}", "gauge", help_text, [({}, _num(job.get(key)))])
    tallies = facts.get("jobs") or {}
    statuses = tallies.get("status") or {}
    out.family(
        "preemptions",
        "counter",
        "jobs stopped because the gate closed",
        [({}, _num(statuses.get("preempted", 0)))],
    )
    out.family(
        "jobs_ended",
        "counter",
        "ended jobs by status",
        [({"status": k}, _num(v)) for k, v in sorted(statuses.items())],
    )
    out.family(
        "decisions",
        "counter",
        "promotion decisions by verdict",
        [({"verdict": k}, _num(v)) for k, v in sorted((tallies.get("decision") or {}).items())],
    )
    out.family(
        "last_successful_cycle_timestamp_seconds",
        "gauge",
        "when a job last ran to a decision (promoted or rejected), Unix time",
        [({}, _num(tallies.get("last_decided_at")))],
    )
    release = facts.get("release") or {}
    out.family(
        "release_generation",
        "gauge",
        "generation of the current release (0: base policy only)",
        [({"release": str(release.get("id") or "")}, _num(release.get("generation", 0)))],
    )
    metrics = release.get("metrics") or {}
    out.family(
        "release_metric",
        "gauge",
        "the current release's shadow-evaluation metrics",
        [({"name": k}, _num(v)) for k, v in sorted(metrics.items()) if _num(v) is not None],
    )
    health = facts.get("health")
    if isinstance(health, dict) and health.get("state"):
        out.family(
            "health_state",
            "gauge",
            "1 for the health window's state",
            [({"state": str(health["state"])}, 1)],
        )
    out.family(
        "status_updated_timestamp_seconds",
        "gauge",
        "when the daemon wrote this file, Unix time",
        [({}, _num(facts.get("updated_at")))],
    )
    return out.text()


def gather(snapshot: dict[str, Any], ledger: Any, store: Any) -> dict[str, Any]:
    """The facts :func:`render` needs: the status snapshot plus job tallies and the release."""
    from daemon.status import episode_states

    facts = dict(snapshot)
    facts["episodes"] = episode_states(snapshot.get("ledger")) or {}
    try:
        facts["jobs"] = ledger.job_tallies()
    except Exception:  # a ledger hiccup must not stop the status write; the file says less
        facts["jobs"] = {}
    try:
        current = store.current()
    except Exception:
        current = None
    if current is not None:
        facts["release"] = {
            "id": current.id,
            "generation": current.generation,
            "metrics": current.metrics or {},
        }
    return facts


def write_textfile(path: Path, facts: dict[str, Any]) -> None:
    """Atomically replace the textfile (mode 0644: node_exporter runs as another user)."""
    atomic_write_text(path, render(facts), mode=0o644)
