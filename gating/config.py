"""Typed configuration for the gate and its signal sources (owned by gating/)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Section):
    """Placeholder: the gating issue fills this in."""

    mode_file: Path = Path(".robot_mode")
    open_after_s: float = Field(3.0, ge=0)
    poll_interval_s: float = Field(1.0, gt=0)
