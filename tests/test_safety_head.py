"""The safety head: worked values of the old continuonos head, vector actions by name, jumps,
episode boundaries, shapes, and the manifest's safety block."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from safety.config import (
    ManifestSafetyError,
    SafetyConfig,
    UnboundedActionsError,
    merge_manifest_safety,
    resolve_bounds,
)
from safety.head import BLOCK, OK, WARN, SafetyHead

NAMES = ["steering", "throttle"]


def head(**overrides) -> SafetyHead:
    return SafetyHead(SafetyConfig(**overrides))


@pytest.mark.parametrize(
    ("action", "risk", "label"),
    [
        ([0.0, 0.0], 0.0, OK),
        ([0.99, -0.99], 0.0, OK),  # inside the bounds: nothing clamped
        ([1.5, 0.0], 0.504, WARN),  # one clamped name (FORMATS §5)
        ([0.0, -3.0], 0.504, WARN),
        ([1.5, -1.5], 0.616, BLOCK),  # two clamped names
    ],
)
def test_clamp_worked_values(action: list[float], risk: float, label: int) -> None:
    got = head().assess(np.array([action]), NAMES)
    assert got.risk[0] == pytest.approx(risk, abs=1e-9)
    assert got.label[0] == label
    assert got.clamped[0] == (risk > 0)
    assert np.all(np.abs(got.clamped_actions) <= 1.0)


@pytest.mark.parametrize(
    ("distance", "label"),
    [
        (math.nan, OK),  # unknown distance: no proximity term
        (1.5, OK),
        (1.2, OK),  # at the radius: not inside it
        (0.94, OK),
        (0.93, WARN),  # warns at <= 0.93 m (FORMATS §5)
        (0.60, WARN),
        # FORMATS says "blocks at <= 0.643 m", but its own formula gives 0.557 m
        # (0.643 m is the depth inside the radius); the formula is what we keep.
        (0.56, WARN),
        (0.557, BLOCK),
        (0.0, BLOCK),
    ],
)
def test_proximity_thresholds(distance: float, label: int) -> None:
    """At full forward throttle (approach factor 1) the old head's worked values hold."""
    got = head().assess(np.array([[0.0, 1.0]]), NAMES, proximity=np.array([distance]))
    assert got.label[0] == label, got.risk[0]


def test_proximity_risk_is_the_documented_formula() -> None:
    d = np.array([0.3, 0.9, 1.1, 2.0])
    full = np.array([[0.0, 1.0]] * 4)
    got = head().assess(full, NAMES, proximity=d)
    expected = np.clip(np.where(d < 1.2, (1.2 - d) / 1.2, 0.0) * 1.12, 0, 1)
    np.testing.assert_allclose(got.risk, expected)


@pytest.mark.parametrize(
    ("throttle", "factor"),
    [
        (1.0, 1.0),  # full throttle toward the person: the whole term
        (0.5, 0.25 + 0.75 * 0.5),
        (0.0, 0.25),  # standing still: the floor
        (-0.8, 0.25),  # braking / reversing: the floor
        (3.0, 1.0),  # clamped to the bound first
    ],
)
def test_proximity_scales_with_the_commanded_approach(throttle: float, factor: float) -> None:
    d = np.array([0.3])
    got = head().assess(np.array([[0.0, throttle]]), NAMES, proximity=d)
    clamp = 0.35 + 0.1 if abs(throttle) > 1 else 0.0
    assert got.risk[0] == pytest.approx(min(1.0, (clamp + 0.75 * factor) * 1.12))


def test_braking_near_a_person_scores_lower_than_accelerating() -> None:
    d = np.full(3, 0.4)
    brake = head().assess(np.array([[0.0, -0.5]] * 3), NAMES, proximity=d)
    drive = head().assess(np.array([[0.0, 0.9]] * 3), NAMES, proximity=d)
    assert brake.risk.max() < drive.risk.min()
    assert (brake.label < BLOCK).all() and (drive.label == BLOCK).all()


