"""Synthetic episodes: layout A that our own reader accepts, deterministic, and with the
distribution shift and the unsafe behaviour the job tests rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer_core.config import FeaturesConfig, IngestConfig
from trainer_core.features import episode_arrays
from trainer_core.rlds import read_episode
from trainer_core.synth import SynthOptions, teacher, write_synthetic_episodes


def _arrays(paths: list[Path]):
    feats = FeaturesConfig()
    return [
        episode_arrays(read_episode(p, IngestConfig()), feats, "step_metadata.human_distance_m")
        for p in paths
    ]


def test_layout_a_with_xr_contract_fields(tmp_path: Path) -> None:
    paths = write_synthetic_episodes(tmp_path, n_episodes=2, n_steps=30, seed=0)
    assert [p.parent for p in paths] == [tmp_path, tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no staging
    meta = json.loads((paths[0] / "metadata.json").read_text())
    assert meta["xr_mode"] == "trainer" and meta["control_role"] == "human_teleop"
    assert {"xr_app", "continuonbrain_os", "glove_firmware"} <= set(meta["software"])
    lines = (paths[0] / "steps" / "000000.jsonl").read_text().splitlines()
    assert len(lines) == 30
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert isinstance(first["step_metadata"]["human_distance_m"], str)  # as continuonos writes
    assert len(first["action"]["command"]) == 2
    assert len(first["observation"]["robot_state"]["joint_positions"]) == 2
    assert last["is_terminal"] is True and first["is_terminal"] is False
    episode = read_episode(paths[0], IngestConfig())
    assert len(episode.steps) == 30


def test_deterministic_per_seed_and_unique_ids_per_options(tmp_path: Path) -> None:
    a = write_synthetic_episodes(tmp_path / "a", 2, 20, seed=3)
    b = write_synthetic_episodes(tmp_path / "b", 2, 20, seed=3)
    c = write_synthetic_episodes(tmp_path / "c", 2, 20, seed=4)
    for pa, pb in zip(a, b, strict=True):
        assert pa.name == pb.name
        assert (pa / "steps/000000.jsonl").read_bytes() == (pb / "steps/000000.jsonl").read_bytes()
    assert (a[0] / "steps/000000.jsonl").read_bytes() != (c[0] / "steps/000000.jsonl").read_bytes()
    shifted = write_synthetic_episodes(tmp_path / "a", 2, 20, seed=3, steering_bias=0.3)
    unsafe = write_synthetic_episodes(tmp_path / "a", 2, 20, seed=3, unsafe=True)
    names = [p.name for p in a + c + shifted + unsafe]
    assert len(set(names)) == len(names)


def test_safe_teacher_stays_in_bounds_and_away_from_the_person(tmp_path: Path) -> None:
    parts = _arrays(write_synthetic_episodes(tmp_path, 4, 100, seed=1))
    act = np.concatenate([p.act for p in parts])
    prox = np.concatenate([p.proximity for p in parts])
    assert np.all(np.abs(act) <= 1.0)
    assert prox.min() > 1.2  # outside the envelope radius
    assert max(np.abs(np.diff(p.act, axis=0)).max() for p in parts) < 0.5  # smooth: no jumps


def test_steering_bias_shifts_the_teacher(tmp_path: Path) -> None:
    # Closed loop, the car re-aims and the mean steering hardly moves: the shift is in the
    # mapping from observation to action, which is what an adapter has to learn.
    parts = _arrays(write_synthetic_episodes(tmp_path, 4, 80, 1, steering_bias=0.3))
    obs = np.concatenate([p.obs for p in parts])
    act = np.concatenate([p.act for p in parts])
    plain = np.array([teacher(s, b, d, SynthOptions()) for s, b, d in obs])
    inside = np.abs(plain[:, 0] + 0.3) < 0.95  # not clipped at the bound
    residual = act[inside, 0] - plain[inside, 0]
    assert abs(residual.mean() - 0.3) < 0.02
    assert np.abs(act[:, 1] - plain[:, 1]).mean() < 0.05  # throttle unchanged


def test_unsafe_teacher_breaks_bounds_and_drives_into_the_person(tmp_path: Path) -> None:
    parts = _arrays(write_synthetic_episodes(tmp_path, 4, 100, seed=2, unsafe=True))
    act = np.concatenate([p.act for p in parts])
    prox = np.concatenate([p.proximity for p in parts])
    assert (np.abs(act) > 1.0).any(axis=1).mean() > 0.3
    assert (prox < 1.2).mean() > 0.3
    assert max(np.abs(np.diff(p.act, axis=0)).max() for p in parts) > 0.5


def test_bad_sizes_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_steps"):
        write_synthetic_episodes(tmp_path, 1, 0, seed=0)
