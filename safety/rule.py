"""The promotion rule: one pure function from shadow-evaluation metrics to a decision.

A candidate is promoted only when every check passes (architecture §7):

- ``eval_steps``: at least ``min_eval_steps`` held-out steps were scored (zero never passes);
- ``finite``: every number in the metrics is finite (NaN/Inf means something broke);
- ``improvement``: the candidate's normalised error beats the baseline's by ``min_improvement``
  (relative: (baseline - candidate) / baseline);
- ``block_vs_baseline``: the candidate blocks no more often than the baseline;
- ``block_cap``: the candidate's block rate is within ``max_block_rate``;
- ``shift_mean`` / ``shift_max``: the candidate moved no further from the baseline than allowed.

Every check gives a reason with its numbers, passed or not, so each decision can be logged whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from safety.config import PromotionConfig
from safety.metrics import EvalMetrics


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why: one reason per check, each with its numbers."""

    promote: bool
    reasons: list[str]
    checks: dict[str, bool] = field(default_factory=dict)
    numbers: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form for the log and the run record (non-finite numbers as strings)."""
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "checks": dict(self.checks),
            "numbers": {k: _jsonable(v) for k, v in self.numbers.items()},
        }


def decide(metrics: EvalMetrics | None, cfg: PromotionConfig) -> Decision:
    """Judge a candidate's shadow-evaluation ``metrics`` against every threshold in ``cfg``."""
    if metrics is None:
        return Decision(False, ["no evaluation metrics: nothing to judge, not promoted"])

    base, cand = metrics.baseline, metrics.candidate
    improvement = _relative_drop(base.mse, cand.mse)
    numbers: dict[str, float | int | None] = {
        "eval_steps": metrics.eval_steps,
        "eval_episodes": metrics.eval_episodes,
        "baseline_error": base.mse,
        "candidate_error": cand.mse,
        "improvement": improvement,
        "baseline_block_rate": base.block_rate,
        "candidate_block_rate": cand.block_rate,
        "shift_mean": metrics.shift_mean,
        "shift_max": metrics.shift_max,
    }
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, text: str) -> None:
        checks[name] = bool(ok)
        reasons.append(f"{'ok' if ok else 'FAIL'} {name}: {text}")

    check(
        "eval_steps",
        metrics.eval_steps >= cfg.min_eval_steps and metrics.eval_steps > 0,
        f"{metrics.eval_steps} held-out steps in {metrics.eval_episodes} episodes "
        f"(need >= {cfg.min_eval_steps})",
    )
    bad = _non_finite(metrics)
    check(
        "finite",
        not bad,
        "all metrics finite" if not bad else f"not finite: {', '.join(bad)}",
    )
    if improvement is None:
        check(
            "improvement",
            False,
            f"baseline error {base.mse:.4g} leaves no room to improve "
            f"(candidate {cand.mse:.4g}; need >= {cfg.min_improvement:.1%} better)",
        )
    else:
        check(
            "improvement",
            improvement >= cfg.min_improvement,
            f"candidate error {cand.mse:.4g} vs baseline {base.mse:.4g}: "
            f"{_signed_pct(improvement)} (need >= {cfg.min_improvement:.1%} better)",
        )
    check(
        "block_vs_baseline",
        cand.block_rate <= base.block_rate,
        f"candidate block rate {cand.block_rate:.2%} vs baseline {base.block_rate:.2%} "
        "(must not be higher)",
    )
    check(
        "block_cap",
        cand.block_rate <= cfg.max_block_rate,
        f"candidate block rate {cand.block_rate:.2%} (cap {cfg.max_block_rate:.2%})",
    )
    check(
        "shift_mean",
        metrics.shift_mean <= cfg.max_shift_mean,
        f"mean shift from baseline {metrics.shift_mean:.4g} (max {cfg.max_shift_mean:.4g})",
    )
    check(
        "shift_max",
        metrics.shift_max <= cfg.max_shift_max,
        f"largest shift from baseline {metrics.shift_max:.4g} (max {cfg.max_shift_max:.4g})",
    )
    for family_check in metrics.family_checks:
        check(family_check.name, family_check.ok, family_check.text)
    return Decision(all(checks.values()), reasons, checks, numbers)


def _relative_drop(baseline: float, candidate: float) -> float | None:
    """(baseline - candidate) / baseline, or None when the baseline is not a positive number."""
    if not (math.isfinite(baseline) and baseline > 0):
        return None
    return (baseline - candidate) / baseline


def _signed_pct(drop: float) -> str:
    if not math.isfinite(drop):
        return f"{drop} change"
    return f"{drop:.1%} better" if drop >= 0 else f"{-drop:.1%} worse"


def _non_finite(metrics: EvalMetrics) -> list[str]:
    """Dotted names of every float in ``metrics`` that is NaN or infinite."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{prefix}={value}")

    walk("", metrics.model_dump())
    return out


def _jsonable(value: float | int | None) -> float | int | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