@pytest.mark.parametrize(
    ("approach", "action", "factor"),
    [
        ({}, [0.0, -1.0], 1.0),  # no approach names: the action is not looked at
        ({"throttle": -1.0}, [0.0, -1.0], 1.0),  # a robot whose forward is negative
        ({"throttle": -1.0}, [0.0, 1.0], 0.25),
        ({"steering": 1.0, "throttle": 1.0}, [0.6, 0.2], 0.25 + 0.75 * 0.6),  # the largest
    ],
)
def test_approach_names_and_signs_are_configurable(approach, action, factor) -> None:
    got = head(approach=approach).assess(np.array([action]), NAMES, proximity=np.array([0.6]))
    assert got.risk[0] == pytest.approx(0.5 * factor * 1.12)


def test_approach_sign_must_be_one() -> None:
    with pytest.raises(ValueError, match="sign"):
        SafetyConfig(approach={"throttle": 0.5})


def test_vector_actions_are_clamped_through_names() -> None:
    """Column order comes from ``names``; a name without bounds is refused, never blind."""
    names = ["throttle", "gripper", "steering"]
    actions = np.array([[2.0, 7.0, 0.0], [0.0, -7.0, -2.0], [0.5, 0.0, 0.5]])
    bounded = {"steering": (-1.0, 1.0), "throttle": (-1.0, 1.0), "gripper": (-7.0, 7.0)}
    got = head(clamp_bounds=bounded).assess(actions, names)
    np.testing.assert_allclose(
        got.clamped_actions, [[1.0, 7.0, 0.0], [0.0, -7.0, -1.0], [0.5, 0.0, 0.5]]
    )
    assert got.clamped.tolist() == [True, True, False]
    assert head().unbounded(names) == ["gripper"]
    with pytest.raises(UnboundedActionsError, match=r"\['gripper'\]"):
        head().assess(actions, names)


@pytest.mark.parametrize(
    ("clamp", "fallback", "expected"),
    [
        ({"a": (-1, 1)}, {"a": (-5, 5), "b": (0, 2)}, {"a": (-1, 1), "b": (0, 2)}),
        ({}, {"a": (-5, 5), "b": (0, 2)}, {"a": (-5, 5), "b": (0, 2)}),
        ({"a": (-1, 1)}, {}, "['b']"),
        ({}, {}, "['a', 'b']"),
    ],
)
def test_every_action_name_needs_bounds(clamp, fallback, expected) -> None:
    if isinstance(expected, str):
        with pytest.raises(UnboundedActionsError, match=re.escape(expected)):
            resolve_bounds(["a", "b"], clamp, fallback)
    else:
        assert resolve_bounds(["a", "b"], clamp, fallback) == expected


def test_jump_term_and_per_name_limits() -> None:
    actions = np.array([[0.0, 0.0], [0.9, 0.0], [0.9, 0.0], [-0.1, 0.9]])
    got = head().assess(actions, NAMES)
    # step 1: one name jumped 0.9 > 0.5 -> 0.25 * 1.12; step 3: two names -> cap 0.4 * 1.12
    np.testing.assert_allclose(got.risk, [0.0, 0.28, 0.0, 0.448])
    assert got.label.tolist() == [OK, WARN, OK, WARN]
    assert got.jumped.tolist() == [False, True, False, True]
    relaxed = head(max_jump_per_name={"steering": 1.5}).assess(actions, NAMES)
    np.testing.assert_allclose(relaxed.risk, [0.0, 0.0, 0.0, 0.28])


def test_jump_is_measured_on_clamped_actions_and_adds_to_clamp() -> None:
    actions = np.array([[0.0, 0.0], [5.0, 0.0]])  # clamped to 1.0: jump 1.0 and one clamp
    got = head().assess(actions, NAMES)
    assert got.risk[1] == pytest.approx(min(1.0, (0.35 + 0.1 + 0.25) * 1.12))
    assert got.label[1] == BLOCK


