"""Typed configuration for the safety head and the promotion rule."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvelopeConfig(_Section):
    status: str = "nominal"
    radius_m: float = Field(1.2, gt=0)
    decay: float = Field(0.12, ge=0)


class SafetyConfig(_Section):
    """WaveCore-style safety head, with the fields of the manifest's ``safety`` block.

    When ``from_manifest`` is true and the manifest has a ``safety`` block, that block wins over
    the values here (the runtime and the trainer then judge by the same numbers).
    """

    from_manifest: bool = True
    clamp_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"steering": (-1.0, 1.0), "throttle": (-1.0, 1.0)}
    )
    warn_threshold: float = Field(0.25, ge=0, le=1)
    block_threshold: float = Field(0.6, ge=0, le=1)
    envelope: EnvelopeConfig = Field(default_factory=EnvelopeConfig)
    proximity_path: str | None = "step_metadata.human_distance_m"
    max_jump: float = Field(0.5, gt=0, description="action change per step counted as a jump")


class PromotionConfig(_Section):
    """Every threshold of the promotion rule (DESIGN §7)."""

    min_eval_steps: int = Field(64, gt=0)
    min_improvement: float = Field(0.02, ge=0, description="relative error drop required")
    max_block_rate: float = Field(0.02, ge=0, le=1)
    max_shift_mean: float = Field(1.0, gt=0)
    max_shift_max: float = Field(4.0, gt=0)
