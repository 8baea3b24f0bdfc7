"""Typed configuration for the safety head and the promotion rule.

The manifest's ``safety`` block (FORMATS §4) carries the same fields as :class:`SafetyConfig`;
:func:`merge_manifest_safety` validates such a block and lays it over the configured values.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvelopeConfig(_Section):
    """The proximity envelope: a person closer than ``radius_m`` raises the risk."""

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
    max_jump_per_name: dict[str, float] = Field(
        default_factory=dict, description="per-name overrides of max_jump (action units)"
    )

    @field_validator("clamp_bounds")
    @classmethod
    def _bounds_ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"{name}: bounds must be finite with lo <= hi (got [{lo}, {hi}])")
        return v

    @field_validator("max_jump_per_name")
    @classmethod
    def _jumps_positive(cls, v: dict[str, float]) -> dict[str, float]:
        for name, jump in v.items():
            if not (math.isfinite(jump) and jump > 0):
                raise ValueError(f"{name}: max jump must be finite and > 0 (got {jump})")
        return v

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> SafetyConfig:
        if self.warn_threshold > self.block_threshold:
            raise ValueError(
                f"warn_threshold {self.warn_threshold} must be <= "
                f"block_threshold {self.block_threshold}"
            )
        return self


class ManifestSafetyError(ValueError):
    """The manifest's ``safety`` block cannot be used; the message names the field."""


# Keys of the manifest's safety block that the head reads; ``path`` names the runtime's own head
# module and means nothing here, but it is a known key, not an error.
_MANIFEST_KEYS = {"clamp_bounds", "warn_threshold", "block_threshold", "envelope"}
_MANIFEST_IGNORED = {"path"}


def merge_manifest_safety(cfg: SafetyConfig, block: dict[str, Any] | None) -> SafetyConfig:
    """The head's configuration: ``cfg`` with the manifest's ``safety`` block laid over it.

    ``block`` None (no block in the manifest) or ``cfg.from_manifest`` false returns ``cfg``.
    Fields absent from the block keep the configured values; ``envelope`` merges field by
    field. A malformed block (not a mapping, an unknown key, a wrong type, bounds out of order,
    warn above block) raises :class:`ManifestSafetyError` naming the field: a safety head
    configured from half a block would judge by numbers nobody chose.
    """
    if block is None or not cfg.from_manifest:
        return cfg
    if not isinstance(block, dict):
        raise ManifestSafetyError(
            f"manifest safety: must be a mapping (got {type(block).__name__})"
        )
    unknown = sorted(set(block) - _MANIFEST_KEYS - _MANIFEST_IGNORED)
    if unknown:
        raise ManifestSafetyError(f"manifest safety: unknown keys {unknown}")
    merged = cfg.model_dump()
    for key in _MANIFEST_KEYS & set(block):
        value = block[key]
        if key == "envelope":
            if not isinstance(value, dict):
                raise ManifestSafetyError(
                    f"manifest safety.envelope: must be a mapping (got {type(value).__name__})"
                )
            merged["envelope"] = {**merged["envelope"], **value}
        elif key == "clamp_bounds":
            merged[key] = _bounds(value)
        else:
            merged[key] = value
    try:
        return SafetyConfig.model_validate(merged, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ManifestSafetyError(
            f"manifest safety.{loc}: {first['msg']} (got {first.get('input')!r})"
        ) from exc


def _bounds(value: Any) -> dict[str, tuple[float, float]]:
    """``{name: [lo, hi]}`` with real numbers, or a ManifestSafetyError naming the entry."""
    if not isinstance(value, dict):
        raise ManifestSafetyError(
            f"manifest safety.clamp_bounds: must be a mapping (got {type(value).__name__})"
        )
    out: dict[str, tuple[float, float]] = {}
    for name, pair in value.items():
        ok = (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
        )
        if not ok:
            raise ManifestSafetyError(
                f"manifest safety.clamp_bounds.{name}: must be [lo, hi] numbers (got {pair!r})"
            )
        out[str(name)] = (float(pair[0]), float(pair[1]))
    return out


class PromotionConfig(_Section):
    """Every threshold of the promotion rule (architecture §7)."""

    min_eval_steps: int = Field(64, gt=0)
    min_improvement: float = Field(0.02, ge=0, description="relative error drop required")
    max_block_rate: float = Field(0.02, ge=0, le=1)
    max_shift_mean: float = Field(1.0, gt=0)
    max_shift_max: float = Field(4.0, gt=0)