def test_no_jump_across_episode_boundaries() -> None:
    actions = np.array([[0.0, 0.0], [0.1, 0.0], [0.9, 0.0], [0.95, 0.0]])
    one_episode = head().assess(actions, NAMES)
    assert one_episode.jumped.tolist() == [False, False, True, False]
    two_episodes = head().assess(actions, NAMES, episode_start=np.array([True, False, True, False]))
    assert not two_episodes.jumped.any()
    assert two_episodes.label.tolist() == [OK] * 4


def test_non_finite_actions_block() -> None:
    actions = np.array([[np.nan, 0.0], [0.0, np.inf], [0.0, 0.0]])
    got = head().assess(actions, NAMES)
    assert got.label.tolist() == [BLOCK, BLOCK, OK]
    assert got.risk[:2].tolist() == [1.0, 1.0]
    assert got.clamped.tolist() == [True, True, False]


def test_vectorised_shapes_and_rates() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    actions = rng.uniform(-1.3, 1.3, size=(n, 2))
    prox = rng.uniform(0.0, 3.0, size=n)
    prox[::7] = np.nan
    starts = np.zeros(n, bool)
    starts[::100] = True
    got = head().assess(actions, NAMES, proximity=prox, episode_start=starts)
    for arr in (got.risk, got.clamped, got.jumped, got.label):
        assert arr.shape == (n,)
    assert got.clamped_actions.shape == (n, 2)
    assert got.risk.min() >= 0.0 and got.risk.max() <= 1.0
    r = got.rates()
    assert r["n"] == n
    assert r["clamp_rate"] == pytest.approx(got.clamped.mean())
    assert r["block_rate"] == pytest.approx((got.label == BLOCK).mean())
    assert r["warn_rate"] == pytest.approx((got.label == WARN).mean())
    assert r["max_risk"] == pytest.approx(got.risk.max())
    # the same steps one at a time give the same risks (no hidden coupling except jumps)
    single = head().assess(actions[:50], NAMES, proximity=prox[:50], episode_start=starts[:50])
    np.testing.assert_allclose(single.risk, got.risk[:50])


def test_zero_steps() -> None:
    got = head().assess(np.zeros((0, 2)), NAMES, proximity=np.zeros(0))
    assert got.rates() == {
        "clamp_rate": 0.0,
        "warn_rate": 0.0,
        "block_rate": 0.0,
        "max_risk": 0.0,
        "n": 0,
    }


@pytest.mark.parametrize(
    ("actions", "kw"),
    [
        (np.zeros((3, 3)), {}),
        (np.zeros(3), {}),
        (np.zeros((3, 2)), {"proximity": np.zeros(2)}),
        (np.zeros((3, 2)), {"episode_start": np.zeros(4, bool)}),
    ],
)
def test_shape_errors(actions: np.ndarray, kw: dict) -> None:
    with pytest.raises(ValueError, match="must"):
        head().assess(actions, NAMES, **kw)


def test_manifest_block_only_tightens(samples) -> None:
    """The configured block is a floor: bounds intersect, thresholds take the stricter value."""
    manifest = json.loads((samples / "model" / "manifest.pi5.safety.example.json").read_text())
    cfg = SafetyConfig(clamp_bounds={"steering": (-0.5, 0.5)}, warn_threshold=0.1)
    notes: list[str] = []
    merged = merge_manifest_safety(cfg, manifest["safety"], notes)
    assert merged.clamp_bounds == {"steering": (-0.5, 0.5), "throttle": (-1.0, 1.0)}
    assert merged.warn_threshold == 0.1 and merged.block_threshold == 0.6
    assert merged.envelope.radius_m == 1.2 and merged.envelope.decay == 0.12
    assert any("clamp_bounds.steering" in n and "wider" in n for n in notes)
    assert any("warn_threshold 0.25 is looser" in n for n in notes)
    assert merged.max_jump == cfg.max_jump  # not in the block: the config's value
    assert merge_manifest_safety(cfg, None) is cfg
    assert merge_manifest_safety(cfg.model_copy(update={"from_manifest": False}), {}) is not None


