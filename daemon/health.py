"""The health window after a promotion: watch the robot run the new release, confirm or roll back.

Like the gate, it reads sources at the file-system boundary and decides with pure functions:

* the continuonos **mode file** (``gate.mode_file`` unless ``health.mode_file`` is set): time in
  ``autonomous`` is the exposure; ``autonomous -> manual_control | manual_training`` is an
  **intervention**; any move into ``emergency_stop`` is an **e-stop**;
* optionally a **runtime health file** (``health.runtime_file``), a small JSON object the runtime
  rewrites with cumulative counters since it started, every key optional::

      {"safety_clamps": 3, "safety_blocks": 1, "errors": 0, "timestamp": 1733160000.0}

  ``safety_clamps + safety_blocks`` are **safety events**; a counter that goes down means the
  runtime restarted, and its new value is taken as the increase.

Every release keeps its own counts while it is current (``state/health.json``), so a new
release on probation is compared with its predecessor over their own autonomous time. Verdict
(:func:`judge`): an e-stop during probation rolls back at once (``rollback_on_estop``); a rate
(interventions, e-stops, safety events per autonomous hour) worse than the predecessor's rolls
back when two tests agree: a one-sided conditional binomial test of the two Poisson rates at
``confidence`` (given ``n = x_new + x_old`` events, ``x_new ~ Binomial(n, t_new / (t_new +
t_old))`` if the rates are equal), and Wald's sequential probability ratio test of
``detect_ratio`` x the predecessor's rate (``confidence``, ``power``), whose boundary keeps false
rollbacks near ``1 - confidence`` although the window judges at every poll;
``confirm_after_autonomous_s`` of autonomous time without either confirms.
A rolled-back release is marked bad in the store (never made current again automatically) and
the episodes first seen while it ran are tagged in the ledger (excluded from training unless
``exclude_tagged_episodes`` is false). No torch here: the daemon imports this.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from daemon.store import StoreError
from gating.sources import _read_json
from trainer_core.fsio import atomic_write_json

if TYPE_CHECKING:
    from daemon.config import TrainerConfig
    from daemon.ledger import Ledger
    from daemon.store import AdapterStore

HEALTH_FILE = "health.json"
SAVE_EVERY_S = 5.0
KINDS = ("interventions", "estops", "safety_events")
TELEOP = ("manual_control", "manual_training")


class HealthConfig(BaseModel):
    """``health:`` in trainer.yaml."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    mode_file: Path | None = Field(None, description="default: the gate's mode file")
    runtime_file: Path | None = Field(None, description="runtime health counters (JSON)")
    confirm_after_autonomous_s: float = Field(
        7200.0, gt=0, description="2 h: a doubling of 6 takeovers/h is caught ~80% of the time"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    detect_ratio: float = Field(
        2.0, gt=1.0, description="the rate ratio (new / predecessor) the window is sized to catch"
    )
    power: float = Field(0.8, gt=0.5, lt=1.0, description="SPRT: chance of catching that ratio")
    rollback_on_estop: bool = True
    exclude_tagged_episodes: bool = True
    max_gap_s: float = Field(
        30.0, gt=0, description="a longer pause between polls (daemon down) counts no time"
    )


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` decided: ``probation``, ``confirmed`` or ``rollback``, and why."""

    state: Literal["probation", "confirmed", "rollback"]
    reason: str


def upper_tail_p(x_new: int, t_new: float, x_old: int, t_old: float) -> float:
    """One-sided p-value that the new rate exceeds the old one (conditional binomial test)."""
    n = x_new + x_old
    if n == 0 or t_new <= 0 or t_old <= 0:
        return 1.0
    p = t_new / (t_new + t_old)
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    # in log space: math.comb of thousands of events overflows a float
    terms = (
        log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        for k in range(x_new, n + 1)
    )
    return min(1.0, sum(math.exp(t) for t in terms))


def sprt_worse(x_new: int, t_new: float, x_old: int, t_old: float, cfg: HealthConfig) -> bool:
    """Wald's sequential test of "rate x detect_ratio" against "the predecessor's rate": the
    window judges at every poll, and a fixed-sample test looked at that often rolls back good
    releases far more often than ``1 - confidence``; the SPRT's boundary keeps that share near
    it. The predecessor's rate is estimated with half an event added (never zero)."""
    rate_old = (x_old + 0.5) / t_old
    ratio = cfg.detect_ratio
    llr = x_new * math.log(ratio) - (ratio - 1.0) * rate_old * t_new
    return llr >= math.log(cfg.power / (1.0 - cfg.confidence))


def judge(new: dict[str, float], old: dict[str, float] | None, cfg: HealthConfig) -> Verdict:
    """Pure: the verdict on a release on probation from its counts and its predecessor's."""
    if new.get("estops", 0) > 0 and cfg.rollback_on_estop:
        return Verdict("rollback", f"emergency stop during probation ({new['estops']:.0f})")
    t_new = new.get("autonomous_s", 0.0)
    if old is not None and old.get("autonomous_s", 0.0) > 0:
        t_old = old["autonomous_s"]
        for kind in KINDS:
            x_new, x_old = int(new.get(kind, 0)), int(old.get(kind, 0))
            if x_new / max(t_new, 1e-9) <= x_old / t_old:
                continue
            p = upper_tail_p(x_new, t_new, x_old, t_old)
            if p < 1.0 - cfg.confidence and sprt_worse(x_new, t_new, x_old, t_old, cfg):
                return Verdict(
                    "rollback",
                    f"{kind} {x_new} in {t_new / 60:.1f} autonomous min vs the predecessor's "
                    f"{x_old} in {t_old / 60:.1f} min: worse at {cfg.confidence:.0%} "
                    f"(p={p:.3g})",
                )
    if t_new >= cfg.confirm_after_autonomous_s:
        base = "no predecessor record" if old is None else "no worse than the predecessor"
        return Verdict(
            "confirmed", f"{t_new / 60:.1f} autonomous min without evidence of harm ({base})"
        )
    return Verdict(
        "probation",
        f"{t_new / 60:.1f} of {cfg.confirm_after_autonomous_s / 60:.1f} autonomous min",
    )


def minutes_to_detect_doubling(rate_per_hour: float, baseline_hours: float, cfg: HealthConfig):
    """Autonomous minutes after which the expected counts of a release at twice
    ``rate_per_hour`` (predecessor observed ``baseline_hours``) are judged worse (a planning
    figure for the README; the test uses the actual counts)."""
    t_old = baseline_hours * 3600
    x_old = round(rate_per_hour * baseline_hours)
    for minutes in range(1, 24 * 60):
        t_new = minutes * 60.0
        x_new = round(2 * rate_per_hour * t_new / 3600)
        if upper_tail_p(x_new, t_new, x_old, t_old) < 1 - cfg.confidence:
            return minutes
    return None


def legacy_baseline_note(current: Any) -> list[str]:
    """The decision's statement when the running release cannot be evaluated (an adopted
    legacy adapter of unknown architecture): judged against the bare base, window mandatory."""
    if current is None or not current.legacy:
        return []
    return [
        f"NOTE baseline: the current release {current.id} is an adopted legacy adapter "
        f"({current.format}) that cannot be evaluated; the candidate was judged against the "
        "bare base, and its health window is mandatory"
    ]


# ------------------------------------------------------------------------------- state I/O


def health_path(config: TrainerConfig) -> Path:
    """``state/health.json``: every release's record and the watcher's last reading."""
    return config.state_dir / HEALTH_FILE


def load_state(path: Path) -> dict[str, Any]:
    """The persisted state; a fresh one only when there is none. A file that is there but
    cannot be read or parsed (torn, hand-edited, an I/O error) is never taken as fresh: the
    state comes back empty with ``damaged`` set to why, and :class:`HealthWatch` fails closed
    on it (the current release stays on probation)."""
    data, _mtime, error = _read_json(path, "health state")
    releases = data.get("releases") if data is not None else None
    if isinstance(releases, dict) and all(isinstance(r, dict) for r in releases.values()):
        return data
    state: dict[str, Any] = {
        "releases": {},
        "watching": None,
        "mode": None,
        "runtime": None,
        "error": error,
    }
    if data is None and error is not None and error.endswith(" missing"):
        return state
    state["damaged"] = error or f"health state {path}: no 'releases' object of records"
    return state


def read_health_record(config: TrainerConfig, release_id: str) -> dict[str, Any] | None:
    """The health record of one release (``releases show``), or None."""
    return load_state(health_path(config))["releases"].get(release_id)


def _runtime_counts(path: Path | None) -> tuple[dict[str, int] | None, str | None]:
    if path is None:
        return None, None
    data, _mtime, error = _read_json(path, "runtime health file")
    if data is None:
        return None, error
    out = {}
    for key in ("safety_clamps", "safety_blocks", "errors"):
        v = data.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            return None, f"runtime health file {path}: {key} {v!r} is not a count"
        out[key] = v
    return out, None


def _increase(now: dict[str, int], before: dict[str, int] | None) -> dict[str, int]:
    """Counter increases; a counter that went down (runtime restart) counts its new value."""
    before = before or {}
    return {k: (v - before[k] if k in before and v >= before[k] else v) for k, v in now.items()}


# ------------------------------------------------------------------------------- the watcher


class HealthWatch:
    """Polled from the service loop: keeps each current release's counts and acts on verdicts."""

    def __init__(
        self,
        cfg: TrainerConfig,
        store: AdapterStore,
        ledger: Ledger,
        log: Any,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.store, self.ledger, self.log, self.wall = cfg, store, ledger, log, wall
        self.path = health_path(cfg)
        self.state = load_state(self.path)
        # Why the saved state could not be used (this lifetime only; never saved): the
        # current release is then kept on probation rather than started afresh.
        self.damaged: str | None = self.state.pop("damaged", None)
        if self.damaged is not None:
            kept = self.path.with_name(self.path.name + ".damaged")
            try:  # keep the evidence: the next save would replace it
                os.replace(self.path, kept)
            except OSError:
                kept = None
            self.log.error("health_state_unreadable", reason=self.damaged, kept_as=str(kept))
        self._last_poll: float | None = None
        self._saved_key: str | None = None
        self._saved_at = float("-inf")

    @property
    def hcfg(self) -> HealthConfig:
        """The ``health:`` section."""
        return self.cfg.health

    def _mode_file(self) -> Path:
        return self.hcfg.mode_file or self.cfg.gate.mode_file

    def poll(self) -> None:
        """One look: follow the current release, add time and events, judge, act."""
        now = self.wall()
        current = self.store.current()
        if current is None:
            return
        rec = self._follow(current, now)
        self._count(rec, now)
        if rec["state"] == "probation":
            self._judge(current.id, rec, now)
        self._save()

    def _follow(self, current: Any, now: float) -> dict[str, Any]:
        """The record of the current release; a release seen for the first time right after
        another one starts its probation (compared with that one)."""
        releases = self.state["releases"]
        previous = self.state.get("watching")
        rec = releases.get(current.id)
        if rec is None and self.damaged is not None:
            rec = self._probation_after_damage(current, now)
        if rec is None:
            prev_rec = releases.get(previous) if previous else None
            legacy_before = prev_rec is not None and prev_rec.get("legacy")
            watched = previous is not None and (self.hcfg.enabled or legacy_before)
            rec = {
                "state": "probation" if watched else "observing",
                "reason": (
                    f"promoted after {previous}; health window"
                    + (" mandatory: the predecessor is a legacy adapter" if legacy_before else "")
                    if watched
                    else "running since the trainer first saw it"
                ),
                "mandatory": bool(watched and legacy_before),
                "predecessor": previous if watched else None,
                "legacy": current.legacy,
                "since": now,
                "autonomous_s": 0.0,
                **{k: 0 for k in KINDS},
                "errors": 0,
            }
            releases[current.id] = rec
            if watched:
                self.log.info("health_probation", release=current.id, predecessor=previous)
        if previous != current.id:
            left = releases.get(previous or "")
            bad = self.store.marks()["bad"].get(previous or "")
            if left is not None and left["state"] == "probation" and bad is not None:
                # our rollback was killed before this state was saved: finish its bookkeeping
                self._after_rollback(previous, left, bad["reason"], current.id, now)
            elif left is not None and left["state"] == "probation":
                left.update(state="superseded", reason=f"{current.id} became current on probation")
            self.state["watching"] = current.id
            self._last_poll = None
        return rec

    def _probation_after_damage(self, current: Any, now: float) -> dict[str, Any] | None:
        """Fail closed on an unreadable health state: a current release that has something to
        roll back to may have been on probation, so it is (again), its window restarted with
        no counts and no predecessor record (an e-stop still rolls it back; only a whole
        window without harm confirms it). None when there is nothing to roll back to."""
        try:
            predecessor = self.store.rollback_target(current.id)
        except (OSError, StoreError):
            predecessor = None
        if predecessor is None:
            return None
        note = (
            f"health state unreadable ({self.damaged}): kept on probation, window restarted "
            "without the lost counts"
        )
        rec = {
            "state": "probation",
            "reason": note,
            "note": note,
            "mandatory": False,
            "predecessor": predecessor,
            "legacy": current.legacy,
            "since": now,
            "autonomous_s": 0.0,
            **{k: 0 for k in KINDS},
            "errors": 0,
        }
        self.state["releases"][current.id] = rec
        self.state["watching"] = current.id
        self.log.warning(
            "health_probation", release=current.id, predecessor=predecessor, reason=rec["reason"]
        )
        return rec

    def _count(self, rec: dict[str, Any], now: float) -> None:
        data, _mtime, error = _read_json(self._mode_file(), "mode file")
        mode = data.get("mode") if data else None
        self.state["error"] = error
        before = self.state.get("mode")
        if self._last_poll is not None and before == "autonomous":
            gap = now - self._last_poll
            if 0 < gap <= self.hcfg.max_gap_s:
                rec["autonomous_s"] += gap
        if isinstance(mode, str):
            if before == "autonomous" and mode in TELEOP:
                rec["interventions"] += 1
                self.log.warning("health_intervention", mode=mode, total=rec["interventions"])
            if mode == "emergency_stop" and before != "emergency_stop":
                rec["estops"] += 1
                self.log.warning("health_emergency_stop", total=rec["estops"])
            self.state["mode"] = mode
        counts, runtime_error = _runtime_counts(self.hcfg.runtime_file)
        if counts is not None:
            # the first reading ever is the reference: counts from before we watched are no
            # release's
            inc = _increase(counts, self.state.get("runtime") or counts)
            rec["safety_events"] += inc["safety_clamps"] + inc["safety_blocks"]
            rec["errors"] += inc["errors"]
            self.state["runtime"] = counts
        self.state["runtime_error"] = runtime_error
        self._last_poll = now

    def _judge(self, rid: str, rec: dict[str, Any], now: float) -> None:
        old = self.state["releases"].get(rec.get("predecessor") or "")
        verdict = judge(rec, old, self.hcfg)
        # a probation restarted after a damaged state keeps saying so
        rec["reason"] = verdict.reason + (f"; {rec['note']}" if rec.get("note") else "")
        if verdict.state == "confirmed":
            rec["state"] = "confirmed"
            self.log.info("health_confirmed", release=rid, reason=verdict.reason)
        elif verdict.state == "rollback":
            self._roll_back(rid, rec, verdict.reason, now)

    def _roll_back(self, rid: str, rec: dict[str, Any], reason: str, now: float) -> None:
        """Mark bad and roll back (one store call, finished by recover() after a crash), then
        tag the episodes recorded while it ran."""
        try:
            back = self.store.rollback(mark_bad=f"health window: {reason}")
        except (OSError, StoreError) as exc:  # stays on probation; tried again next poll
            self.log.error("health_rollback_failed", release=rid, reason=reason, error=str(exc))
            return
        self._after_rollback(rid, rec, reason, back.id, now)

    def _after_rollback(
        self, rid: str, rec: dict[str, Any], reason: str, to: str, now: float
    ) -> None:
        """Record the rollback and tag the episodes first seen while ``rid`` ran."""
        rec.update(state="rolled_back", reason=reason, ended=now, rolled_back_to=to)
        tagged = self.ledger.episodes_seen_between(rec["since"], now)
        for path, digest in tagged:
            self.ledger.exclude(
                path,
                digest,
                f"recorded while {rid} ran (rolled back: {reason})",
                f"release:{rid}",
                now,
                active=self.hcfg.exclude_tagged_episodes,
            )
        self.log.error("health_rolled_back", release=rid, to=to, reason=reason, tagged=len(tagged))

    def _save(self) -> None:
        """Write the state when a count or verdict changed, else at most every SAVE_EVERY_S
        (autonomous seconds alone do not cost an fsync per poll on an SD card)."""
        key = json.dumps(
            {
                r: {k: v for k, v in rec.items() if k != "autonomous_s"}
                for r, rec in self.state["releases"].items()
            },
            sort_keys=True,
        ) + str(self.state.get("watching"))
        now = time.monotonic()
        if key == self._saved_key and now - self._saved_at < SAVE_EVERY_S:
            return
        self._saved_key, self._saved_at = key, now
        try:
            atomic_write_json(self.path, self.state)
        except OSError as exc:
            self.log.error("health_state_write_failed", error=str(exc))

    def snapshot(self) -> dict[str, Any]:
        """The status block: the watched release, its state, counts and why."""
        rid = self.state.get("watching")
        rec = self.state["releases"].get(rid or "") or {}
        return {
            "release": rid,
            "state": rec.get("state"),
            "reason": rec.get("reason"),
            "autonomous_s": round(rec.get("autonomous_s", 0.0), 1),
            **{k: rec.get(k, 0) for k in KINDS},
            "mode": self.state.get("mode"),
            "error": (f"health state unreadable at start: {self.damaged}" if self.damaged else None)
            or self.state.get("error")
            or self.state.get("runtime_error"),
        }
