"""The gate over time: real files and a fake sysfs tree, with an injected clock driving time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gating import GateConfig, GateDecision, build_gate

WALL0 = 1_790_000_000.0  # some Unix time; the fake wall clock starts here


class Clock:
    """Monotonic and wall clocks the test moves by hand (ticks of 0.1 s avoid float drift)."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t


class Robot:
    """Writes what continuonos and the hardware would: mode file, signals file, thermal zone."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.mode_file = root / ".robot_mode"
        self.signals_file = root / "signals.json"
        self.thermal = root / "sys/class/thermal"
        self.zone = self.thermal / "thermal_zone0"
        self.zone.mkdir(parents=True)
        (self.zone / "type").write_text("cpu-thermal\n")
        self.mode_since = clock.wall()
        self.mode = ""
        self.set(mode="idle", battery=80.0, temp=50.0)

    def set(
        self,
        mode: str | None = None,
        battery: float | None = None,
        charging: bool = False,
        temp: float | None = None,
    ) -> None:
        if mode is not None and mode != self.mode:
            # continuonos rewrites the mode file only when the mode changes
            self.mode, self.mode_since = mode, self.clock.wall()
            body = {"mode": mode, "timestamp": self.mode_since, "config": {"mode": mode}}
            self.mode_file.write_text(json.dumps(body))
        if battery is not None:
            body = {
                "battery_percent": battery,
                "charging": charging,
                "timestamp": self.clock.wall(),
            }
            self.signals_file.write_text(json.dumps(body))
        if temp is not None:
            (self.zone / "temp").write_text(f"{round(temp * 1000)}\n")

    def config(self, **overrides: object) -> GateConfig:
        base = {
            "open_after_s": 3.0,
            "min_closed_s": 0.0,
            "mode_file": self.mode_file,
            "signals_file": self.signals_file,
            "thermal_root": self.thermal,
            "battery": {"need": "required"},
            "temperature": {"need": "required", "source": "sysfs"},
            # Machine-dependent signals have their own tests.
            "load": {"need": "off"},
            "memory": {"need": "off"},
            "disk": {"need": "off"},
        }
        return GateConfig.model_validate({**base, **overrides})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def robot(tmp_path: Path, clock: Clock) -> Robot:
    return Robot(tmp_path, clock)


def gate_for(robot: Robot, clock: Clock, **overrides: object):
    return build_gate(robot.config(**overrides), os.getpid(), clock.monotonic, clock.wall)


def run(gate, clock: Clock, ticks: range, step: float = 0.1, each=None) -> list[GateDecision]:
    """Poll once per tick at t = tick * step, calling ``each(tick)`` before each poll."""
    out = []
    for tick in ticks:
        clock.t = tick * step
        if each is not None:
            each(tick)
        out.append(gate.poll())
    return out


def first_open(decisions: list[GateDecision]) -> int | None:
    return next((i for i, d in enumerate(decisions) if d.open), None)


def test_steady_good_signals_open_exactly_open_after_s(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    decisions = run(gate, clock, range(50))
    assert first_open(decisions) == 30  # t = 3.0 s, not a poll earlier
    assert decisions[29].reasons == ["waiting 0.1 s more of good signals"]
    assert decisions[30].changed and decisions[30].summary() == "open"
    assert all(d.open for d in decisions[30:])


def test_wait_counts_from_when_signals_became_good(robot: Robot, clock: Clock) -> None:
    robot.set(mode="manual_control")
    gate = gate_for(robot, clock)
    decisions = run(gate, clock, range(80), each=lambda i: i == 17 and robot.set(mode="idle"))
    assert decisions[16].summary() == "closed: teleop (manual_control)"
    assert first_open(decisions) == 17 + 30


def test_teleop_closes_at_the_next_poll(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    assert run(gate, clock, range(31))[-1].open
    robot.set(mode="manual_control")
    clock.t = 3.1
    decision = gate.poll()
    assert not decision.open and decision.changed
    assert decision.reasons == ["teleop (manual_control)"]
    assert decision.summary() == "closed: teleop (manual_control)"


@pytest.mark.parametrize(
    ("bad", "good"),
    [
        ({"mode": "manual_control"}, {"mode": "idle"}),
        ({"temp": 76.0}, {"temp": 50.0}),
        ({"battery": 30.0}, {"battery": 80.0}),
    ],
    ids=["mode", "temperature", "battery"],
)
def test_flapping_at_10_hz_for_30_s_never_opens(
    robot: Robot, clock: Clock, bad: dict, good: dict
) -> None:
    gate = gate_for(robot, clock)
    # Square wave at 10 Hz: 0.05 s bad, 0.05 s good, polled every 0.05 s for 30 s.
    decisions = run(
        gate, clock, range(600), step=0.05, each=lambda i: robot.set(**(bad if i % 2 else good))
    )
    assert first_open(decisions) is None
    assert any(d.reasons == ["waiting 3.0 s more of good signals"] for d in decisions)


def test_temperature_hysteresis_76_closes_72_holds_69_reopens(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    assert run(gate, clock, range(31))[-1].open
    robot.set(temp=76.0)
    clock.t = 3.1
    hot = gate.poll()
    assert not hot.open and hot.reasons == ["temperature 76.0 °C >= 75.0 °C ceiling"]
    robot.set(temp=72.0)
    cooling = run(gate, clock, range(32, 200))  # 72 °C for 17 s
    assert first_open(cooling) is None
    assert cooling[-1].reasons == ["temperature 72.0 °C cooling: reopens under 70.0 °C"]
    robot.set(temp=69.0)
    cool = run(gate, clock, range(200, 240))
    assert first_open(cool) == 30  # open_after_s after 69 °C was first seen
    assert cool[30].readings["temperature"].value == 69.0


def test_battery_hysteresis_and_charging(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    assert run(gate, clock, range(31))[-1].open
    robot.set(battery=39.0)
    clock.t = 3.1
    assert gate.poll().reasons == ["battery 39 % < 40 % floor"]
    robot.set(battery=42.0)
    clock.t = 3.2
    assert gate.poll().reasons == ["battery 42 % recovering: reopens at 45 %"]
    robot.set(battery=42.0, charging=True)
    charging = run(gate, clock, range(33, 70))
    assert first_open(charging) == 30
    assert charging[30].summary() == "open; noted: battery 42 % low but charging"


def test_min_closed_dwell_before_re_arming(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock, min_closed_s=10.0)
    assert run(gate, clock, range(31))[-1].open  # the dwell does not apply at start-up
    robot.set(mode="manual_control")
    clock.t = 3.1
    assert not gate.poll().open  # closed at 3.1 s
    robot.set(mode="idle")
    later = run(gate, clock, range(32, 200))
    assert later[0].reasons == [
        "waiting 3.0 s more of good signals",
        "closed dwell: 9.9 s more before re-arming",
    ]
    assert first_open(later) == 131 - 32  # 3.1 + 10 = 13.1 s


def test_idle_mode_file_hours_old_keeps_the_gate_open(robot: Robot, clock: Clock) -> None:
    hours_ago = clock.wall() - 5 * 3600
    body = {"mode": "idle", "timestamp": hours_ago, "config": {"mode": "idle"}}
    robot.mode_file.write_text(json.dumps(body))
    os.utime(robot.mode_file, (hours_ago, hours_ago))
    gate = gate_for(robot, clock)
    decisions = run(gate, clock, range(100))
    assert first_open(decisions) == 30 and all(d.open for d in decisions[30:])
    assert decisions[-1].readings["mode"].age_s == pytest.approx(5 * 3600 + 9.9)


def test_stale_battery_closes_a_required_battery(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    assert run(gate, clock, range(31))[-1].open
    clock.t = 40.0  # the signals file was last written at t=0; max age 30 s
    decision = gate.poll()
    assert not decision.open
    assert decision.reasons == [f"signals file {robot.signals_file} stale: 40 s old > 30 s"]


def test_stale_optional_battery_is_only_noted(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock, battery={"need": "optional"})
    clock.t = 40.0
    gate.poll()
    clock.t = 43.0
    decision = gate.poll()
    assert decision.open
    stale = f"signals file {robot.signals_file} stale: 43 s old > 30 s"
    assert decision.notes == [f"battery (optional): {stale}"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            None,
            'mode file {p} missing: write {{"mode": "idle", "timestamp": <unix s>}} there '
            "or point gate.mode_file at the runtime's",
        ),
        ('{"mode": "idl', "mode file {p} is not valid JSON (half-written?)"),
        ("", "mode file {p} is not valid JSON (half-written?)"),
        ('["idle"]', "mode file {p} is not a JSON object"),
        ('{"timestamp": 1}', 'mode file {p} has no "mode" string'),
        ('{"mode": "dance", "timestamp": 1}', "unknown mode 'dance' (mode file {p})"),
    ],
    ids=["missing", "half-written", "empty", "not-object", "no-mode", "unknown-mode"],
)
def test_bad_mode_file_closes_with_its_own_reason(
    robot: Robot, clock: Clock, content: str | None, reason: str
) -> None:
    gate = gate_for(robot, clock)
    assert run(gate, clock, range(31))[-1].open
    if content is None:
        robot.mode_file.unlink()
    else:
        robot.mode_file.write_text(content)
    clock.t = 3.1
    decision = gate.poll()
    assert not decision.open
    assert decision.reasons == [reason.format(p=robot.mode_file)]


def test_unreadable_thermal_zone_closes(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    assert run(gate, clock, range(31))[-1].open
    (robot.zone / "temp").write_text("garbage\n")
    clock.t = 3.1
    decision = gate.poll()
    assert decision.reasons == [
        f"thermal zone thermal_zone0 (cpu-thermal): cannot read {robot.zone / 'temp'}: not a number"
    ]
    (robot.zone / "temp").unlink()
    (robot.zone / "temp").mkdir()  # reading a directory fails like a vanished sensor
    clock.t = 3.2
    assert (
        gate.poll().reasons[0].startswith("thermal zone thermal_zone0 (cpu-thermal): cannot read")
    )


def test_decision_json_carries_readings_with_ages(robot: Robot, clock: Clock) -> None:
    gate = gate_for(robot, clock)
    clock.t = 2.0
    robot.set(battery=80.0)
    clock.t = 2.5
    out = gate.poll().to_json()
    assert out["open"] is False and out["reasons"] == ["waiting 3.0 s more of good signals"]
    assert out["readings"]["battery"] == {
        "source": f"signals file {robot.signals_file}",
        "value": {"percent": 80.0, "charging": False},
        "age_s": 0.5,
        "error": None,
    }
    assert out["readings"]["mode"]["age_s"] == 2.5
    assert out["readings"]["temperature"]["value"] == 50.0
    json.dumps(out)
