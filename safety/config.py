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
    approach: dict[str, float] = Field(
        default_factory=lambda: {"throttle": 1.0},
        description="action names that move the robot toward a person, with the sign that "
        "does (e.g. forward throttle: +1); the proximity term scales with how hard the "
        "policy commands that way. Empty: the proximity term ignores the action",
    )
    approach_floor: float = Field(
        0.25,
        ge=0,
        le=1,
        description="share of the proximity term left when the policy brakes or backs away "
        "(a person close by is a risk whatever the policy does)",
    )

    demo_bound_tolerance: float = Field(
        0.05,
        ge=0,
        le=0.1,
        description="share of a name's bound width within which a recorded action counts as "
        "commanding that bound: where the demonstration did, a prediction past the bound is "
        "executed as the demonstration was (the bound) and is not counted as leaving it by the "
        "promotion rule's safety rates (a recording clipped at ingest never counts). At most 0.1, "
        "so the clamp check cannot be configured away",
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

    @field_validator("approach")
    @classmethod
    def _approach_signs(cls, v: dict[str, float]) -> dict[str, float]:
        for name, sign in v.items():
            if sign not in (-1.0, 1.0):
                raise ValueError(f"approach.{name}: sign must be 1 or -1 (got {sign})")
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


def merge_manifest_safety(
    cfg: SafetyConfig, block: dict[str, Any] | None, notes: list[str] | None = None
) -> SafetyConfig:
    """The head's configuration: ``cfg`` tightened by the manifest's ``safety`` block.

    The configured block is a floor nobody can lower: bounds intersect (a name only the
    manifest bounds is added), thresholds take the lower (stricter) value, the envelope's
    radius and decay take the larger one. A looser value, empty ``clamp_bounds`` or a
    threshold of 1.0 changes nothing; each such value is described in ``notes`` (the daemon
    logs them at warning). ``block`` None or ``cfg.from_manifest`` false returns ``cfg``.
    A malformed block (not a mapping, an unknown key, a wrong type, bounds out of order or
    disjoint from the configured ones) raises :class:`ManifestSafetyError` naming the field:
    a safety head configured from half a block would judge by numbers nobody chose.
    """
    notes = [] if notes is None else notes
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
    for key in sorted(_MANIFEST_KEYS & set(block)):
        value = block[key]
        if key == "envelope":
            merged["envelope"] = _tighter_envelope(merged["envelope"], value, notes)
        elif key == "clamp_bounds":
            merged[key] = _intersect_bounds(cfg.clamp_bounds, _bounds(value), notes)
        else:
            merged[key] = _stricter(key, merged[key], value, notes)
    try:
        return SafetyConfig.model_validate(merged, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ManifestSafetyError(
            f"manifest safety.{loc}: {first['msg']} (got {first.get('input')!r})"
        ) from exc


def _number(key: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ManifestSafetyError(f"manifest safety.{key}: must be a finite number (got {value!r})")
    return float(value)


def _stricter(key: str, configured: float, value: Any, notes: list[str]) -> float:
    """The lower of two thresholds (a lower threshold warns or blocks sooner)."""
    number = _number(key, value)
    if not 0 <= number <= 1:
        raise ManifestSafetyError(f"manifest safety.{key}: must be in [0, 1] (got {number})")
    if number > configured:
        notes.append(f"manifest safety.{key} {number} is looser than the configured {configured}")
        return configured
    return number


def _tighter_envelope(configured: dict[str, Any], value: Any, notes: list[str]) -> dict:
    """The envelope with the larger radius and decay of the two (both raise the risk)."""
    if not isinstance(value, dict):
        raise ManifestSafetyError(
            f"manifest safety.envelope: must be a mapping (got {type(value).__name__})"
        )
    out = dict(configured)
    for key, v in value.items():
        if key not in ("radius_m", "decay"):
            out[key] = v  # status and unknown keys: validated below
            continue
        number = _number(f"envelope.{key}", v)
        if number < configured[key]:
            notes.append(
                f"manifest safety.envelope.{key} {number} is looser than the configured "
                f"{configured[key]}"
            )
        out[key] = max(number, configured[key])
    return out


def _intersect_bounds(
    configured: dict[str, tuple[float, float]],
    manifest: dict[str, tuple[float, float]],
    notes: list[str],
) -> dict[str, tuple[float, float]]:
    """Bounds of both blocks intersected per name; an empty intersection is an error."""
    if not manifest:
        notes.append("manifest safety.clamp_bounds is empty: the configured bounds stand")
    out = dict(configured)
    for name, (lo, hi) in manifest.items():
        if lo > hi:
            raise ManifestSafetyError(
                f"manifest safety.clamp_bounds.{name}: lo > hi (got [{lo}, {hi}])"
            )
        if name not in configured:
            out[name] = (lo, hi)
            continue
        clo, chi = configured[name]
        if lo < clo or hi > chi:
            notes.append(
                f"manifest safety.clamp_bounds.{name} [{lo}, {hi}] is wider than the configured "
                f"[{clo}, {chi}]: intersected"
            )
        new = (max(lo, clo), min(hi, chi))
        if new[0] > new[1]:
            raise ManifestSafetyError(
                f"manifest safety.clamp_bounds.{name} [{lo}, {hi}] does not overlap the "
                f"configured [{clo}, {chi}]"
            )
        out[name] = new
    return out


class UnboundedActionsError(ValueError):
    """Some action names have no bounds at all; the message names them."""


def resolve_bounds(
    names: list[str],
    clamp_bounds: dict[str, tuple[float, float]],
    fallback: dict[str, tuple[float, float]],
) -> dict[str, tuple[float, float]]:
    """Bounds for every action name: ``safety.clamp_bounds``, else ``features.bounds``.

    Raises :class:`UnboundedActionsError` naming every name that has neither: a head that
    cannot clamp a name cannot see it leave its range.
    """
    missing = [n for n in names if n not in clamp_bounds and n not in fallback]
    if missing:
        raise UnboundedActionsError(
            f"action names without bounds: {missing}; give each one bounds in "
            "safety.clamp_bounds or features.bounds"
        )
    return {n: tuple(clamp_bounds.get(n, fallback.get(n))) for n in names}  # type: ignore[misc]


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
    """Every threshold of the promotion rule (architecture §7; ``safety.rule`` says how each
    is used).

    Rates are shares of held-out steps; "margin" is how much worse than the baseline the
    candidate may be, judged on the upper confidence bound of a paired bootstrap over episodes.
    """

    min_eval_steps: int = Field(64, gt=0)
    min_eval_episodes: int = Field(3, gt=0, description="fewest held-out episodes to judge on")
    max_eval_out_of_bounds: float = Field(
        0.25,
        ge=0,
        le=0.5,
        description="largest share of the held-out episodes that may have been left out for "
        "recordings outside their bounds: beyond it, the rest is a biased remainder (a "
        "miscalibrated channel leaves only its mildest episodes) and cannot vouch for safety",
    )
    confidence: float = Field(0.95, ge=0.5, lt=1, description="one-sided confidence of bounds")
    resamples: int = Field(1000, ge=100, le=100_000, description="bootstrap resamples")
    min_improvement: float = Field(0.02, ge=0, description="relative error drop required")
    max_name_regression: float = Field(
        0.05, ge=0, description="relative error rise allowed on any one action name"
    )
    name_error_floor: float = Field(
        1e-3,
        gt=0,
        description="normalised error below which a name's rise is measured "
        "against this floor instead (a near-perfect baseline name is not a 1000x regression)",
    )
    name_reference: float = Field(
        1.0,
        ge=0,
        le=1,
        description="a name's rise is measured against at least this share of the baseline's "
        "mean error per name (a near-perfect neutral channel next to a recalibrated one is not "
        "failed on noise); 0: against its own error only",
    )
    clamp_rate_margin: float = Field(0.02, ge=0, le=1)
    warn_rate_margin: float = Field(0.05, ge=0, le=1)
    block_rate_margin: float = Field(0.02, ge=0, le=1)
    max_clamp_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="cap on the candidate's own share of clamped steps (overshoots of a "
        "demonstrated bound not counted), whatever the baseline's",
    )
    max_clamp_rate: float = Field(
        0.03, ge=0, le=1, description="cap on steps the candidate clamps and the baseline not"
    )
    max_warn_rate: float = Field(
        0.1, ge=0, le=1, description="cap on steps the candidate warns on and the baseline not"
    )
    max_block_rate: float = Field(
        0.02, ge=0, le=1, description="cap on steps the candidate blocks and the baseline not"
    )
    mean_risk_margin: float = Field(
        0.02, ge=0, le=1, description="rise allowed in the mean per-step risk"
    )
    min_slice_episodes: int = Field(
        3, gt=0, description="held-out episodes a slice needs before it is judged on its own"
    )
    max_slice_regression: float = Field(
        0.1, ge=0, description="relative error rise allowed on a slice with enough evidence"
    )
    max_shift_mean: float = Field(1.0, gt=0)
    max_shift_max: float = Field(4.0, gt=0)
