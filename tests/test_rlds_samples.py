"""Every continuonos sample ingests with its real values, or is rejected by name (the corrupt
gzip files), through the public reader API."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import pytest

from trainer_core.config import IngestConfig
from trainer_core.rlds import EpisodeError, is_episode_path, read_episode

LIMITS = IngestConfig()


def _num(text: str) -> float:
    return float(text)


def test_pi5_follow_synthetic_json(samples: Path) -> None:
    ep = read_episode(samples / "episodes" / "pi5_follow_synthetic.json", LIMITS)
    assert ep.layout == "B"
    assert ep.episode_id == "pi5_follow_synthetic"
    assert len(ep.steps) == 5
    s0, s4 = ep.steps[0], ep.steps[-1]
    assert s0.action["command"] == [0.05, 0.1]
    assert s4.action["command"] == [0.03, 0.18]
    assert s0.step_metadata["human_distance_m"] == "3.5"  # kept as the producer wrote it
    assert _num(s0.step_metadata["human_distance_m"]) == 3.5
    assert _num(s4.step_metadata["human_distance_m"]) == 2.4
    assert s0.observation["robot_state"]["joint_positions"] == [0.0, 0.0]
    assert [s.is_first for s in ep.steps] == [True, False, False, False, False]
    assert [s.is_last for s in ep.steps] == [False, False, False, False, True]
    assert s0.reward == 0.0
    assert ep.metadata["xr_mode"] == "trainer"
    assert s0.as_mapping()["step_metadata"]["human_visible"] == "true"


def test_studio_mock_editor_json(samples: Path) -> None:
    ep = read_episode(samples / "episodes" / "studio_mock_editor.json", LIMITS)
    assert (ep.layout, len(ep.steps)) == ("B", 3)
    assert ep.steps[0].action["command"] == [0.0, 0.1, 0.0, 0.0, -0.1, 0.0]
    assert len(ep.steps[2].action["command"]) == 6
    assert ep.steps[2].action["command"][1] == pytest.approx(0.3)
    assert ep.steps[0].action["annotation"]["kind"] == "mock_note"
    assert [s.is_terminal for s in ep.steps] == [False, False, True]
    assert ep.steps[0].observation["robot_state"]["joint_positions"][2] == 0.2
    assert ep.steps[0].step_metadata["language_instruction"] == "Mock Studio episode"


@pytest.mark.parametrize(
    ("name", "episode_id", "actions"),
    [
        (
            "follow_user_mr_v1",
            "follow_user_mr_v1",
            [{"steering": 0.0, "throttle": 0.1}, {"steering": 0.05, "throttle": 0.12}],
        ),
        (
            "follow_user_mr_v2",
            "follow_user_mr_v2",
            [
                {"steering": 0.02, "throttle": 0.08},
                {"steering": 0.03, "throttle": 0.1},
                {"steering": 0.02, "throttle": 0.11},
            ],
        ),
        ("stack_boxes_vr", "stack_boxes_vr_001", [{"lift": 0.1, "yaw": 0.0}]),
    ],
)
def test_task_library_directories(
    samples: Path, name: str, episode_id: str, actions: list[dict[str, float]]
) -> None:
    ep = read_episode(samples / "episodes" / name, LIMITS)
    assert ep.layout == "C"
    assert ep.episode_id == episode_id
    assert [s.action for s in ep.steps] == actions
    assert ep.steps[0].is_first and ep.steps[-1].is_last
    assert ep.steps[0].observation["pose"] == [0, 0, 0]
    assert ep.steps[-1].step_metadata["timestamp_micros"] == 100_000 * (len(actions) - 1)
    assert ep.metadata["xr_mode"] in ("mixed_reality", "virtual_reality")


def test_follow_user_v2_pose_and_metadata(samples: Path) -> None:
    ep = read_episode(samples / "episodes" / "follow_user_mr_v2", LIMITS)
    assert ep.steps[2].observation["pose"] == [0.3, 0.02, 0.03]
    assert ep.metadata["task_name"] == "follow_user"
    assert ep.metadata["control_role"] == "pilot"


def test_raw_tfrecord_pi5_follow(samples: Path) -> None:
    ep = read_episode(samples / "tfrecord_raw" / "pi5_follow_synthetic.tfrecord", LIMITS)
    assert (ep.layout, ep.episode_id, len(ep.steps)) == ("D", "pi5_follow_synthetic", 5)
    assert ep.steps[0].action == {"steering": 0.05, "throttle": 0.1}
    assert ep.steps[4].action == {"steering": 0.03, "throttle": 0.17}
    assert ep.steps[1].step_metadata == {"human_distance_m": 3.2, "human_visible": True}
    assert ep.steps[3].observation["robot_state"]["pose"] == {"theta": 0.04, "x": 0.2, "y": 0.02}
    assert ep.steps[4].is_last and not ep.steps[4].is_terminal


def test_raw_tfrecord_sample_pi5_mock(samples: Path) -> None:
    ep = read_episode(samples / "tfrecord_raw" / "sample_pi5_mock.tfrecord", LIMITS)
    assert (ep.episode_id, len(ep.steps)) == ("sample_pi5_mock", 2)
    assert ep.steps[0].action["command"] == [0.2, 0.1]
    assert ep.steps[1].action["command"] == [0.18, 0.1]
    assert [s.is_terminal for s in ep.steps] == [False, True]
    assert ep.steps[0].observation["depth_frame_id"] == "cam_0001"


def test_raw_tfrecord_studio_mock_editor(samples: Path) -> None:
    ep = read_episode(samples / "tfrecord_raw" / "studio_mock_editor.tfrecord", LIMITS)
    assert (ep.episode_id, len(ep.steps)) == ("studio_mock_editor", 3)
    cmd = ep.steps[2].action["command"]
    assert len(cmd) == 6 and math.isclose(cmd[1], 0.3) and math.isclose(cmd[4], -0.3)
    assert ep.steps[1].step_metadata["safety_violations"] == "none"
    assert ep.steps[0].observation["audio"]["sample_rate_hz"] == 16000


def _read_in_child(path: str, queue: multiprocessing.Queue) -> None:
    try:
        read_episode(Path(path), LIMITS)
        queue.put(("ok", ""))
    except EpisodeError as exc:
        queue.put(("rejected", str(exc)))
    except BaseException as exc:  # anything else is a failure of the reader
        queue.put(("crash", repr(exc)))


@pytest.mark.parametrize(
    "name",
    [
        "pi5_follow_synthetic.tfrecord.gz",
        "sample_pi5_mock.tfrecord.gz",
        "studio_mock_editor.tfrecord.gz",
    ],
)
def test_corrupt_gzip_tfrecords_rejected_by_name_without_hanging(samples: Path, name: str) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(str(samples / "tfrecord" / name), queue))
    child.start()
    child.join(timeout=20)
    if child.is_alive():
        child.kill()
        pytest.fail(f"reading {name} hung")
    verdict, reason = queue.get(timeout=5)
    assert verdict == "rejected", reason
    assert reason.startswith(f"{name}: corrupt gzip file")
    assert "not gzip data" in reason


def test_samples_are_episode_paths(samples: Path) -> None:
    names = sorted(p.name for p in (samples / "episodes").iterdir() if is_episode_path(p))
    assert names == [
        "follow_user_mr_v1",
        "follow_user_mr_v2",
        "pi5_follow_synthetic.json",
        "stack_boxes_vr",
        "studio_mock_editor.json",
    ]
    assert all(is_episode_path(p) for p in (samples / "tfrecord").iterdir())
    assert not is_episode_path(samples / "README.md")
