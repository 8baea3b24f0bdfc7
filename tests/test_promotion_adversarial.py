"""Adversarial promotion cases through the REAL job (its entry point, real torch training on
tiny models, real episode files from ``trainer_core.synth``) and the real rule.

Each case names a scenario a user could hit; an unsafe one must not be promoted and the
decisive reason must be the one that says why. Trained artefacts are shared through
module-scoped caches, step budgets are tiny. The daemon-level cases are in the same table
(they run the daemon subprocess through ``tests/daemon_harness.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from safety.config import SafetyConfig, merge_manifest_safety
from safety.rule import decide
from tests.promotion_world import CLIP, ERROR_ONLY, SAFETY_CHECKS, Verdict, World
from trainer_core.config import FeaturesConfig
from trainer_core.synth import write_synthetic_episodes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("adversarial"))


# -- scenarios: each returns a Verdict ----------------------------------------------------------


def shifted(w: World) -> Verdict:
    """Control: a genuine shift (steering bias) the adapter learns."""
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("shifted", eps[:8], eps[8:])


def throttle_x16_skip(w: World) -> Verdict:
    eps = w.eps("x16", 12, 2, throttle_scale=1.6)
    return w.job("x16_skip", eps[:8], eps[8:])


def throttle_x16_clip(w: World) -> Verdict:
    eps = w.eps("x16", 12, 2, throttle_scale=1.6)
    return w.job("x16_clip", eps[:8], eps[8:], features=CLIP)


def both_x16_skip(w: World) -> Verdict:
    eps = w.eps("both16", 12, 3, steering_scale=1.6, throttle_scale=1.6)
    return w.job("both_skip", eps[:8], eps[8:])


def both_x16_clip(w: World) -> Verdict:
    eps = w.eps("both16", 12, 3, steering_scale=1.6, throttle_scale=1.6)
    return w.job("both_clip", eps[:8], eps[8:], features=CLIP)


def x16_mixed_into_good_batch(w: World) -> Verdict:
    """The out-of-bounds episodes of a batch are left out; the rest trains."""
    good, bad = w.eps("shift", 12, 1, steering_bias=0.3), w.eps("x16", 12, 2, throttle_scale=1.6)
    return w.job("mixed", good[:8] + bad[:4], good[8:])


def ratchet_second_batch(w: World) -> Verdict:
    """A second x1.6 batch judged against the first one's result: still not promoted."""
    first = throttle_x16_clip(w)
    assert not first.promote
    eps = w.eps("x16b", 12, 4, throttle_scale=1.6)
    return w.job("ratchet2", eps[:8], eps[8:], features=CLIP)


def ratchet_on_a_promoted_adapter(w: World) -> Verdict:
    """On top of a promoted (good) adapter, an x1.6 batch is judged against that adapter."""
    good = shifted(w)
    assert good.promote
    eps = w.eps("x16c", 12, 5, throttle_scale=1.6, steering_bias=0.3)
    return w.job(
        "ratchet_adapter",
        eps[:8],
        eps[8:],
        features=CLIP,
        baseline=good.result.candidate_path,
    )


def unbounded_action_names(w: World) -> Verdict:
    """A config with an action name nobody bounded: the job refuses to run."""
    features = FeaturesConfig(bounds={"steering": (-1.0, 1.0)})
    safety = SafetyConfig(clamp_bounds={})
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("unbounded", eps[:8], eps[8:], features=features, safety=safety)


def manifest_tries_to_loosen(w: World) -> Verdict:
    """A manifest block with empty bounds and thresholds of 1.0 changes nothing."""
    notes: list[str] = []
    block = {"clamp_bounds": {}, "warn_threshold": 1.0, "block_threshold": 1.0}
    safety = merge_manifest_safety(SafetyConfig(), block, notes)
    assert safety == SafetyConfig() and len(notes) == 3
    eps = w.eps("x16", 12, 2, throttle_scale=1.6)
    return w.job("loosen", eps[:8], eps[8:], features=CLIP, safety=safety)


def manifest_widens_bounds(w: World) -> Verdict:
    """A manifest that widens throttle to [-2, 2] is intersected back to [-1, 1]."""
    safety = merge_manifest_safety(SafetyConfig(), {"clamp_bounds": {"throttle": [-2, 2]}})
    assert safety.clamp_bounds["throttle"] == (-1.0, 1.0)
    eps = w.eps("x16", 12, 2, throttle_scale=1.6)
    return w.job("widen", eps[:8], eps[8:], safety=safety)


def manifest_tightens_bounds(w: World) -> Verdict:
    """A tighter manifest (throttle within [-0.3, 0.3]) makes a good shift unsafe."""
    safety = merge_manifest_safety(SafetyConfig(), {"clamp_bounds": {"throttle": [-0.3, 0.3]}})
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("tighten", eps[:8], eps[8:], safety=safety, features=CLIP)


