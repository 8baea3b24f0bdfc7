"""The promotion rule, table-driven on per-episode evidence: each check flips the decision on its
own, the decisive reason is named first, and tiny counts neither pass nor fail a candidate."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from safety.config import PromotionConfig
from safety.metrics import EpisodeEvidence, EvalMetrics
from safety.rule import decide, seed_for

CFG = PromotionConfig()
NAMES = ("steering", "throttle")


@dataclass
class Ep:
    """One held-out episode, written the short way: per-step errors and counts."""

    base: tuple[float, float] = (0.04, 0.04)  # mean normalised error per step, per name
    cand: tuple[float, float] = (0.01, 0.01)
    steps: int = 100
    slices: list[str] = field(default_factory=list)
    base_counts: dict[str, int] = field(default_factory=dict)  # clamp / warn / block
    cand_counts: dict[str, int] = field(default_factory=dict)
    worse: dict[str, int] = field(default_factory=dict)  # clamp / warn / block
    base_risk: float = 0.1  # mean risk per step
    cand_risk: float = 0.1
    nonfinite: int = 0

    def evidence(self, i: int) -> dict[str, Any]:
        def side(err: tuple[float, float], counts: dict[str, int], risk: float, nf: int):
            return {
                "sq_err": {n: e * self.steps for n, e in zip(NAMES, err, strict=True)},
                "clamp": counts.get("clamp", 0),
                "warn": counts.get("warn", 0),
                "block": counts.get("block", 0),
                "max_risk": min(1.0, 3 * risk),
                "risk_sum": risk * self.steps,
                "nonfinite": nf,
            }

        worse = {
            f"worse_{k}": self.worse.get(
                k, max(0, self.cand_counts.get(k, 0) - self.base_counts.get(k, 0))
            )
            for k in ("clamp", "warn", "block")
        }
        return {
            "episode_id": f"ep-{i:03d}",
            "steps": self.steps,
            "slices": self.slices,
            "baseline": side(self.base, self.base_counts, self.base_risk, 0),
            "candidate": side(self.cand, self.cand_counts, self.cand_risk, self.nonfinite),
            **worse,
        }


def metrics(eps: list[Ep], **changes: Any) -> EvalMetrics:
    """Evidence of ``eps`` with pooled numbers filled in; ``changes`` override top-level keys."""
    evidence = [EpisodeEvidence.model_validate(e.evidence(i)) for i, e in enumerate(eps)]
    steps = sum(e.steps for e in eps)

    def pooled(get) -> dict[str, Any]:
        mse = {n: sum(get(e).sq_err[n] for e in evidence) / max(steps, 1) for n in NAMES}
        return {
            "mse": sum(mse.values()) / 2,
            "mse_raw": sum(mse.values()) / 2,
            "mse_per_name": mse,
            "mse_norm_per_name": mse,
            "clamp_rate": sum(get(e).clamp for e in evidence) / max(steps, 1),
            "warn_rate": sum(get(e).warn for e in evidence) / max(steps, 1),
            "block_rate": sum(get(e).block for e in evidence) / max(steps, 1),
            "max_risk": max((get(e).max_risk for e in evidence), default=0.0),
        }

    raw: dict[str, Any] = {
        "eval_steps": steps,
        "eval_episodes": len(eps),
        "baseline_kind": "base",
        "baseline": pooled(lambda e: e.baseline),
        "candidate": pooled(lambda e: e.candidate),
        "shift_mean": 0.5,
        "shift_max": 2.0,
        "episodes": [e.model_dump() for e in evidence],
    }
    raw.update(changes)
    return EvalMetrics.model_validate(raw)


def good(n: int = 8, **kw: Any) -> list[Ep]:
    return [Ep(**kw) for _ in range(n)]


def with_first(eps: list[Ep], k: int, **kw: Any) -> list[Ep]:
    """``eps`` with the first ``k`` episodes changed."""
    for e in eps[:k]:
        for key, value in kw.items():
            setattr(e, key, value)
    return eps


def noisy(n: int, gains: list[float]) -> list[Ep]:
    """Episodes whose candidate error is ``base * (1 - gain)``, gains cycling."""
    return [
        Ep(cand=(0.04 * (1 - gains[i % len(gains)]),) * 2)  # type: ignore[arg-type]
        for i in range(n)
    ]


CASES: list[tuple[str, Any, str | None]] = [
    # (case, evidence, decisive failing check or None when promoted)
    ("clear_improvement", lambda: metrics(good()), None),
    # 3 blocked steps of 720 vs 0: inside the margin, the improvement decides
    (
        "three_blocks_of_720_one_episode",
        lambda: metrics(with_first(good(6, steps=120), 1, cand_counts={"block": 3})),
        None,
    ),
    (
        "three_blocks_of_720_spread",
        lambda: metrics(with_first(good(6, steps=120), 3, cand_counts={"block": 1})),
        None,
    ),
    (
        "three_clamps_of_720_and_baseline_none",
        lambda: metrics(with_first(good(6, steps=120), 1, cand_counts={"clamp": 3, "warn": 3})),
        None,
    ),
    # a x1.6 throttle channel: ~11 % of steps clamped against 0.2 %
    (
        "throttle_x1.6_clamps",
        lambda: metrics(
            [Ep(cand_counts={"clamp": 11, "warn": 11}, base_counts={"clamp": 0}) for _ in range(8)]
        ),
        "clamp_rate",
    ),
    (
        "warn_rise",
        lambda: metrics(good(cand_counts={"warn": 15})),
        "warn_rate",
    ),
    (
        "block_rise",
        lambda: metrics(good(cand_counts={"block": 6})),
        "block_rate",
    ),
    # people close: the baseline blocks 30 % and so does the candidate, on the same steps
    (
        "people_close_same_steps",
        lambda: metrics(
            good(base_counts={"block": 30, "warn": 10}, cand_counts={"block": 30, "warn": 10})
        ),
        None,
    ),
    # same rate as the baseline, but on other steps: the cap relative to the baseline bites
    (
        "blocks_moved_to_other_steps",
        lambda: metrics(
            good(base_counts={"block": 10}, cand_counts={"block": 10}, worse={"block": 10})
        ),
        "block_cap",
    ),
    (
        "clamps_moved_to_other_steps",
        lambda: metrics(
            good(base_counts={"clamp": 8}, cand_counts={"clamp": 8}, worse={"clamp": 8})
        ),
        "clamp_cap",
    ),
    # the release clamps 45 % of steps (a tightened bound), the candidate 10 %: better than
    # the release, but a policy leaving its bounds on one step in ten is not promoted
    (
        "clamps_less_than_the_release_but_often",
        lambda: metrics(good(base_counts={"clamp": 45}, cand_counts={"clamp": 10}, worse={})),
        "clamp_share",
    ),
    (
        "clamps_rarely_and_less_than_the_release",
        lambda: metrics(good(base_counts={"clamp": 45}, cand_counts={"clamp": 2}, worse={})),
        None,
    ),
    ("risk_rise", lambda: metrics(good(cand_risk=0.15)), "mean_risk"),
    (
        "risk_rise_in_one_episode",
        lambda: metrics(with_first(good(), 1, cand_risk=0.2)),
        "mean_risk",
    ),
    ("risk_rise_within_margin", lambda: metrics(good(cand_risk=0.11)), None),
    # steering error up 37 % while throttle improves a lot: the mean would hide it
    (
        "steering_regresses_37pct",
        lambda: metrics(good(cand=(0.04 * 1.37, 0.001))),
        "name:steering",
    ),
    ("throttle_regresses", lambda: metrics(good(cand=(0.001, 0.06))), "name:throttle"),
    ("name_regression_within_margin", lambda: metrics(good(cand=(0.0405, 0.001))), None),
    # near-perfect baseline name: measured against the error floor, not a 1000x rise
    (
        "tiny_baseline_name_error",
        lambda: metrics(good(base=(1e-7, 0.04), cand=(2e-7, 0.01))),
        None,
    ),
    (
        "environment_slice_regresses",
        lambda: metrics(
            [Ep(slices=["environment_id=a"]) for _ in range(4)]
            + [Ep(slices=["environment_id=b"], cand=(0.052, 0.052)) for _ in range(4)]
        ),
        "slice:environment_id=b",
    ),
    (
        "small_slice_not_judged",
        lambda: metrics(
            [Ep(slices=["environment_id=a"]) for _ in range(6)]
            + [Ep(slices=["environment_id=b"], cand=(0.05, 0.05)) for _ in range(2)]
        ),
        None,
    ),
    (
        "task_slice_regresses",
        lambda: metrics(
            [Ep(slices=["task=park"], cand=(0.06, 0.06)) for _ in range(3)]
            + [Ep(slices=["task=follow"], cand=(0.001, 0.001)) for _ in range(6)]
        ),
        "slice:task=park",
    ),
    # a neutral channel the baseline predicts near-perfectly, next to a recalibrated one: its
    # rise is measured against the policy's mean error per name, so noise does not fail it...
    (
        "neutral_channel_noise_next_to_a_recalibrated_one",
        lambda: metrics(good(base=(0.4, 0.007), cand=(0.005, 0.009))),
        None,
    ),
    # ... and a real regression of it still does (0.007 -> 0.05: +21 % of the mean error)
    (
        "neutral_channel_regresses_next_to_a_recalibrated_one",
        lambda: metrics(good(base=(0.4, 0.007), cand=(0.005, 0.05))),
        "name:throttle",
    ),
    # half the batch's held-out episodes were left out for out-of-bound recordings: what is
    # left is the mildest part of a miscalibrated batch, it cannot vouch for the candidate
    (
        "held_out_set_mostly_out_of_bounds",
        lambda: metrics(good(), eval_out_of_bounds=8),
        "evidence",
    ),
    (
        "held_out_set_a_third_out_of_bounds",
        lambda: metrics(good(), eval_out_of_bounds=4),
        "evidence",
    ),
    (
        "one_held_out_episode_of_nine_out_of_bounds",
        lambda: metrics(good(), eval_out_of_bounds=1),
        None,
    ),
    ("two_episodes", lambda: metrics(good(2)), "evidence"),
    ("too_few_steps", lambda: metrics(good(4, steps=10)), "evidence"),
    ("no_episode_evidence", lambda: metrics(good(), episodes=[]), "evidence"),
    ("evidence_count_mismatch", lambda: metrics(good(), eval_episodes=9), "evidence"),
    ("nan_predictions", lambda: metrics(with_first(good(), 1, nonfinite=2)), "finite"),
    ("nan_metric", lambda: metrics(good(), shift_mean=math.nan), "finite"),
    ("inf_metric", lambda: metrics(good(), shift_max=math.inf), "finite"),
    ("improvement_too_small", lambda: metrics(good(cand=(0.0396, 0.0396))), "improvement"),
    ("no_improvement", lambda: metrics(good(cand=(0.04, 0.04))), "improvement"),
    # +6 % on average, but half the episodes worse: not better at 95 % (per name first)
    ("noisy_improvement", lambda: metrics(noisy(8, [0.5, -0.38])), "name:steering"),
    ("consistent_small_improvement", lambda: metrics(noisy(8, [0.06, 0.07])), None),
    ("zero_baseline_error", lambda: metrics(good(base=(0.0, 0.0), cand=(0.0, 0.0))), "improvement"),
    ("shift_mean", lambda: metrics(good(), shift_mean=1.5), "shift_mean"),
    ("shift_max", lambda: metrics(good(), shift_max=5.0), "shift_max"),
    # several failures: the safety one is decisive, the error one follows
    (
        "unsafe_and_worse",
        lambda: metrics(good(cand=(0.05, 0.05), cand_counts={"clamp": 20, "warn": 20})),
        "clamp_rate",
    ),
]


@pytest.mark.parametrize(("case", "build", "decisive"), CASES, ids=[c[0] for c in CASES])
def test_rule_table(case: str, build, decisive: str | None) -> None:
    d = decide(build(), CFG)
    if decisive is None:
        assert d.promote, d.reasons
        assert d.decisive is None and all(d.checks.values())
        assert all(r.startswith("ok ") for r in d.reasons)
    else:
        assert not d.promote, d.reasons
        assert d.decisive == decisive, d.reasons
        assert d.reasons[0].startswith(f"FAIL {decisive}:"), d.reasons
    json.dumps(d.to_dict())  # always loggable


def test_every_reason_has_its_numbers_and_bound() -> None:
    d = decide(metrics(good()), CFG)
    by_name = {r.split(" ", 1)[1].split(": ", 1)[0]: r for r in d.reasons}
    assert "95% lower bound" in by_name["improvement"]
    for check in ("clamp_rate", "warn_rate", "block_rate", "block_cap", "mean_risk"):
        assert "95% upper bound" in by_name[check], by_name[check]
    assert "95% upper bound" in by_name["name:steering"]
    assert d.numbers["improvement.value"] == pytest.approx(0.75)
    assert d.numbers["improvement.bound"] == pytest.approx(0.75)


def test_decision_is_pure_and_independent_of_episode_order() -> None:
    eps = noisy(9, [0.3, -0.1, 0.2])
    first = decide(metrics(eps), CFG)
    again = decide(metrics(eps), CFG)
    assert first == again
    shuffled = list(eps)
    random.Random(3).shuffle(shuffled)
    # The same episodes under the same ids in another order: the seed is their sorted ids.
    ids = [f"ep-{i:03d}" for i in range(9)]
    assert seed_for(ids) == seed_for(reversed(ids))


def test_confidence_comes_from_the_config() -> None:
    borderline = metrics(noisy(8, [0.3, -0.05]))
    assert decide(borderline, PromotionConfig(confidence=0.6)).promote
    strict = decide(borderline, PromotionConfig(confidence=0.99))
    assert not strict.promote and strict.decisive == "improvement"
    assert "99% lower bound" in strict.reasons[0]


@pytest.mark.parametrize(
    ("cfg", "decisive"),
    [
        (PromotionConfig(min_eval_episodes=9), "evidence"),
        (PromotionConfig(min_eval_steps=801), "evidence"),
        (PromotionConfig(min_improvement=0.8), "improvement"),
        (PromotionConfig(max_shift_mean=0.4), "shift_mean"),
        (PromotionConfig(block_rate_margin=0.0, max_block_rate=0.0), "block_rate"),
        (PromotionConfig(max_eval_out_of_bounds=0.0), "evidence"),
    ],
)
def test_thresholds_come_from_the_config(cfg: PromotionConfig, decisive: str) -> None:
    m = metrics(with_first(good(), 2, cand_counts={"block": 1}), eval_out_of_bounds=1)
    assert decide(m, CFG).promote
    d = decide(m, cfg)
    assert not d.promote and d.decisive == decisive, d.reasons


def test_name_reference_comes_from_the_config() -> None:
    """With ``name_reference: 0`` a name is measured against its own baseline error only."""
    m = metrics(good(base=(0.4, 0.007), cand=(0.005, 0.009)))
    assert decide(m, CFG).promote
    own = decide(m, PromotionConfig(name_reference=0.0))
    assert not own.promote and own.decisive == "name:throttle", own.reasons


def test_reasons_say_what_evidence_was_left_out() -> None:
    """Out-of-bound held-out episodes and demonstrated-bound overshoots are named, with counts."""
    eps = with_first(good(), 2, cand_counts={"clamp": 1})
    evidence = metrics(eps, eval_out_of_bounds=1)
    for e in evidence.episodes:
        e.candidate.clamp_at_demo = 6
    d = decide(evidence, CFG)
    by_name = {r.split(" ", 1)[1].split(": ", 1)[0]: r for r in d.reasons}
    assert "1 more left out for recordings outside their bounds (11.11%" in by_name["evidence"]
    assert "not counted: past a bound the demonstration commanded on 6.00%" in by_name["clamp_rate"]


def test_no_metrics_rejects() -> None:
    d = decide(None, CFG)
    assert not d.promote and d.decisive == "evidence"
    assert "no evaluation metrics" in d.reasons[0]


# --- What evaluation counts as leaving a bound (trainer_core.evaluate.assess_policy) ---------


def _scored(pred: list[list[float]], recorded: list[list[float]], outside=None, **safety: Any):
    import numpy as np

    from safety.config import SafetyConfig
    from safety.head import SafetyHead
    from trainer_core.evaluate import assess_policy
    from trainer_core.features import EpisodeArrays

    n = len(pred)
    data = EpisodeArrays(
        obs=np.zeros((n, 1), np.float32),
        act=np.array(recorded, np.float32),
        proximity=np.full(n, np.nan, np.float32),
        episode_start=np.eye(1, n, dtype=bool)[0],
        act_outside=None if outside is None else np.array(outside, bool),
    )
    head = SafetyHead(SafetyConfig(**safety))
    return assess_policy(np.array(pred, float), data, list(NAMES), np.ones(2), head)


@pytest.mark.parametrize(
    ("pred", "recorded", "outside", "clamped", "at_demo"),
    [
        # the demonstrator held steering at +1; the policy overshoots: executed as the bound
        ([1.03, 0.0], [1.0, 0.0], None, False, True),
        ([1.5, 0.0], [0.95, 0.0], None, False, True),  # within 0.05 x width (0.1) of the bound
        # the demonstrator was not at that bound: a real clamp
        ([1.03, 0.0], [0.8, 0.0], None, True, False),
        ([-1.03, 0.0], [1.0, 0.0], None, True, False),  # the other bound
        # the recording itself left the bound and was clipped at ingest: counted
        ([0.0, 1.02], [0.0, 1.0], [False, True], True, False),
        # ...and so is riding that bound, or coming within the tolerance of it (x1.6 clipped)
        ([0.0, 1.0], [0.0, 1.0], [False, True], True, False),
        ([0.0, 0.93], [0.0, 1.0], [False, True], True, False),
        ([0.0, -0.95], [0.0, -1.0], [False, True], True, False),
        # well inside a clipped bound: not counted
        ([0.0, 0.5], [0.0, 1.0], [False, True], False, False),
        # one name at its demonstrated bound, the other past an undemonstrated one
        ([1.02, 1.02], [1.0, 0.3], None, True, False),
        ([float("nan"), 0.0], [1.0, 0.0], None, True, False),  # NaN is never benign
    ],
)
def test_overshoot_of_a_demonstrated_bound_is_not_a_clamp(
    pred: list[float], recorded: list[float], outside, clamped: bool, at_demo: bool
) -> None:
    s = _scored([pred], [recorded], None if outside is None else [outside])
    assert bool(s.assessment.clamped[0]) is clamped
    assert bool(s.at_demo_bound[0]) is at_demo
    # the executed action (and so its error) is the clamped prediction either way
    if all(math.isfinite(v) for v in pred):
        executed = [max(-1.0, min(1.0, v)) for v in pred]
        assert s.assessment.clamped_actions[0] == pytest.approx(executed)
    if at_demo:
        assert s.assessment.label[0] == 0  # no clamp term: no warn


def test_demo_bound_tolerance_comes_from_the_config() -> None:
    assert not _scored([[1.03, 0.0]], [[0.95, 0.0]], demo_bound_tolerance=0.0).at_demo_bound[0]
    assert _scored([[1.03, 0.0]], [[1.0, 0.0]], demo_bound_tolerance=0.0).at_demo_bound[0]
    with pytest.raises(ValueError):
        _scored([[1.0, 0.0]], [[1.0, 0.0]], demo_bound_tolerance=0.2)  # capped at 0.1