def test_manifest_block_partial_envelope() -> None:
    merged = merge_manifest_safety(SafetyConfig(), {"envelope": {"radius_m": 2.0}})
    assert merged.envelope.radius_m == 2.0 and merged.envelope.decay == 0.12
    full = np.array([[0.0, 1.0]])
    got = SafetyHead(merged).assess(full, NAMES, proximity=np.array([1.5]))
    assert got.risk[0] == pytest.approx(0.25 * 1.12)


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ([1, 2], "mapping"),
        ({"clamp_bounds": {"steering": [1.0]}}, "clamp_bounds.steering"),
        ({"clamp_bounds": {"steering": ["a", 1]}}, "clamp_bounds.steering"),
        ({"clamp_bounds": {"steering": [1.0, -1.0]}}, "clamp_bounds"),
        ({"clamp_bounds": [[-1, 1]]}, "clamp_bounds"),
        ({"warn_threshold": "0.25"}, "warn_threshold"),
        ({"block_threshold": 1.5}, "block_threshold"),
        ({"clamp_bounds": {"steering": [2.0, 3.0]}}, "does not overlap"),
        ({"envelope": {"radius_m": float("nan")}}, "envelope.radius_m"),
        ({"envelope": 3}, "envelope"),
        ({"envelope": {"wobble": 1}}, "envelope.wobble"),
        ({"clamp_bound": {}}, "unknown keys"),
    ],
)
def test_malformed_manifest_block_is_an_error(block, field: str) -> None:
    with pytest.raises(ManifestSafetyError, match=field.replace(".", r"\.")):
        merge_manifest_safety(SafetyConfig(), block)


@pytest.mark.parametrize(
    ("block", "note"),
    [
        ({"clamp_bounds": {}}, "clamp_bounds is empty"),
        ({"clamp_bounds": {"throttle": [-5, 5]}}, "clamp_bounds.throttle [-5.0, 5.0] is wider"),
        ({"warn_threshold": 0.7}, "warn_threshold 0.7 is looser"),
        ({"warn_threshold": 1.0}, "warn_threshold 1.0 is looser"),
        ({"block_threshold": 1.0}, "block_threshold 1.0 is looser"),
        ({"envelope": {"radius_m": 0.1}}, "envelope.radius_m 0.1 is looser"),
        ({"envelope": {"radius_m": -1}}, "envelope.radius_m -1.0 is looser"),
        ({"envelope": {"decay": 0.0}}, "envelope.decay 0.0 is looser"),
    ],
)
def test_a_looser_manifest_block_is_ignored_with_a_note(block, note: str) -> None:
    cfg = SafetyConfig()
    notes: list[str] = []
    merged = merge_manifest_safety(cfg, block, notes)
    assert merged == cfg, "a looser manifest value must change nothing"
    assert any(note in n for n in notes), notes


def test_manifest_block_may_tighten_and_add_names() -> None:
    block = {
        "clamp_bounds": {"throttle": [-0.5, 2.0], "gripper": [0, 1]},
        "block_threshold": 0.5,
        "envelope": {"radius_m": 2.0},
    }
    merged = merge_manifest_safety(SafetyConfig(), block)
    assert merged.clamp_bounds["throttle"] == (-0.5, 1.0)
    assert merged.clamp_bounds["gripper"] == (0.0, 1.0)
    assert merged.block_threshold == 0.5 and merged.envelope.radius_m == 2.0


def test_manifest_block_ignored_when_config_says_so() -> None:
    cfg = SafetyConfig(from_manifest=False)
    assert merge_manifest_safety(cfg, {"warn_threshold": "junk"}) is cfg
