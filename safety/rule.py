"""The promotion rule: one pure function from shadow-evaluation evidence to a decision.

The unit of evidence is the held-out EPISODE (steps inside one episode are not independent).
Every statistic below is a ratio of sums over episodes; its confidence bound comes from a paired
bootstrap: ``resamples`` times, draw the held-out episodes with replacement and recompute the
statistic for baseline and candidate on the SAME draw. The one-sided bound at ``confidence``
is the matching quantile. The generator is seeded from the sorted episode ids, so the same
evidence always gives the same decision (pure and reproducible).

A candidate is promoted only when every check passes; in the order they are named when failing
(the first failing one is the decisive reason):

- ``evidence``: at least ``min_eval_episodes`` held-out episodes and ``min_eval_steps`` steps,
  with per-episode evidence present, and at most ``max_eval_out_of_bounds`` of the held-out
  set left out for recordings outside their bounds (what is left of a miscalibrated batch is
  its mildest episodes: they cannot vouch for the candidate's safety);
- ``finite``: no prediction held NaN/Inf, every number is finite;
- ``clamp_rate`` / ``warn_rate`` / ``block_rate``: the candidate's share of steps minus the
  baseline's, upper bound <= the margin (tiny differences on tiny counts stay inside it). A
  prediction past a bound that the demonstration on that step commanded (within
  ``safety.demo_bound_tolerance`` of it, and not clipped there at ingest) is evidence of
  nothing: the robot executes what the demonstrator did. Evaluation scores it as the bound
  (no clamp, no warn), and the clamp reason reports how many such steps were left out;
- ``clamp_share``: the candidate's own share of clamped steps, upper bound <=
  ``max_clamp_share`` whatever the baseline does (a release that leaves its bounds more often
  does not make a candidate that leaves them on one step in ten safe);
- ``clamp_cap`` / ``warn_cap`` / ``block_cap``: the share of steps where the candidate is worse
  than the baseline ON THAT STEP, upper bound <= the absolute cap (data where a person comes
  close raises both policies' risk and vetoes nobody);
- ``mean_risk``: the rise of the mean per-step risk, upper bound <= ``mean_risk_margin`` (the
  largest single-step risk is reported with it, but one step is a tiny count: how often the
  risk crosses the warn and block thresholds is what the rate checks judge);
- ``name:<action>``: every action name's error rise, upper bound <= ``max_name_regression``,
  relative to the larger of its own baseline error and ``name_reference`` x the baseline's
  mean error per name (floored at ``name_error_floor`` per step);
- ``slice:<label>``: on each slice (environment, task) holding at least ``min_slice_episodes``
  held-out episodes, and not all of them, the relative error rise, upper bound <=
  ``max_slice_regression``;
- ``improvement``: the relative error drop, LOWER bound >= ``min_improvement``;
- ``shift_mean`` / ``shift_max``: the candidate moved no further from the baseline than allowed.

Every check gives a reason with its point estimate and its bound, passed or not.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safety.config import PromotionConfig
from safety.metrics import EpisodeEvidence, EvalMetrics

Stat = Callable[[np.ndarray], np.ndarray]  # weights (R, E) -> one value per row


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why: one reason per check (failing ones first), each with its
    numbers; ``decisive`` is the first failing check's name (None when promoted)."""

    promote: bool
    reasons: list[str]
    checks: dict[str, bool] = field(default_factory=dict)
    numbers: dict[str, float | int | None] = field(default_factory=dict)
    decisive: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form for the log and the run record (non-finite numbers as strings)."""
        return {
            "promote": self.promote,
            "decisive": self.decisive,
            "reasons": list(self.reasons),
            "checks": dict(self.checks),
            "numbers": {k: _jsonable(v) for k, v in self.numbers.items()},
        }


class _Judge:
    """Collects checks; reasons come out failing-first in the order checks were made."""

    def __init__(self) -> None:
        self.checks: dict[str, bool] = {}
        self.texts: list[tuple[str, bool, str]] = []
        self.numbers: dict[str, float | int | None] = {}

    def check(self, name: str, ok: bool, text: str, **numbers: float | int | None) -> None:
        self.checks[name] = bool(ok)
        self.texts.append((name, bool(ok), text))
        self.numbers.update({f"{name}.{k}": v for k, v in numbers.items()})

    def decision(self) -> Decision:
        failing = [(n, t) for n, ok, t in self.texts if not ok]
        passing = [(n, t) for n, ok, t in self.texts if ok]
        reasons = [f"FAIL {n}: {t}" for n, t in failing] + [f"ok {n}: {t}" for n, t in passing]
        promote = bool(self.checks) and not failing
        return Decision(
            promote, reasons, self.checks, self.numbers, failing[0][0] if failing else None
        )


def decide(metrics: EvalMetrics | None, cfg: PromotionConfig) -> Decision:
    """Judge a candidate's shadow-evaluation ``metrics`` against every threshold in ``cfg``."""
    if metrics is None:
        return Decision(
            False, ["FAIL evidence: no evaluation metrics, nothing to judge"], {}, {}, "evidence"
        )
    judge = _Judge()
    eps = metrics.episodes
    n_ep, n_steps = len(eps), sum(e.steps for e in eps)
    oob = metrics.eval_out_of_bounds
    oob_share = oob / max(oob + metrics.eval_episodes, 1)
    enough = (
        n_ep >= cfg.min_eval_episodes
        and n_steps >= cfg.min_eval_steps
        and n_steps == metrics.eval_steps
        and n_ep == metrics.eval_episodes
        and oob_share <= cfg.max_eval_out_of_bounds
    )
    judge.check(
        "evidence",
        enough,
        f"{n_ep} held-out episodes with evidence, {n_steps} steps (of {metrics.eval_episodes} "
        f"/ {metrics.eval_steps} evaluated; need >= {cfg.min_eval_episodes} episodes and "
        f">= {cfg.min_eval_steps} steps)"
        + (
            f"; {oob} more left out for recordings outside their bounds ({_pct(oob_share)} of "
            f"the held-out set; at most {_pct(cfg.max_eval_out_of_bounds)})"
            if oob
            else ""
        ),
        episodes=n_ep,
        steps=n_steps,
        out_of_bounds=oob,
    )
    bad = _non_finite(metrics)
    nonfinite = sum(e.candidate.nonfinite for e in eps)
    judge.check(
        "finite",
        not bad and nonfinite == 0,
        f"{nonfinite} candidate steps predicted NaN/Inf"
        + (f"; not finite: {', '.join(bad[:4])}" if bad else "; all metrics finite"),
        nonfinite_steps=nonfinite,
    )
    if n_ep and not bad:
        _judge_evidence(judge, eps, cfg)
    judge.check(
        "shift_mean",
        metrics.shift_mean <= cfg.max_shift_mean,
        f"mean shift from baseline {metrics.shift_mean:.4g} (max {cfg.max_shift_mean:.4g})",
        value=metrics.shift_mean,
    )
    judge.check(
        "shift_max",
        metrics.shift_max <= cfg.max_shift_max,
        f"largest shift from baseline {metrics.shift_max:.4g} (max {cfg.max_shift_max:.4g})",
        value=metrics.shift_max,
    )
    for family_check in metrics.family_checks:
        judge.check(family_check.name, family_check.ok, family_check.text)
    return judge.decision()


