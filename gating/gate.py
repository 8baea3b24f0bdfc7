"""Robot signals -> one gate decision with reasons (architecture §8).

Enter slow, leave fast: the gate opens only after every condition held continuously for
``open_after_s`` (and, after a close, ``min_closed_s`` passed); it closes on the first bad reading.
Battery and temperature have hysteresis: once tripped they stay tripped until the reading is back
past the reopen threshold — a tripped latch is only cleared by a fresh reading, so an optional
sensor that vanishes while hot keeps the gate closed.

The decision logic is pure (:func:`evaluate`, :func:`step`); :class:`Gate` does the reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gating.config import KNOWN_MODES, TELEOP_MODES, GateConfig
from gating.sources import (
    Clock,
    CpuLoadSource,
    DiskSource,
    MemorySource,
    ModeFileSource,
    PowerSupplySource,
    PsutilBatterySource,
    Reading,
    SignalsFileSource,
    StatusHttpSource,
    ThermalSource,
)

SIGNALS = ("mode", "battery", "temperature", "load", "memory", "disk", "runtime")
# Float sums of poll times (1.3 + 3.0 vs 4.3) must not delay opening by a whole poll.
_EPS = 1e-9


@dataclass(frozen=True)
class Latches:
    """Hysteresis memory: the reading that tripped (or last kept) a latch, None when clear."""

    hot_c: float | None = None
    low_percent: float | None = None


@dataclass(frozen=True)
class Verdict:
    """What the current readings say, before timing: reasons to close, and notes."""

    bad: tuple[str, ...]
    notes: tuple[str, ...]
    latches: Latches


@dataclass(frozen=True)
class GateState:
    """The gate's memory between decisions: open or not, and since when."""

    open: bool = False
    good_since: float | None = None
    closed_at: float | None = None  # monotonic time of the last open -> closed transition
    latches: Latches = field(default_factory=Latches)


def _need(cfg: GateConfig, signal: str) -> str:
    return getattr(cfg, signal).need


def _judge_mode(cfg: GateConfig, mode: str, source: str) -> str | None:
    if mode == "emergency_stop":
        return "emergency stop"
    if mode in TELEOP_MODES:
        return f"teleop ({mode})"
    if mode == "autonomous":
        return "robot busy (autonomous)"
    if mode not in KNOWN_MODES:
        return f"unknown mode {mode!r} ({source})"
    if mode not in cfg.mode.allowed:
        return f"mode {mode} not allowed (allowed: {', '.join(cfg.mode.allowed)})"
    return None


def _judge_battery(
    cfg: GateConfig, value: dict[str, Any], latched: float | None
) -> tuple[str | None, str | None, float | None]:
    """(reason to close, note, new latch) for one battery reading."""
    b = cfg.battery
    percent, charging = value["percent"], value.get("charging") is True
    if percent < b.close_below_percent or (latched is not None and percent < b.reopen_at_percent):
        latched = percent
    else:
        latched = None
    if latched is None:
        return None, None, None
    if charging and b.charging_overrides_floor:
        return None, f"battery {percent:g} % low but charging", latched
    if percent < b.close_below_percent:
        return f"battery {percent:g} % < {b.close_below_percent:g} % floor", None, latched
    return f"battery {percent:g} % recovering: reopens at {b.reopen_at_percent:g} %", None, latched


def _judge_temperature(
    cfg: GateConfig, temp: float, latched: float | None
) -> tuple[str | None, float | None]:
    t = cfg.temperature
    if temp >= t.close_at_c:
        return f"temperature {temp:.1f} °C >= {t.close_at_c:.1f} °C ceiling", temp
    if latched is not None and temp >= t.reopen_below_c:
        return f"temperature {temp:.1f} °C cooling: reopens under {t.reopen_below_c:.1f} °C", temp
    return None, None


def evaluate(cfg: GateConfig, readings: dict[str, Reading], latches: Latches) -> Verdict:
    """Judge one set of readings against the config; pure. Missing REQUIRED signals and bad
    values close; missing OPTIONAL signals are noted; an unknown mode always closes."""
    bad: list[str] = []
    notes: list[str] = []
    hot, low = latches.hot_c, latches.low_percent
    for name in SIGNALS:
        need = _need(cfg, name)
        if need == "off":
            continue
        r = readings.get(name) or Reading("?", error=f"{name}: no reading")
        if not r.ok:
            if name == "temperature" and hot is not None:
                bad.append(f"temperature was {hot:.1f} °C, no reading since: {r.error}")
            elif name == "battery" and low is not None:
                bad.append(f"battery was {low:g} %, no reading since: {r.error}")
            elif need == "required":
                bad.append(r.error or f"{name}: no reading")
            else:
                notes.append(f"{name} (optional): {r.error}")
            continue
        reason: str | None = None
        if name == "mode":
            reason = _judge_mode(cfg, r.value, r.source)
        elif name == "battery":
            reason, note, low = _judge_battery(cfg, r.value, low)
            if note:
                notes.append(note)
        elif name == "temperature":
            reason, hot = _judge_temperature(cfg, r.value, hot)
        elif name == "load" and r.value > cfg.load.max_other_cpu_percent:
            limit = cfg.load.max_other_cpu_percent
            reason = f"other processes use {r.value:.0f} % CPU > {limit:g} % limit"
        elif name == "memory" and r.value < cfg.memory.min_available_mb:
            reason = f"available memory {r.value:.0f} MB < {cfg.memory.min_available_mb:g} MB"
        elif name == "disk" and r.value < cfg.disk.min_free_mb:
            reason = f"free disk {r.value:.0f} MB < {cfg.disk.min_free_mb:g} MB at {cfg.disk.path}"
        if reason:
            bad.append(reason)
    return Verdict(tuple(bad), tuple(notes), Latches(hot_c=hot, low_percent=low))