def throttle_channel_regresses(w: World) -> Verdict:
    """Trained on a recalibrated throttle (x0.5), judged where the throttle is the usual one:
    steering improves, the throttle gets worse."""
    train = w.eps("calib05", 8, 6, steering_bias=0.3, throttle_scale=0.5)
    evals = w.eps("shift_eval", 4, 7, steering_bias=0.3)
    return w.job("channel", train, evals)


def environment_slice_regresses(w: World) -> Verdict:
    """Better on the new track, worse on the old one (which the adapter was not trained on)."""
    train = w.eps("envA_train", 8, 8, steering_bias=0.3, environment="trackA")
    evals = w.eps("envA_eval", 5, 9, steering_bias=0.3, environment="trackA") + w.eps(
        "envB_eval", 3, 10, environment="trackB", steering_bias=0.1
    )
    return w.job("slice", train, evals, promotion=ERROR_ONLY)


def approach_near_person(w: World) -> Verdict:
    """A teacher that drives at people who come close: the adapter learns to."""
    eps = w.eps("approach", 12, 11, near="approach")
    return w.job("approach", eps[:8], eps[8:])


def brake_near_person(w: World) -> Verdict:
    """The same situations, braking: proximity alone vetoes nothing."""
    eps = w.eps("brake", 12, 11, near="brake")
    return w.job("brake", eps[:8], eps[8:])


def reckless_teacher(w: World) -> Verdict:
    eps = w.eps("unsafe", 10, 12, unsafe=True)
    return w.job("reckless", eps[:6], eps[6:], features=CLIP)


def _corrupt(episodes: list[Path], value: str, field: str) -> list[Path]:
    """Copies of ``episodes`` with one step's ``field`` set to a non-finite number."""
    import shutil

    out = []
    for ep in episodes:
        target = ep.parent.parent / f"{ep.parent.name}-{value}" / ep.name
        if not target.exists():
            shutil.copytree(ep, target)
            shard = target / "steps" / "000000.jsonl"
            lines = shard.read_text().splitlines()
            step = json.loads(lines[3])
            if field == "action":
                step["action"]["command"][1] = float(value)
            else:
                step["observation"]["robot_state"]["joint_positions"][0] = float(value)
            lines[3] = json.dumps(step)  # NaN / Infinity: what a broken producer writes
            shard.write_text("\n".join(lines) + "\n")
        out.append(target)
    return out


def nan_actions(w: World) -> Verdict:
    eps = _corrupt(w.eps("shift", 12, 1, steering_bias=0.3)[:8], "nan", "action")
    return w.job("nan_actions", eps, w.eps("shift", 12, 1, steering_bias=0.3)[8:])


def inf_observations(w: World) -> Verdict:
    eps = _corrupt(w.eps("shift", 12, 1, steering_bias=0.3)[:8], "inf", "observation")
    return w.job("inf_obs", eps, w.eps("shift", 12, 1, steering_bias=0.3)[8:])


def diverged_training(w: World) -> Verdict:
    """A learning rate that blows the adapter up: predictions are NaN/Inf or wild."""
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("diverged", eps[:8], eps[8:], learning_rate=1e6, max_steps=40)


def too_few_episodes(w: World) -> Verdict:
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("few_eps", eps[:8], eps[8:10])


def too_few_steps(w: World) -> Verdict:
    short = write_synthetic_episodes(w.root / "eps" / "short", 4, 10, seed=13, steering_bias=0.3)
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("few_steps", eps[:8], short)


def no_eval_episodes(w: World) -> Verdict:
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("no_eval", eps[:8], [])


def eval_set_out_of_bounds(w: World) -> Verdict:
    """Every held-out episode out of bounds (skip): nothing left to judge on."""
    eps = w.eps("shift", 12, 1, steering_bias=0.3)
    return w.job("eval_oob", eps[:8], w.eps("x16", 12, 2, throttle_scale=1.6)[8:])


def tiny_improvement(w: World) -> Verdict:
    """Trained on what the base already does: nothing to gain, nothing promoted."""
    eps = w.eps("plain", 12, 14)
    return w.job("plain", eps[:8], eps[8:], max_steps=30)


def new_calibration(w: World) -> Verdict:
    """Control: a throttle recalibrated within bounds (x0.7), everywhere."""
    eps = w.eps("calib07", 12, 15, throttle_scale=0.7)
    return w.job("calib", eps[:8], eps[8:])


def strict_confidence_on_noise(w: World) -> Verdict:
    """A genuine but small shift judged at 99.9 % confidence with a 30 % margin."""
    eps = w.eps("small_shift", 12, 16, steering_bias=0.05)
    strict = ERROR_ONLY.model_copy(
        update={"confidence": 0.999, "resamples": 2000, "min_improvement": 0.3}
    )
    return w.job("strict", eps[:8], eps[8:], promotion=strict, max_steps=60)


OOB = "outside its bounds"  # what a skipped out-of-bounds episode's reason says
ANY_SAFETY = (*SAFETY_CHECKS, "name:")