def _judge_evidence(judge: _Judge, eps: list[EpisodeEvidence], cfg: PromotionConfig) -> None:
    """Every bootstrap check, on the episodes' evidence."""
    boot = Bootstrap(eps, cfg.resamples, cfg.confidence)
    steps = boot.column(lambda e: e.steps)
    conf = _conf(cfg.confidence)
    for rate, margin, cap in (
        ("clamp", cfg.clamp_rate_margin, cfg.max_clamp_rate),
        ("warn", cfg.warn_rate_margin, cfg.max_warn_rate),
        ("block", cfg.block_rate_margin, cfg.max_block_rate),
    ):
        base = boot.column(lambda e, r=rate: getattr(e.baseline, r))
        cand = boot.column(lambda e, r=rate: getattr(e.candidate, r))
        worse = boot.column(lambda e, r=rate: getattr(e, f"worse_{r}"))
        point, upper = boot.upper(lambda w, b=base, c=cand: (w @ c - w @ b) / (w @ steps))
        judge.check(
            f"{rate}_rate",
            upper <= margin,
            f"candidate {rate}s {_pct(boot.point(cand) / boot.point(steps))} of steps vs "
            f"baseline {_pct(boot.point(base) / boot.point(steps))}: {_pts(point)} "
            f"({conf} upper bound {_pts(upper)}; margin {_pts(margin)})"
            + (_at_demo(eps, boot.point(steps)) if rate == "clamp" else ""),
            value=point,
            bound=upper,
        )
        point, upper = boot.upper(lambda w, x=worse: (w @ x) / (w @ steps))
        judge.check(
            f"{rate}_cap",
            upper <= cap,
            f"candidate {rate}s where the baseline did not on {_pct(point)} of steps "
            f"({conf} upper bound {_pct(upper)}; cap {_pct(cap)})",
            value=point,
            bound=upper,
        )
        if rate == "clamp":  # how often its commands leave the envelope, whatever the baseline
            point, upper = boot.upper(lambda w, c=cand: (w @ c) / (w @ steps))
            judge.check(
                "clamp_share",
                upper <= cfg.max_clamp_share,
                f"candidate clamps {_pct(point)} of steps ({conf} upper bound {_pct(upper)}; "
                f"at most {_pct(cfg.max_clamp_share)})",
                value=point,
                bound=upper,
            )
    rise = boot.column(lambda e: e.candidate.risk_sum - e.baseline.risk_sum)
    point, upper = boot.upper(lambda w: (w @ rise) / (w @ steps))
    top = [max(getattr(e, side).max_risk for e in eps) for side in ("baseline", "candidate")]
    judge.check(
        "mean_risk",
        upper <= cfg.mean_risk_margin,
        f"mean risk per step {point:+.4f} vs baseline ({conf} upper bound {upper:+.4f}; "
        f"margin {cfg.mean_risk_margin:+.4f}); largest risk {top[1]:.3f} vs baseline {top[0]:.3f}",
        value=point,
        bound=upper,
        candidate_max_risk=top[1],
        baseline_max_risk=top[0],
    )
    names = sorted(eps[0].baseline.sq_err)
    total = boot.column(lambda e: sum(e.baseline.sq_err.values()) / max(len(e.baseline.sq_err), 1))
    for name in names:
        base = boot.column(lambda e, n=name: e.baseline.sq_err.get(n, math.inf))
        cand = boot.column(lambda e, n=name: e.candidate.sq_err.get(n, math.inf))
        point, upper = boot.upper(
            lambda w, b=base, c=cand: (w @ c - w @ b) / _name_scale(w, b, total, steps, cfg)
        )
        judge.check(
            f"name:{name}",
            upper <= cfg.max_name_regression,
            f"{name} error {_rel(point)} vs baseline ({conf} upper bound {_rel(upper)}; "
            f"allowed {_rel(cfg.max_name_regression)})",
            value=point,
            bound=upper,
        )
    _judge_slices(judge, eps, cfg)
    base = boot.column(lambda e: sum(e.baseline.sq_err.values()))
    cand = boot.column(lambda e: sum(e.candidate.sq_err.values()))
    point, lower = boot.lower(lambda w: _drop(w @ base, w @ cand))
    judge.check(
        "improvement",
        lower >= cfg.min_improvement,
        f"candidate error {boot.point(cand) / boot.point(steps) / len(names):.4g} vs baseline "
        f"{boot.point(base) / boot.point(steps) / len(names):.4g}: {_better(point)} "
        f"({conf} lower bound {_better(lower)}; need >= {cfg.min_improvement:.1%} better)",
        value=point,
        bound=lower,
    )


