"""Feature extraction and the normaliser: numbers-as-strings, precise errors, JSON round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainer_core.config import FeatureGroup, FeaturesConfig, IngestConfig
from trainer_core.episode import Episode, Step
from trainer_core.features import (
    FeatureError,
    Normalizer,
    bounded_safety,
    episode_arrays,
    read_split,
    resolve,
    to_number,
)
from trainer_core.rlds import content_hash
from trainer_core.synth import write_synthetic_episodes

PROX = "step_metadata.human_distance_m"


def _step(joints=(0.5, 0.1), distance="3.5", command=(0.05, 0.1)) -> Step:
    meta = {} if distance is None else {"human_distance_m": distance}
    return Step(
        observation={"robot_state": {"joint_positions": list(joints)}},
        action={"command": list(command)},
        step_metadata=meta,
    )


def _episode(*steps: Step) -> Episode:
    return Episode("ep1", {}, list(steps), source="/data/ep1", layout="A")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (2.5, 2.5), ("3.5", 3.5), (" -0.25 ", -0.25), ("1e-3", 0.001)],
)
def test_to_number_accepts_numbers_and_numeric_strings(value, expected) -> None:
    assert to_number(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("near", "not a number"),
        (True, "boolean"),
        (None, "NoneType"),
        ("nan", "not finite"),
        (float("inf"), "not finite"),
        ([1.0], "list"),
    ],
)
def test_to_number_refuses_the_rest(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        to_number(value)


def test_resolve_walks_dicts_and_list_indices() -> None:
    m = {"a": {"b": [10, {"c": 7}]}}
    assert resolve(m, "a.b.1.c") == 7
    assert resolve(m, "a.b.0") == 10
    assert resolve(m, "a.x") is not None and resolve(m, "a.x") is resolve(m, "a.b.5")  # missing


def test_episode_arrays_default_features() -> None:
    with pytest.raises(FeatureError, match=r"step 1: step_metadata\.human_distance_m is missing"):
        episode_arrays(_episode(_step(), _step(distance=None)), FeaturesConfig(), PROX)
    ok = episode_arrays(_episode(_step(), _step(distance="2.0")), FeaturesConfig(), PROX)
    assert ok.obs.dtype == np.float32 and ok.obs.shape == (2, 3)
    np.testing.assert_allclose(ok.obs[0], [0.5, 0.1, 3.5])
    np.testing.assert_allclose(ok.act[1], [0.05, 0.1])
    np.testing.assert_allclose(ok.proximity, [3.5, 2.0])
    assert ok.episode_start.tolist() == [True, False]


def test_proximity_is_nan_when_absent() -> None:
    feats = FeaturesConfig(
        observation=[FeatureGroup(path="observation.robot_state.joint_positions", names=["a", "b"])]
    )
    arrays = episode_arrays(_episode(_step(distance=None)), feats, PROX)
    assert math.isnan(arrays.proximity[0])


@pytest.mark.parametrize(
    ("step", "fragment"),
    [
        (_step(joints=(0.5,)), "observation.robot_state.joint_positions has 1 values, expected 2"),
        (_step(distance="far"), "step_metadata.human_distance_m is the string 'far'"),
        (_step(command=(0.1, "x")), "action.command is the string 'x'"),
        (Step(observation={}, action={"command": [0, 0]}), "joint_positions is missing"),
    ],
)
def test_feature_errors_name_episode_step_and_path(step: Step, fragment: str) -> None:
    with pytest.raises(FeatureError) as info:
        episode_arrays(_episode(_step(), step), FeaturesConfig(), PROX)
    message = str(info.value)
    assert "episode ep1" in message and "step 1" in message and fragment in message


def test_normalizer_fit_floor_and_json_round_trip(tmp_path: Path) -> None:
    data = episode_arrays(
        _episode(_step(joints=(0.0, 1.0)), _step(joints=(2.0, 1.0))), FeaturesConfig(), PROX
    )
    norm = Normalizer.fit(data, ["speed", "target_bearing", "d"], ["steering", "throttle"])
    np.testing.assert_allclose(norm.obs_mean[:2], [1.0, 1.0])
    np.testing.assert_allclose(norm.obs_std[:2], [1.0, 1e-3])  # constant feature floored
    assert np.all(np.isfinite(norm.norm_obs(data.obs)))
    norm.save(tmp_path / "normalizer.json")
    again = Normalizer.load(tmp_path / "normalizer.json")
    np.testing.assert_array_equal(again.act_std, norm.act_std)
    assert again.obs_names == norm.obs_names
    np.testing.assert_allclose(again.denorm_act(again.norm_act(data.act)), data.act, atol=1e-6)
    doc = json.loads((tmp_path / "normalizer.json").read_text())
    doc["action"]["steering"]["std"] = 0.0
    with pytest.raises(ValueError, match="std <= 0"):
        Normalizer.from_json(doc)


def test_read_split_skips_bad_episodes_with_reasons(tmp_path: Path) -> None:
    good = write_synthetic_episodes(tmp_path, 2, 10, seed=0)
    # An episode whose step_metadata distance is not a number: readable, but no features.
    bad = write_synthetic_episodes(tmp_path, 1, 10, seed=9)[0]
    shard = bad / "steps" / "000000.jsonl"
    lines = shard.read_text().splitlines()
    step = json.loads(lines[4])
    step["step_metadata"]["human_distance_m"] = "unknown"
    lines[4] = json.dumps(step)
    shard.write_text("\n".join(lines) + "\n")
    missing = tmp_path / "gone"
    split = read_split([good[0], bad, missing, good[1]], FeaturesConfig(), IngestConfig(), PROX)
    assert split.paths == [good[0], good[1]]
    assert len(split.arrays) == 20 and split.arrays.episode_start.sum() == 2
    assert "step 4" in split.skipped[str(bad)] and "human_distance_m" in split.skipped[str(bad)]
    assert str(missing) in split.skipped
    assert split.hashes == [content_hash(good[0]), content_hash(good[1])]
    assert content_hash(bad) != content_hash(good[0])


def test_bounded_safety_fills_names_from_features_bounds_and_keeps_safety_first() -> None:
    """A head built from ``bounded_safety`` clamps a name bounded only by ``features.bounds``
    (the report once built its head from ``safety`` alone and saw such a name as unbounded)."""
    from safety.config import SafetyConfig
    from safety.head import SafetyHead

    features = FeaturesConfig(
        action=[FeatureGroup(path="action", names=["steering", "throttle"])],
        bounds={"steering": (-0.5, 0.5), "throttle": (-1.0, 1.0)},
    )
    safety = SafetyConfig(clamp_bounds={"throttle": (-0.8, 0.8)})
    bounded = bounded_safety(features, safety)
    assert bounded.clamp_bounds == {"steering": (-0.5, 0.5), "throttle": (-0.8, 0.8)}
    rates = SafetyHead(bounded).assess(np.array([[0.9, 0.0], [0.0, 0.0]]), ["steering", "throttle"])
    assert rates.rates()["clamp_rate"] == 0.5
    with pytest.raises(ValueError, match="steering"):
        SafetyHead(safety).bounds(["steering", "throttle"])