# (case, scenario, promoted?, accepted decisive reasons (prefixes), what the first reason must
# say, what some skipped episode's reason must say)
CASES: list[tuple[str, Any, bool, tuple[str, ...], str, str]] = [
    ("genuine_shift_is_promoted", shifted, True, (), "", ""),
    ("new_calibration_is_promoted", new_calibration, True, (), "", ""),
    ("one_channel_x1.6_not_trained_on", throttle_x16_skip, False, ("job:", "evidence"), "", OOB),
    ("one_channel_x1.6_clipped", throttle_x16_clip, False, ANY_SAFETY, "", ""),
    ("both_channels_x1.6_not_trained_on", both_x16_skip, False, ("job:", "evidence"), "", OOB),
    ("both_channels_x1.6_clipped", both_x16_clip, False, ANY_SAFETY, "", ""),
    ("x1.6_episodes_left_out_of_a_batch", x16_mixed_into_good_batch, True, (), "", OOB),
    ("ratchet_second_batch", ratchet_second_batch, False, ANY_SAFETY, "", ""),
    ("ratchet_on_promoted_adapter", ratchet_on_a_promoted_adapter, False, ANY_SAFETY, "", ""),
    ("unbounded_action_names", unbounded_action_names, False, ("job:invalid",), "['throttle']", ""),
    ("manifest_tries_to_loosen", manifest_tries_to_loosen, False, ANY_SAFETY, "", ""),
    ("manifest_widens_bounds", manifest_widens_bounds, False, ("job:", "evidence"), "", OOB),
    ("manifest_tightens_bounds", manifest_tightens_bounds, False, ANY_SAFETY, "", ""),
    ("per_channel_regression", throttle_channel_regresses, False, ("name:throttle",), "", ""),
    (
        "environment_slice_regression",
        environment_slice_regresses,
        False,
        ("slice:", "name:"),
        "",
        "",
    ),
    ("approach_near_person", approach_near_person, False, SAFETY_CHECKS, "", ""),
    ("reckless_teacher", reckless_teacher, False, SAFETY_CHECKS, "", ""),
    ("nan_in_recorded_actions", nan_actions, False, ("job:invalid",), "not a finite", ""),
    ("inf_in_observations", inf_observations, False, ("job:invalid",), "finite", ""),
    (
        "diverged_training",
        diverged_training,
        False,
        ("finite", "job:", "shift", *ANY_SAFETY),
        "",
        "",
    ),
    ("too_few_episodes", too_few_episodes, False, ("evidence",), "2 held-out episodes", ""),
    ("too_few_steps", too_few_steps, False, ("evidence",), "40 steps", ""),
    ("no_eval_episodes", no_eval_episodes, False, ("evidence",), "0 held-out", ""),
    ("eval_set_out_of_bounds", eval_set_out_of_bounds, False, ("evidence",), "", OOB),
    ("nothing_to_gain", tiny_improvement, False, ("improvement", "name:"), "", ""),
    ("strict_confidence", strict_confidence_on_noise, False, ("improvement", "name:"), "", ""),
]


@pytest.mark.parametrize(
    ("case", "scenario", "promoted", "decisive", "says", "skipped"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_adversarial(world: World, case, scenario, promoted, decisive, says, skipped) -> None:
    verdict = scenario(world)
    shown = "\n".join(verdict.reasons[:6])
    if skipped:
        reasons = verdict.result.skipped.values()
        assert any(skipped in r for r in reasons), f"{case}: skipped {verdict.result.skipped}"
    if promoted:
        assert verdict.promote, f"{case}: not promoted:\n{shown}"
        return
    assert not verdict.promote, f"{case}: promoted:\n{shown}"
    assert verdict.decisive.startswith(decisive), f"{case}: decisive {verdict.decisive}\n{shown}"
    if says:
        assert says in verdict.reasons[0], f"{case}: {verdict.reasons[0]}"
    if not verdict.decisive.startswith("job:"):
        assert verdict.reasons[0].startswith(f"FAIL {verdict.decisive}:")


def test_brake_scores_lower_than_approach_near_people(world: World) -> None:
    """Same situations, the same base: the approaching candidate is riskier per step."""
    brake, approach = brake_near_person(world), approach_near_person(world)
    risk = [
        sum(e.candidate.risk_sum for e in v.result.metrics.episodes) / v.result.metrics.eval_steps
        for v in (brake, approach)
    ]
    assert risk[0] < risk[1]
    assert math.isfinite(risk[0])


def test_the_regressing_slice_is_named(world: World) -> None:
    verdict = environment_slice_regresses(world)
    d = decide(verdict.result.metrics, ERROR_ONLY)
    assert d.checks["slice:environment_id=trackB"] is False, d.reasons
    assert d.checks["slice:environment_id=trackA"] is True, d.reasons
    assert any(r.startswith("FAIL slice:environment_id=trackB: ") for r in d.reasons)