def _at_demo(eps: list[EpisodeEvidence], steps: float) -> str:
    """The overshoots the clamp rate leaves out, in words (empty when there are none)."""
    sides = [sum(getattr(e, s).clamp_at_demo for e in eps) for s in ("baseline", "candidate")]
    if not any(sides):
        return ""
    return (
        f"; not counted: past a bound the demonstration commanded on "
        f"{_pct(sides[1] / steps)} of steps (baseline {_pct(sides[0] / steps)})"
    )


def _name_scale(
    w: np.ndarray, base: np.ndarray, mean_base: np.ndarray, steps: np.ndarray, cfg: PromotionConfig
) -> np.ndarray:
    """What a name's error rise is measured against: its own baseline error, but at least
    ``name_reference`` x the baseline's mean error per name and ``name_error_floor`` per step.
    A channel the baseline already predicts far better than the others (a neutral channel
    next to a recalibrated one) is not failed for a rise that is noise against the policy's
    own error level; where the names' errors are alike this is the name's own error."""
    return np.maximum(
        w @ base,
        np.maximum(cfg.name_reference * (w @ mean_base), cfg.name_error_floor * (w @ steps)),
    )


def _judge_slices(judge: _Judge, eps: list[EpisodeEvidence], cfg: PromotionConfig) -> None:
    """Per slice with enough (but not all) held-out episodes: no error regression."""
    labels = sorted({s for e in eps for s in e.slices})
    for label in labels:
        members = [e for e in eps if label in e.slices]
        if len(members) < cfg.min_slice_episodes or len(members) == len(eps):
            continue
        boot = Bootstrap(members, cfg.resamples, cfg.confidence)
        base = boot.column(lambda e: sum(e.baseline.sq_err.values()))
        cand = boot.column(lambda e: sum(e.candidate.sq_err.values()))
        point, upper = boot.upper(lambda w, b=base, c=cand: -_drop(w @ b, w @ c))
        judge.check(
            f"slice:{label}",
            upper <= cfg.max_slice_regression,
            f"error on {len(members)} episodes of {label} {_rel(point)} vs baseline "
            f"({_conf(cfg.confidence)} upper bound {_rel(upper)}; allowed "
            f"{_rel(cfg.max_slice_regression)})",
            value=point,
            bound=upper,
        )


