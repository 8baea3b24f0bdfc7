"""Typed configuration for the gate and its signal sources (owned by gating/).

Two halves: *where* to read (the flat source settings: files, URL, sysfs roots) and *what* to
require (one section per signal: ``mode``, ``battery``, ``temperature``, ``load``, ``memory``,
``disk``, ``runtime``). Each signal names exactly one source and a ``need``:

- ``required``: missing, stale or unreadable closes the gate, with that as the reason;
- ``optional``: missing is noted in the decision but does not close; a bad value still closes;
- ``off``: not read at all.

Battery thresholds are percent everywhere. A threshold <= 1.0 is taken as a legacy fraction
(the old continuonos code wrote ``0.4`` for 40 %) and multiplied by 100, so a 1 % floor cannot be
written — nobody wants one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _yaml_off(value: Any) -> Any:
    # YAML 1.1 reads a bare ``off`` as False; ``on``/True names no need level, so it stays an error.
    return "off" if value is False else value


Need = Annotated[Literal["required", "optional", "off"], BeforeValidator(_yaml_off)]

KNOWN_MODES = (
    "idle",
    "manual_control",
    "manual_training",
    "autonomous",
    "sleep_learning",
    "emergency_stop",
    "auto_charging",
)
TELEOP_MODES = ("manual_control", "manual_training")
# The robot is driven, moving on its own, or stopped for safety: training never competes there.
NEVER_ALLOWED_MODES = (*TELEOP_MODES, "autonomous", "emergency_stop")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModeSignal(_Section):
    """The robot's mode. ``auto_charging`` is left out by default because the robot may be
    driving itself to the dock; add it when the dock is where it sits."""

    need: Need = "required"
    source: Literal["mode_file", "signals_file", "status_http"] = "mode_file"
    allowed: list[str] = Field(default_factory=lambda: ["idle", "sleep_learning"], min_length=1)

    @field_validator("allowed")
    @classmethod
    def _known_and_safe(cls, modes: list[str]) -> list[str]:
        for mode in modes:
            if mode not in KNOWN_MODES:
                raise ValueError(f"unknown mode {mode!r} (known: {', '.join(KNOWN_MODES)})")
            if mode in NEVER_ALLOWED_MODES:
                raise ValueError(f"mode {mode!r} can never allow training")
        return modes


def _percent(value: float) -> float:
    return value * 100.0 if value <= 1.0 else value


class BatterySignal(_Section):
    """Close under ``close_below_percent``; once closed, reopen only at ``reopen_at_percent``."""

    need: Need = "optional"
    source: Literal["signals_file", "status_http", "sysfs", "psutil"] = "signals_file"
    close_below_percent: float = Field(40.0, ge=0, le=100)
    reopen_at_percent: float = Field(45.0, ge=0, le=100)
    charging_overrides_floor: bool = Field(
        True, description="a battery under the floor does not close the gate while charging"
    )

    @field_validator("close_below_percent", "reopen_at_percent")
    @classmethod
    def _legacy_fraction(cls, value: float) -> float:
        return _percent(value)

    @model_validator(mode="after")
    def _hysteresis(self) -> BatterySignal:
        if self.reopen_at_percent < self.close_below_percent:
            raise ValueError("reopen_at_percent must be >= close_below_percent")
        return self


class TemperatureSignal(_Section):
    """Close at ``close_at_c``; once closed, reopen only under ``reopen_below_c``."""

    need: Need = "optional"
    source: Literal["signals_file", "sysfs"] = "signals_file"
    close_at_c: float = 75.0
    reopen_below_c: float = 70.0

    @model_validator(mode="after")
    def _hysteresis(self) -> TemperatureSignal:
        if self.reopen_below_c > self.close_at_c:
            raise ValueError("reopen_below_c must be <= close_at_c")
        return self


class LoadSignal(_Section):
    """CPU used by processes outside the daemon's own tree, in percent of the whole machine,
    averaged over ``window_s`` and sampled every ``sample_interval_s``."""

    need: Need = "required"
    max_other_cpu_percent: float = Field(75.0, gt=0, le=100)
    window_s: float = Field(5.0, gt=0)
    sample_interval_s: float = Field(1.0, gt=0)


class MemorySignal(_Section):
    """Close while the available memory is under ``min_available_mb``."""

    need: Need = "required"
    min_available_mb: float = Field(256.0, ge=0)


class DiskSignal(_Section):
    """Close while the free space on ``path``'s file system is under ``min_free_mb``."""

    need: Need = "required"
    path: Path = Path(".")
    min_free_mb: float = Field(500.0, ge=0)


class RuntimeSignal(_Section):
    """The continuonos runtime is alive: its status endpoint answers."""

    need: Need = "off"
    source: Literal["status_http"] = "status_http"


class GateConfig(_Section):
    """The ``gate:`` section. Defaults are the embedded default (laptop, VM, ``make demo``)."""

    open_after_s: float = Field(3.0, ge=0, description="good signals needed before opening")
    min_closed_s: float = Field(10.0, ge=0, description="closed dwell after a close")

    # Where to read.
    mode_file: Path = Path(".robot_mode")
    signals_file: Path = Path("signals.json")
    signals_max_age_s: float = Field(30.0, gt=0)
    status_url: str = Field("http://127.0.0.1:8081/api/status", pattern=r"^http://")
    status_timeout_s: float = Field(0.25, gt=0, le=5)
    status_refresh_s: float = Field(
        2.0, gt=0, description="the endpoint is asked at most this often"
    )
    thermal_root: Path = Path("/sys/class/thermal")
    thermal_zones: list[str] = Field(
        default_factory=lambda: ["cpu-thermal"],
        description="zone directory names (thermal_zone0) or types (cpu-thermal, soc_thermal)",
    )
    power_supply_root: Path = Path("/sys/class/power_supply")
    power_supplies: list[str] = Field(
        default_factory=list,
        description="supply names (BAT0) or types; empty means every supply of type Battery",
    )

    # What to require.
    mode: ModeSignal = Field(default_factory=ModeSignal)
    battery: BatterySignal = Field(default_factory=BatterySignal)
    temperature: TemperatureSignal = Field(default_factory=TemperatureSignal)
    load: LoadSignal = Field(default_factory=LoadSignal)
    memory: MemorySignal = Field(default_factory=MemorySignal)
    disk: DiskSignal = Field(default_factory=DiskSignal)
    runtime: RuntimeSignal = Field(default_factory=RuntimeSignal)

    @model_validator(mode="after")
    def _zones_named(self) -> GateConfig:
        uses_sysfs_temp = self.temperature.need != "off" and self.temperature.source == "sysfs"
        if uses_sysfs_temp and not self.thermal_zones:
            raise ValueError(
                "thermal_zones must name at least one zone when temperature uses sysfs"
            )
        return self
