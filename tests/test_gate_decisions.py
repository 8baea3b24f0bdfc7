"""The gate's pure decision functions, table-driven: signal states -> decision and reasons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from daemon.config import load_config
from gating.config import GateConfig
from gating.gate import GateState, Latches, Verdict, evaluate, step
from gating.sources import Reading


def ok(value: Any, age: float = 0.0) -> Reading:
    return Reading("test", value, age)


def err(message: str) -> Reading:
    return Reading("test", error=message)


GOOD: dict[str, Reading] = {
    "mode": ok("idle"),
    "battery": ok({"percent": 80.0, "charging": False}),
    "temperature": ok(50.0),
    "load": ok(10.0),
    "memory": ok(2000.0),
    "disk": ok(10_000.0),
    "runtime": ok(True),
}

ALL_REQUIRED = {
    s: {"need": "required"} for s in ("battery", "temperature", "load", "memory", "disk", "runtime")
}

# id, config (gate: section), readings replacing GOOD's, expected reasons to close, expected notes
CASES: list[tuple[str, dict, dict[str, Reading], list[str], list[str]]] = [
    ("all good", ALL_REQUIRED, {}, [], []),
    ("idle, defaults", {}, {}, [], []),
    ("sleep_learning", {}, {"mode": ok("sleep_learning")}, [], []),
    ("teleop control", {}, {"mode": ok("manual_control")}, ["teleop (manual_control)"], []),
    ("teleop training", {}, {"mode": ok("manual_training")}, ["teleop (manual_training)"], []),
    ("autonomous", {}, {"mode": ok("autonomous")}, ["robot busy (autonomous)"], []),
    ("emergency stop", {}, {"mode": ok("emergency_stop")}, ["emergency stop"], []),
    (
        "auto_charging not allowed by default",
        {},
        {"mode": ok("auto_charging")},
        ["mode auto_charging not allowed (allowed: idle, sleep_learning)"],
        [],
    ),
    (
        "auto_charging allowed when configured",
        {"mode": {"allowed": ["idle", "auto_charging"]}},
        {"mode": ok("auto_charging")},
        [],
        [],
    ),
    ("unknown mode", {}, {"mode": ok("dance")}, ["unknown mode 'dance' (test)"], []),
    (
        "unknown mode closes even when mode is optional",
        {"mode": {"need": "optional"}},
        {"mode": ok("dance")},
        ["unknown mode 'dance' (test)"],
        [],
    ),
    (
        "mode missing, required",
        {},
        {"mode": err("mode file /x missing")},
        ["mode file /x missing"],
        [],
    ),
    (
        "mode missing, optional",
        {"mode": {"need": "optional"}},
        {"mode": err("mode file /x missing")},
        [],
        ["mode (optional): mode file /x missing"],
    ),
    (
        "battery under floor",
        {},
        {"battery": ok({"percent": 30.0, "charging": False})},
        ["battery 30 % < 40 % floor"],
        [],
    ),
    (
        "battery under floor but charging",
        {},
        {"battery": ok({"percent": 30.0, "charging": True})},
        [],
        ["battery 30 % low but charging"],
    ),
    (
        "battery under floor, charging, override off",
        {"battery": {"charging_overrides_floor": False}},
        {"battery": ok({"percent": 30.0, "charging": True})},
        ["battery 30 % < 40 % floor"],
        [],
    ),
    (
        "battery charging unknown is not charging",
        {},
        {"battery": ok({"percent": 30.0, "charging": None})},
        ["battery 30 % < 40 % floor"],
        [],
    ),
    (
        "legacy fraction floor 0.5 = 50 %",
        {"battery": {"close_below_percent": 0.5, "reopen_at_percent": 0.55}},
        {"battery": ok({"percent": 45.0, "charging": False})},
        ["battery 45 % < 50 % floor"],
        [],
    ),
    ("battery exactly at floor", {}, {"battery": ok({"percent": 40.0, "charging": False})}, [], []),
    (
        "battery stale, required",
        {"battery": {"need": "required"}},
        {"battery": err("signals file s.json stale: 100 s old > 30 s")},
        ["signals file s.json stale: 100 s old > 30 s"],
        [],
    ),
    (
        "battery stale, optional",
        {},
        {"battery": err("signals file s.json stale: 100 s old > 30 s")},
        [],
        ["battery (optional): signals file s.json stale: 100 s old > 30 s"],
    ),
    (
        "temperature at ceiling",
        {},
        {"temperature": ok(75.0)},
        ["temperature 75.0 °C >= 75.0 °C ceiling"],
        [],
    ),
    ("temperature just under ceiling", {}, {"temperature": ok(74.9)}, [], []),
    (
        "thermal zone unreadable, required",
        {"temperature": {"need": "required", "source": "sysfs"}},
        {"temperature": err("thermal zone thermal_zone0 (cpu-thermal): cannot read")},
        ["thermal zone thermal_zone0 (cpu-thermal): cannot read"],
        [],
    ),
    ("other load high", {}, {"load": ok(90.0)}, ["other processes use 90 % CPU > 75 % limit"], []),
    (
        "load measuring, required",
        {},
        {"load": err("cpu load: measuring")},
        ["cpu load: measuring"],
        [],
    ),
    ("load off ignores it", {"load": {"need": "off"}}, {"load": err("broken")}, [], []),
    ("memory short", {}, {"memory": ok(100.0)}, ["available memory 100 MB < 256 MB"], []),
    ("disk short", {}, {"disk": ok(100.0)}, ["free disk 100 MB < 500 MB at ."], []),
    (
        "runtime endpoint dead, required",
        {"runtime": {"need": "required"}},
        {
            "runtime": err(
                "status endpoint http://127.0.0.1:8081/api/status: no answer within 0.2 s"
            )
        },
        ["status endpoint http://127.0.0.1:8081/api/status: no answer within 0.2 s"],
        [],
    ),
    (
        "several bad at once, in signal order",
        {},
        {
            "mode": ok("manual_control"),
            "temperature": ok(80.0),
            "battery": ok({"percent": 10.0, "charging": False}),
        },
        [
            "teleop (manual_control)",
            "battery 10 % < 40 % floor",
            "temperature 80.0 °C >= 75.0 °C ceiling",
        ],
        [],
    ),
]


@pytest.mark.parametrize(
    ("cfg", "changes", "bad", "notes"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decision_table(cfg: dict, changes: dict, bad: list[str], notes: list[str]) -> None:
    config = GateConfig.model_validate({"open_after_s": 0, "min_closed_s": 0, **cfg})
    verdict = evaluate(config, {**GOOD, **changes}, Latches())
    assert list(verdict.bad) == bad
    assert list(verdict.notes) == notes
    # Good for long enough: the decision is open exactly when nothing is bad.
    state, reasons = step(config, GateState(good_since=-100.0), verdict, 0.0)
    assert state.open is (not bad)
    assert reasons == bad


def test_required_signal_without_any_reading_closes() -> None:
    config = GateConfig(battery={"need": "required"})
    readings = {k: v for k, v in GOOD.items() if k != "battery"}
    assert evaluate(config, readings, Latches()).bad == ("battery: no reading",)


# Hysteresis rows: (latch before, reading, reasons, latched after)
TEMP_STEPS = [
    (None, 72.0, [], False),
    (None, 76.0, ["temperature 76.0 °C >= 75.0 °C ceiling"], True),
    (76.0, 72.0, ["temperature 72.0 °C cooling: reopens under 70.0 °C"], True),
    (72.0, 70.0, ["temperature 70.0 °C cooling: reopens under 70.0 °C"], True),
    (72.0, 69.0, [], False),
]


@pytest.mark.parametrize(("latch", "temp", "bad", "latched"), TEMP_STEPS)
def test_temperature_hysteresis(
    latch: float | None, temp: float, bad: list[str], latched: bool
) -> None:
    verdict = evaluate(GateConfig(), {**GOOD, "temperature": ok(temp)}, Latches(hot_c=latch))
    assert list(verdict.bad) == bad
    assert (verdict.latches.hot_c is not None) is latched


BATTERY_STEPS = [
    (None, 42.0, False, [], False),
    (None, 39.0, False, ["battery 39 % < 40 % floor"], True),
    (39.0, 42.0, False, ["battery 42 % recovering: reopens at 45 %"], True),
    (42.0, 42.0, True, [], True),  # charging overrides, but the latch stays
    (42.0, 45.0, False, [], False),
]


@pytest.mark.parametrize(("latch", "percent", "charging", "bad", "latched"), BATTERY_STEPS)
def test_battery_hysteresis(
    latch: float | None, percent: float, charging: bool, bad: list[str], latched: bool
) -> None:
    reading = ok({"percent": percent, "charging": charging})
    verdict = evaluate(GateConfig(), {**GOOD, "battery": reading}, Latches(low_percent=latch))
    assert list(verdict.bad) == bad
    assert (verdict.latches.low_percent is not None) is latched


def test_tripped_latch_holds_when_an_optional_sensor_vanishes() -> None:
    gone = err("signals file s.json missing")
    verdict = evaluate(GateConfig(), {**GOOD, "temperature": gone}, Latches(hot_c=76.0))
    assert verdict.bad == (
        "temperature was 76.0 °C, no reading since: signals file s.json missing",
    )


STEP_CASES = [
    # id, state before, bad?, now, open after, reasons
    (
        "first good poll starts the wait",
        GateState(),
        False,
        10.0,
        False,
        ["waiting 3.0 s more of good signals"],
    ),
    ("good long enough opens", GateState(good_since=7.0), False, 10.0, True, []),
    (
        "not quite long enough",
        GateState(good_since=7.5),
        False,
        10.0,
        False,
        ["waiting 0.5 s more of good signals"],
    ),
    ("float sums do not delay", GateState(good_since=1.3), False, 4.3, True, []),
    ("bad closes an open gate", GateState(open=True, good_since=0.0), True, 10.0, False, ["x"]),
    (
        "dwell after a close",
        GateState(good_since=5.0, closed_at=4.0),
        False,
        9.0,
        False,
        ["closed dwell: 5.0 s more before re-arming"],
    ),
    ("dwell over", GateState(good_since=5.0, closed_at=4.0), False, 14.0, True, []),
]


@pytest.mark.parametrize(
    ("state", "bad", "now", "is_open", "reasons"),
    [c[1:] for c in STEP_CASES],
    ids=[c[0] for c in STEP_CASES],
)
def test_step_table(
    state: GateState, bad: bool, now: float, is_open: bool, reasons: list[str]
) -> None:
    verdict = Verdict(("x",) if bad else (), (), Latches())
    new, got = step(GateConfig(open_after_s=3, min_closed_s=10), state, verdict, now)
    assert new.open is is_open
    assert got == reasons
    if bad and state.open:
        assert new.closed_at == now


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"mode": {"allowed": ["idle", "manual_control"]}}, "can never allow training"),
        ({"mode": {"allowed": ["autonomous"]}}, "can never allow training"),
        ({"mode": {"allowed": ["flying"]}}, "unknown mode"),
        ({"battery": {"close_below_percent": 50, "reopen_at_percent": 45}}, "reopen_at_percent"),
        ({"temperature": {"close_at_c": 70, "reopen_below_c": 75}}, "reopen_below_c"),
        ({"status_url": "https://127.0.0.1/api/status"}, "should match pattern"),
        ({"temperature": {"source": "sysfs"}, "thermal_zones": []}, "thermal_zones"),
        ({"bogus": 1}, "Extra inputs"),
    ],
)
def test_config_rejects(section: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GateConfig.model_validate(section)


def test_battery_fraction_is_converted() -> None:
    cfg = GateConfig.model_validate(
        {"battery": {"close_below_percent": 0.4, "reopen_at_percent": 0.45}}
    )
    assert (cfg.battery.close_below_percent, cfg.battery.reopen_at_percent) == (40.0, 45.0)


PI5_GATE = """
gate:
  open_after_s: 120
  min_closed_s: 300
  mode_file: /opt/continuonos/brain/.robot_mode
  status_url: http://127.0.0.1:8081/api/status
  thermal_zones: [cpu-thermal]
  mode: {need: required, source: mode_file, allowed: [idle, sleep_learning]}
  battery: {need: required, source: status_http, close_below_percent: 40, reopen_at_percent: 45}
  temperature: {need: required, source: sysfs, close_at_c: 75, reopen_below_c: 70}
  load: {need: required, max_other_cpu_percent: 50}
  runtime: {need: required}
"""


def test_pi5_gate_section_loads_and_relative_paths_resolve(tmp_path: Path) -> None:
    pi5 = tmp_path / "pi5.yaml"
    pi5.write_text(PI5_GATE)
    cfg, _ = load_config(pi5, str(tmp_path))
    assert str(cfg.gate.mode_file) == "/opt/continuonos/brain/.robot_mode"
    assert cfg.gate.battery.source == "status_http" and cfg.gate.open_after_s == 120
    default, _ = load_config(None, str(tmp_path))
    assert default.gate.mode_file == tmp_path / ".robot_mode"
    assert default.gate.signals_file == tmp_path / "signals.json"
    assert default.gate.disk.path == tmp_path


def test_gating_pulls_in_no_torch_and_no_sibling_package() -> None:
    code = (
        "import sys, gating, gating.gate, gating.sources; "
        "bad = [m for m in ('torch', 'daemon', 'trainer_core', 'safety') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