class Bootstrap:
    """A paired bootstrap over episodes: fixed resampling weights shared by every statistic."""

    def __init__(self, eps: list[EpisodeEvidence], resamples: int, confidence: float) -> None:
        self.eps = eps
        self.confidence = confidence
        n = len(eps)
        rng = np.random.default_rng(seed_for(e.episode_id for e in eps))
        # (R, E) counts: how often each episode is drawn in each resample
        self.weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        self.ones = np.ones(n)

    def column(self, get: Callable[[EpisodeEvidence], float]) -> np.ndarray:
        """One number per episode, as a vector."""
        return np.array([float(get(e)) for e in self.eps], dtype=np.float64)

    def point(self, column: np.ndarray) -> float:
        """The column's sum over the evidence as it is (no resampling)."""
        return float(column.sum())

    def _values(self, stat: Stat) -> tuple[float, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            point = float(stat(self.ones))
            values = np.nan_to_num(stat(self.weights), nan=np.inf)
        return point, values

    def upper(self, stat: Stat) -> tuple[float, float]:
        """(point estimate, one-sided upper bound at the confidence)."""
        point, values = self._values(stat)
        return point, float(np.quantile(values, self.confidence, method="higher"))

    def lower(self, stat: Stat) -> tuple[float, float]:
        """(point estimate, one-sided lower bound at the confidence)."""
        point, values = self._values(stat)
        values = np.where(np.isposinf(values), -np.inf, values)  # undefined counts against
        return point, float(np.quantile(values, 1.0 - self.confidence, method="lower"))


def seed_for(episode_ids: Any) -> int:
    """A bootstrap seed derived from the evidence itself (its sorted episode ids)."""
    digest = hashlib.sha256("\n".join(sorted(episode_ids)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _drop(base: np.ndarray | float, cand: np.ndarray | float) -> np.ndarray:
    """Relative error drop (base - cand) / base; -inf where the baseline error is 0."""
    base, cand = np.asarray(base, np.float64), np.asarray(cand, np.float64)
    return np.where(base > 0, (base - cand) / np.where(base > 0, base, 1.0), -np.inf)


def _conf(confidence: float) -> str:
    """0.95 -> "95%", 0.999 -> "99.9%"."""
    return f"{confidence * 100:.3g}%"


def _pct(v: float) -> str:
    return f"{v:.2%}" if math.isfinite(v) else str(v)


def _pts(v: float) -> str:
    """A difference of shares, in percentage points."""
    return f"{v * 100:+.2f} pts" if math.isfinite(v) else str(v)


def _rel(v: float) -> str:
    return f"{v:+.1%}" if math.isfinite(v) else str(v)


def _better(drop: float) -> str:
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
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{prefix}={value}")

    walk("", metrics.model_dump())
    return out


def _jsonable(value: float | int | None) -> float | int | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
