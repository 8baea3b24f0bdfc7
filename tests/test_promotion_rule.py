"""The promotion rule, table-driven: each threshold flips the decision on its own."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from safety.config import PromotionConfig
from safety.metrics import EvalMetrics
from safety.rule import decide

CFG = PromotionConfig(
    min_eval_steps=64,
    min_improvement=0.02,
    max_block_rate=0.02,
    max_shift_mean=1.0,
    max_shift_max=4.0,
)


def scores(mse: float, block_rate: float = 0.0) -> dict[str, Any]:
    return {
        "mse": mse,
        "mse_raw": mse * 2,
        "mse_per_name": {"steering": mse * 2, "throttle": mse * 2},
        "mse_norm_per_name": {"steering": mse, "throttle": mse},
        "clamp_rate": 0.0,
        "warn_rate": 0.0,
        "block_rate": block_rate,
        "max_risk": 0.1,
    }


def metrics(**changes: Any) -> EvalMetrics:
    """A passing candidate (error 0.0123 vs 0.0456), with dotted-key changes applied."""
    raw: dict[str, Any] = {
        "eval_steps": 200,
        "eval_episodes": 4,
        "baseline_kind": "base",
        "baseline": scores(0.0456, 0.01),
        "candidate": scores(0.0123, 0.01),
        "shift_mean": 0.5,
        "shift_max": 2.0,
    }
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return EvalMetrics.model_validate(raw)


def test_the_passing_candidate_passes_with_reasons() -> None:
    d = decide(metrics(), CFG)
    assert d.promote, d.reasons
    assert all(d.checks.values())
    assert len(d.reasons) == len(d.checks) == 7
    assert any(
        "candidate error 0.0123 vs baseline 0.0456: 73.0% better (need >= 2.0% better)" in r
        for r in d.reasons
    ), d.reasons
    json.dumps(d.to_dict())  # the whole decision is loggable


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        # enough steps: exactly at the minimum passes, one below fails, zero fails
        ({"eval_steps": 64}, None),
        ({"eval_steps": 63}, "eval_steps"),
        ({"eval_steps": 0}, "eval_steps"),
        # improvement: 2% exactly passes, just under fails, worse fails
        ({"baseline__mse": 0.05, "candidate__mse": 0.049}, None),
        ({"baseline__mse": 0.05, "candidate__mse": 0.04901}, "improvement"),
        ({"baseline__mse": 0.05, "candidate__mse": 0.06}, "improvement"),
        ({"baseline__mse": 0.0, "candidate__mse": 0.0}, "improvement"),
        # block rate vs baseline (both under the cap)
        ({"baseline__block_rate": 0.0, "candidate__block_rate": 0.005}, "block_vs_baseline"),
        ({"baseline__block_rate": 0.005, "candidate__block_rate": 0.005}, None),
        # block rate cap (baseline just as bad: only the cap speaks)
        ({"baseline__block_rate": 0.5, "candidate__block_rate": 0.03}, "block_cap"),
        ({"baseline__block_rate": 0.5, "candidate__block_rate": 0.02}, None),
        # shifts
        ({"shift_mean": 1.0}, None),
        ({"shift_mean": 1.01}, "shift_mean"),
        ({"shift_max": 4.0}, None),
        ({"shift_max": 4.5}, "shift_max"),
    ],
)
def test_each_threshold_flips_the_decision(changes: dict[str, Any], failing: str | None) -> None:
    d = decide(metrics(**changes), CFG)
    if failing is None:
        assert d.promote, d.reasons
    else:
        assert not d.promote
        assert [k for k, ok in d.checks.items() if not ok] == [failing], d.reasons
        assert any(r.startswith(f"FAIL {failing}:") for r in d.reasons)


@pytest.mark.parametrize(
    "changes",
    [
        {"candidate__mse": math.nan},
        {"candidate__mse": -math.inf},
        {"baseline__mse": math.inf},
        {"candidate__max_risk": math.nan},
        {"candidate__mse_per_name": {"steering": math.nan}},
        {"shift_max": math.nan},
        {"shift_mean": math.inf},
        {"candidate__block_rate": math.nan},
    ],
)
def test_non_finite_numbers_reject(changes: dict[str, Any]) -> None:
    d = decide(metrics(**changes), CFG)
    assert not d.promote
    assert d.checks["finite"] is False
    assert any("not finite" in r for r in d.reasons)
    json.dumps(d.to_dict(), allow_nan=False)


def test_no_metrics_rejects() -> None:
    d = decide(None, CFG)
    assert not d.promote
    assert "no evaluation metrics" in d.reasons[0]


def test_thresholds_come_from_the_config() -> None:
    m = metrics(shift_mean=1.5)
    assert not decide(m, CFG).promote
    assert decide(m, CFG.model_copy(update={"max_shift_mean": 2.0})).promote