def step(
    cfg: GateConfig, state: GateState, verdict: Verdict, now: float
) -> tuple[GateState, list[str]]:
    """Advance the gate by one poll at monotonic ``now``; pure. Returns the new state and the
    reasons it is closed (empty when open)."""
    if verdict.bad:
        closed_at = now if state.open else state.closed_at
        return GateState(False, None, closed_at, verdict.latches), list(verdict.bad)
    good_since = now if state.good_since is None else state.good_since
    wait = good_since + cfg.open_after_s - now
    dwell = 0.0 if state.closed_at is None else state.closed_at + cfg.min_closed_s - now
    if state.open or (wait <= _EPS and dwell <= _EPS):
        return GateState(True, good_since, state.closed_at, verdict.latches), []
    reasons = []
    if wait > _EPS:
        reasons.append(f"waiting {wait:.1f} s more of good signals")
    if dwell > _EPS:
        reasons.append(f"closed dwell: {dwell:.1f} s more before re-arming")
    return GateState(False, good_since, state.closed_at, verdict.latches), reasons


@dataclass(frozen=True)
class GateDecision:
    """One poll's answer: open or not, why, and what was read (with ages)."""

    open: bool
    reasons: list[str]
    notes: list[str]
    readings: dict[str, Reading]
    changed: bool
    wall_time: float

    def summary(self) -> str:
        """One line: ``open``, ``open; noted: …`` or ``closed: reason; reason``."""
        if self.open:
            return "open" if not self.notes else "open; noted: " + "; ".join(self.notes)
        return "closed: " + "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON-ready mapping (for the status file)."""
        return {
            "open": self.open,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "changed": self.changed,
            "wall_time": self.wall_time,
            "readings": {name: r.to_json() for name, r in self.readings.items()},
        }


class Gate:
    """Reads the configured sources and keeps the gate's timing and hysteresis state."""

    def __init__(
        self,
        cfg: GateConfig,
        sources: dict[str, Any],
        routes: dict[str, str],
        monotonic: Clock,
        wall: Clock,
    ) -> None:
        self.cfg = cfg
        self.sources = sources
        self.routes = routes
        self.monotonic = monotonic
        self.wall = wall
        self.state = GateState()

    def read(self) -> dict[str, Reading]:
        """Read every source in use once and pick each signal's reading."""
        results: dict[str, dict[str, Reading]] = {}
        for key, source in self.sources.items():
            try:
                results[key] = source.read()
            except Exception as exc:  # a source bug must close the gate, never crash the daemon
                err = f"{key}: {type(exc).__name__}: {exc}"
                results[key] = {s: Reading(key, error=err) for s in SIGNALS}
        return {
            signal: results[key].get(signal) or Reading(key, error=f"{key} gives no {signal}")
            for signal, key in self.routes.items()
        }

    def poll(self) -> GateDecision:
        """Read, judge and advance; cheap enough to call every 0.25 s."""
        readings = self.read()
        now = self.monotonic()
        verdict = evaluate(self.cfg, readings, self.state.latches)
        was_open = self.state.open
        self.state, reasons = step(self.cfg, self.state, verdict, now)
        return GateDecision(
            open=self.state.open,
            reasons=reasons,
            notes=list(verdict.notes),
            readings=readings,
            changed=self.state.open != was_open,
            wall_time=self.wall(),
        )


def _source_for(signal: str, cfg: GateConfig) -> str:
    if signal in ("load", "memory", "disk"):
        return signal
    choice = getattr(cfg, signal).source
    if choice == "sysfs":
        return "thermal" if signal == "temperature" else "power_supply"
    if choice == "psutil":
        return "psutil_battery"
    return choice


def build_gate(
    cfg: GateConfig,
    own_pid: int,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Gate:
    """A gate reading only the sources its signals use. ``own_pid`` is the daemon: its process
    tree (the job child included) is left out of the "other processes" CPU load."""
    routes = {s: _source_for(s, cfg) for s in SIGNALS if _need(cfg, s) != "off"}
    makers: dict[str, Callable[[], Any]] = {
        "mode_file": lambda: ModeFileSource(Path(cfg.mode_file), wall),
        "signals_file": lambda: SignalsFileSource(cfg.signals_file, cfg.signals_max_age_s, wall),
        "status_http": lambda: StatusHttpSource(
            cfg.status_url, cfg.status_timeout_s, cfg.status_refresh_s, monotonic
        ),
        "thermal": lambda: ThermalSource(cfg.thermal_root, cfg.thermal_zones),
        "power_supply": lambda: PowerSupplySource(cfg.power_supply_root, cfg.power_supplies),
        "psutil_battery": PsutilBatterySource,
        "load": lambda: CpuLoadSource(
            own_pid, cfg.load.window_s, cfg.load.sample_interval_s, monotonic
        ),
        "memory": MemorySource,
        "disk": lambda: DiskSource(cfg.disk.path),
    }
    sources = {key: makers[key]() for key in dict.fromkeys(routes.values())}
    return Gate(cfg, sources, routes, monotonic, wall)


__all__ = [
    "Gate",
    "GateDecision",
    "GateState",
    "Latches",
    "Verdict",
    "build_gate",
    "evaluate",
    "step",
]
