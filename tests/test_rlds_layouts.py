"""Layouts the samples do not cover, built here: A with several shards, E (camelCase), the arm
recorder's episode.json, standard RLDS/TFDS TFRecords, gzip, packed and unpacked lists."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.rlds_writers import (
    continuonos_step,
    example,
    frame,
    step,
    tfrecord_bytes,
    write_a,
    write_b,
)
from trainer_core.config import IngestConfig
from trainer_core.rlds import EpisodeError, read_episode
from trainer_core.rlds.crc32c import crc32c, masked_crc32c
from trainer_core.rlds.tfrecord import tfds_shapes
from trainer_core.validate import action_signature, validate_episode

LIMITS = IngestConfig()


def test_crc32c_check_value_and_mask() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the published CRC-32C check value
    assert crc32c(b"") == 0
    assert crc32c(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 test vector
    assert masked_crc32c(b"") == 0xA282EAD8


def test_layout_a_reads_every_shard_in_name_order(tmp_path: Path) -> None:
    d = write_a(tmp_path, "ep1", [step(2), step(3)], shard="000001.jsonl")
    (d / "steps" / "000000.jsonl").write_text(json.dumps(step(0)) + "\n\n" + json.dumps(step(1)))
    ep = read_episode(d, LIMITS)
    assert ep.layout == "A"
    assert [s.observation["robot_state"]["joint_positions"][0] for s in ep.steps] == [
        0.0,
        0.1,
        0.2,
        pytest.approx(0.3),
    ]
    assert [s.is_first for s in ep.steps] == [True, False, False, False]
    assert ep.steps[-1].is_last


def test_layout_a_error_names_the_second_shard(tmp_path: Path) -> None:
    d = write_a(tmp_path, "ep", [step(0)])
    (d / "steps" / "000001.jsonl").write_text(
        json.dumps(step(1)) + "\n" + json.dumps(step(2, [0.1, "NaN"])) + "\n"
    )
    with pytest.raises(EpisodeError) as err:
        read_episode(d, LIMITS)
    assert str(err.value) == (
        'steps/000001.jsonl: line 2: action.command[1]: not a finite number (got "NaN")'
    )


def test_layout_e_camel_case_becomes_snake_case(tmp_path: Path) -> None:
    meta = {
        "continuon.xr_mode": "trainer",
        "continuon.control_role": "human_teleop",
        "environment_id": "lab",
        "software": {"xrAppVersion": "1.2", "brainVersion": "0.9"},
    }
    steps = [
        {
            "observation": {
                "headsetPose": {"position": [0, 0, 1], "orientationQuat": [0, 0, 0, 1]},
                "robotState": {"jointPositions": [0.5, i], "timestampNanos": 10 * i},
                "videoFrameId": f"f{i}",
            },
            "action": {
                "command": {"type": "JointDelta", "deltaRadians": [0.01, -0.02 * i]},
                "source": "human_teleop_xr",
            },
            "isTerminal": i == 1,
            "stepMetadata": {"humanDistanceM": "1.5"},
        }
        for i in range(2)
    ]
    d = write_a(tmp_path, "episode-1700000000000", steps, metadata=meta)
    ep = read_episode(d, LIMITS)
    assert ep.layout == "E"
    assert ep.episode_id == "episode-1700000000000"
    assert ep.metadata["xr_mode"] == "trainer"
    assert ep.metadata["control_role"] == "human_teleop"
    assert ep.metadata["software"] == {"xr_app_version": "1.2", "brain_version": "0.9"}
    s1 = ep.steps[1].as_mapping()
    assert s1["observation"]["robot_state"]["joint_positions"] == [0.5, 1]
    assert s1["observation"]["headset_pose"]["orientation_quat"] == [0, 0, 0, 1]
    assert s1["action"]["command"]["delta_radians"] == [0.01, -0.02]
    assert s1["is_terminal"] is True
    assert s1["step_metadata"]["human_distance_m"] == "1.5"


def test_arm_recorder_episode_json(tmp_path: Path) -> None:
    d = tmp_path / "arm_0001"
    d.mkdir()
    write_b(d, "episode.json", {"metadata": {"robot_model": "so100"}, "steps": [step(0), step(1)]})
    (d / "step_0000_rgb.npy").write_bytes(b"\x93NUMPY")
    ep = read_episode(d, LIMITS)
    assert (ep.layout, ep.episode_id, len(ep.steps)) == ("B", "arm_0001", 2)


def test_named_actions_and_extra_step_keys_kept(tmp_path: Path) -> None:
    steps = [
        {
            "observation": {"pose": [0, 0, 0]},
            "action": {"lift": 0.1, "yaw": -0.2},
            "reward": 1,
            "discount": 0.99,
            "step_index": i,
        }
        for i in range(2)
    ]
    ep = read_episode(write_b(tmp_path, "x.json", {"metadata": {}, "steps": steps}), LIMITS)
    assert ep.steps[1].step_metadata == {"discount": 0.99, "step_index": 1}
    assert ep.steps[0].reward == 1.0 and isinstance(ep.steps[0].reward, float)
    assert action_signature(ep.steps[0].action) == (("action.lift", 1), ("action.yaw", 1))


@pytest.mark.parametrize("packed", [True, False])
def test_continuonos_tfrecord_plain_and_gzip(tmp_path: Path, packed: bool) -> None:
    data = tfrecord_bytes([continuonos_step(i, 4) for i in range(4)], packed=packed)
    plain = tmp_path / "ep.tfrecord"
    plain.write_bytes(data)
    # Two gzip members: a concatenation is still one valid gzip stream.
    gz = tmp_path / "ep2.tfrecord.gz"
    gz.write_bytes(gzip.compress(data[:100]) + gzip.compress(data[100:]))
    for path in (plain, gz):
        ep = read_episode(path, LIMITS)
        assert (ep.layout, ep.episode_id, len(ep.steps)) == ("D", "tf_ep", 4)
        assert ep.steps[3].action["command"] == [0.75, 0.5]
        assert ep.steps[2].reward == 0.5
        assert ep.steps[2].step_metadata == {"human_distance_m": 1.0}
        assert [s.is_terminal for s in ep.steps] == [False, False, False, True]


def test_continuonos_command_from_float_list_when_json_lacks_it(tmp_path: Path) -> None:
    path = tmp_path / "c.tfrecord"
    path.write_bytes(
        tfrecord_bytes(
            [
                continuonos_step(i, 2, action=("bytes", ['{"source": "vla_policy"}']))
                for i in range(2)
            ]
        )
    )
    ep = read_episode(path, LIMITS)
    assert ep.steps[1].action == {"source": "vla_policy", "command": [0.25, 0.5]}


def _rlds_example(n: int, state_width: int) -> bytes:
    return example(
        {
            "steps/observation/state": ("float", [float(i) for i in range(n * state_width)]),
            "steps/observation/instruction": ("bytes", ["go"] * n),
            "steps/action": ("float", [0.5 * i for i in range(n * 2)]),
            "steps/reward": ("float", [0.0] * (n - 1) + [1.0]),
            "steps/discount": ("float", [1.0] * n),
            "steps/is_first": ("int64", [1] + [0] * (n - 1)),
            "steps/is_last": ("int64", [0] * (n - 1) + [1]),
            "steps/is_terminal": ("int64", [0] * (n - 1) + [1]),
            "episode_metadata/episode_id": ("bytes", ["rlds_7"]),
        }
    )


def test_standard_rlds_tfrecord_infers_per_step_shapes(tmp_path: Path) -> None:
    path = tmp_path / "rlds.tfrecord"
    path.write_bytes(frame(_rlds_example(3, 4)))
    ep = read_episode(path, LIMITS)
    assert (ep.episode_id, len(ep.steps)) == ("rlds_7", 3)
    assert ep.steps[1].observation == {"state": [4.0, 5.0, 6.0, 7.0], "instruction": "go"}
    assert ep.steps[2].action == {"command": [2.0, 2.5]}
    assert ep.steps[2].reward == 1.0 and ep.steps[2].is_terminal
    assert ep.steps[0].step_metadata == {"discount": 1.0}


def test_standard_rlds_tfrecord_uses_features_json(tmp_path: Path) -> None:
    features = {
        "featuresDict": {
            "features": {
                "steps": {
                    "sequence": {
                        "feature": {
                            "featuresDict": {
                                "features": {
                                    "action": {"tensor": {"shape": {"dimensions": ["2"]}}},
                                    "observation": {
                                        "featuresDict": {
                                            "features": {
                                                "state": {
                                                    "tensor": {"shape": {"dimensions": ["2", "2"]}}
                                                },
                                            }
                                        }
                                    },
                                    "reward": {"tensor": {"shape": {}}},
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert tfds_shapes(features) == {
        "steps/action": (2,),
        "steps/observation/state": (2, 2),
        "steps/reward": (),
    }
    (tmp_path / "features.json").write_text(json.dumps(features))
    path = tmp_path / "rlds.tfrecord"
    path.write_bytes(frame(_rlds_example(3, 4)))
    assert read_episode(path, LIMITS).steps[2].observation["state"] == [8.0, 9.0, 10.0, 11.0]
    path.write_bytes(frame(_rlds_example(3, 3)))  # 9 values cannot be 3 x (2 x 2)
    with pytest.raises(EpisodeError, match=r"steps/observation/state: 9 values, expected 3 steps"):
        read_episode(path, LIMITS)


def test_validate_episode_deep_walks_observations(tmp_path: Path) -> None:
    ep = read_episode(write_a(tmp_path, "ok", [step(0), step(1)]), LIMITS)
    ep.steps[1].observation["robot_state"]["speed"] = float("inf")
    validate_episode(ep)  # the shallow pass trusts the reader's parse-time check
    with pytest.raises(EpisodeError, match=r"^step 1: observation.robot_state.speed: not a finite"):
        validate_episode(ep, deep=True)


def test_line_limit_holds_across_read_blocks(tmp_path: Path) -> None:
    limits = IngestConfig(max_line_bytes=1000)
    d = write_a(tmp_path, "long", [step(0)])
    shard = d / "steps" / "000000.jsonl"
    line = json.dumps(step(1))
    padded = json.dumps(step(2, note="x" * (1000 - len(line) - 12)))
    assert len(padded) <= 1000
    # a 1.5 MB line with no newline: rejected at the first block, never held whole
    shard.write_text(json.dumps(step(0)) + "\n" + padded + "\r\n" + "[" * 1_500_000)
    with pytest.raises(EpisodeError, match=r"^steps/000000.jsonl: line 3: longer than 1000 bytes"):
        read_episode(d, limits)
    shard.write_text(json.dumps(step(0)) + "\n" + padded + "\r\n")
    assert len(read_episode(d, limits).steps) == 2
