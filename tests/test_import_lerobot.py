"""``continuon-trainer import lerobot``: real LeRobot v2.1 and v3.0 folders built with pyarrow
following the public layout, imported through the real CLI and the library function, then read
back with the daemon's own episode reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from tests.import_checks import read_back, train_through_job  # noqa: E402
from trainer_core.config import IngestConfig  # noqa: E402
from trainer_core.importers.common import SourceError  # noqa: E402
from trainer_core.importers.lerobot import import_lerobot  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / ".venv" / "bin" / "continuon-trainer"
JOINTS = ["shoulder", "elbow", "gripper"]
TASKS = ["pick up the red cube", "open the drawer"]
FPS = 10
FRAMES = {0: 5, 1: 4, 2: 6}  # episode index -> frames


def state_of(ep: int, f: int) -> list[float]:
    return [f / 100, ep / 10, 1.0]


def action_of(ep: int, f: int) -> list[float]:
    return [ep + f / 10, -f / 10, 0.5]


def task_of(ep: int) -> int:
    return ep % 2


def _features(vector_names: Any = JOINTS) -> dict[str, Any]:
    scalar = {"shape": [1], "names": None}
    return {
        "action": {"dtype": "float32", "shape": [3], "names": JOINTS},
        "observation.state": {"dtype": "float32", "shape": [3], "names": vector_names},
        "observation.velocity": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.front": {
            "dtype": "video",
            "shape": [48, 64, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.height": 48, "video.width": 64, "video.codec": "av1"},
        },
        "observation.images.wrist": {
            "dtype": "video",
            "shape": [48, 64, 3],
            "names": ["height", "width", "channels"],
        },
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
        "next.reward": {"dtype": "float32", **scalar},
    }


def _frame_table(episodes: list[int], first_index: int, fixed_size: bool) -> Any:
    """Frames of ``episodes``, each episode's rows written in reverse frame order so the
    importer has to sort them."""
    cols: dict[str, list] = {k: [] for k in _features() if "images" not in k}
    index = first_index
    starts = {}
    for ep in episodes:
        starts[ep] = index
        index += FRAMES[ep]
    for ep in episodes:
        for f in reversed(range(FRAMES[ep])):
            cols["action"].append(action_of(ep, f))
            cols["observation.state"].append(state_of(ep, f))
            cols["observation.velocity"].append([0.1 * f, -0.1 * f])
            cols["timestamp"].append(f / FPS)
            cols["frame_index"].append(f)
            cols["episode_index"].append(ep)
            cols["index"].append(starts[ep] + f)
            cols["task_index"].append(task_of(ep))
            cols["next.reward"].append(1.0 if f == FRAMES[ep] - 1 else 0.0)
    vec = pa.list_(pa.float32(), 3) if fixed_size else pa.list_(pa.float32())
    types = {
        "action": vec,
        "observation.state": vec,
        "observation.velocity": pa.list_(pa.float32()),
        "timestamp": pa.float32(),
        "next.reward": pa.float32(),
    }
    return pa.table({k: pa.array(v, type=types.get(k, pa.int64())) for k, v in cols.items()})


def make_v21(root: Path, names: Any = JOINTS) -> Path:
    """A LeRobot v2.1 dataset: one parquet file per episode, JSON-lines metadata."""
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "so100",
        "total_episodes": len(FRAMES),
        "total_frames": sum(FRAMES.values()),
        "total_tasks": len(TASKS),
        "total_videos": 2 * len(FRAMES),
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": "0:2", "test": "2:3"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": (
            "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        ),
        "features": _features(names),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    (root / "meta" / "episodes.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": ep, "tasks": [TASKS[task_of(ep)]], "length": n}) + "\n"
            for ep, n in FRAMES.items()
        )
    )
    index = 0
    for ep in FRAMES:
        path = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table([ep], index, fixed_size=False), path)
        index += FRAMES[ep]
    return root


def make_v30(root: Path) -> Path:
    """A LeRobot v3.0 dataset: episodes 0 and 1 share data file 0, episode 2 is in file 1;
    tasks in a pandas-style parquet (task text in the unnamed index)."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0",
        "robot_type": "koch",
        "total_episodes": len(FRAMES),
        "total_frames": sum(FRAMES.values()),
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": FPS,
        "splits": {"train": "0:3"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": _features(),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    tasks = pa.table(
        {"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": TASKS}
    ).replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(tasks, root / "meta" / "tasks.parquet")
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(_frame_table([0, 1], 0, True), root / "data/chunk-000/file-000.parquet")
    pq.write_table(
        _frame_table([2], FRAMES[0] + FRAMES[1], True), root / "data/chunk-000/file-001.parquet"
    )
    rows: dict[str, list] = {
        c: []
        for c in (
            "episode_index",
            "tasks",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        )
    }
    for key in ("front", "wrist"):
        for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
            rows[f"videos/observation.images.{key}/{c}"] = []
    start = 0
    for ep, n in FRAMES.items():
        file = 0 if ep < 2 else 1
        start_in_file = 0 if ep != 1 else FRAMES[0]
        rows["episode_index"].append(ep)
        rows["tasks"].append([TASKS[task_of(ep)]])
        rows["length"].append(n)
        rows["data/chunk_index"].append(0)
        rows["data/file_index"].append(file)
        rows["dataset_from_index"].append(start)
        rows["dataset_to_index"].append(start + n)
        for key in ("front", "wrist"):
            pre = f"videos/observation.images.{key}/"
            rows[pre + "chunk_index"].append(0)
            rows[pre + "file_index"].append(file)
            rows[pre + "from_timestamp"].append(start_in_file / FPS)
            rows[pre + "to_timestamp"].append((start_in_file + n) / FPS)
        start += n
    pq.write_table(pa.table(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    return root


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "daemon.cli"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )


def raw_steps(episode_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (episode_dir / "steps/000000.jsonl").read_text().splitlines()
    ]


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of everything under ``path``: proves nothing was rewritten."""
    return {
        str(p.relative_to(path)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


# --- happy paths ------------------------------------------------------------------------------


def test_cli_imports_v21_dataset_and_daemon_reader_accepts_it(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "so100_pick")
    out = tmp_path / "episodes"
    proc = run_cli("import", "lerobot", str(src), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 episode(s) written, 0 already present" in proc.stdout
    assert f"{sum(FRAMES.values())} step(s)" in proc.stdout

    episodes = read_back(out)
    assert sorted(episodes) == [f"lerobot-so100_pick-ep{ep:06d}" for ep in FRAMES]
    for ep, n in FRAMES.items():
        e = episodes[f"lerobot-so100_pick-ep{ep:06d}"]
        assert e.layout == "A"
        assert len(e.steps) == n
        # Rows were stored in reverse: the importer orders them by frame_index.
        for f, step in enumerate(e.steps):
            # float32 cells come back as their shortest decimal (0.1, not 0.100000001...).
            assert step.action["command"] == action_of(ep, f)
            rs = step.observation["robot_state"]
            assert rs["joint_positions"] == state_of(ep, f)
            assert rs["joint_names"] == JOINTS
            assert step.observation["named_state"]["elbow"] == pytest.approx(ep / 10, rel=1e-6)
            assert step.observation["velocity"] == pytest.approx([0.1 * f, -0.1 * f], rel=1e-6)
            assert step.observation["language_instruction"] == TASKS[task_of(ep)]
            assert step.reward == (1.0 if f == n - 1 else 0.0)
            assert (step.is_first, step.is_last, step.is_terminal) == (
                f == 0,
                f == n - 1,
                f == n - 1,
            )
            assert step.step_metadata["lerobot_frame_index"] == str(f)
            rgb = step.observation["media"]["rgb"]
            assert (
                rgb["uri"]
                == (src / f"videos/chunk-000/observation.images.front/episode_{ep:06d}.mp4")
                .resolve()
                .as_uri()
            )
            assert rgb["timestamp_ns"] == f * 100_000_000
            wrist = step.observation["media"]["cameras"]["observation.images.wrist"]
            assert "observation.images.wrist" in wrist["uri"]
        tags = e.metadata["tags"]
        assert "origin:lerobot:so100_pick" in tags
        assert f"instruction:{TASKS[task_of(ep)]}" in tags
        assert ("hf.split:train" in tags) == (ep < 2)
        assert ("hf.split:test" in tags) == (ep == 2)
        assert e.metadata["robot_model"] == "so100"
    raw = raw_steps(out / "lerobot-so100_pick-ep000001")
    assert [s["timestamp"] for s in raw] == pytest.approx([f / FPS for f in range(FRAMES[1])])
    assert [s["step_index"] for s in raw] == list(range(FRAMES[1]))
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging dir left behind"


def test_v30_episodes_located_by_index_ranges(tmp_path: Path) -> None:
    src = make_v30(tmp_path / "koch_drawer")
    out = tmp_path / "episodes"
    summary = import_lerobot(src, out)
    assert len(summary.written) == 3 and summary.skipped == []
    assert summary.steps == sum(FRAMES.values())
    episodes = read_back(out)
    for ep, n in FRAMES.items():
        e = episodes[f"lerobot-koch_drawer-ep{ep:06d}"]
        assert [s.step_metadata["lerobot_frame_index"] for s in e.steps] == [
            str(f) for f in range(n)
        ]
        for f, step in enumerate(e.steps):
            assert step.action["command"] == pytest.approx(action_of(ep, f), rel=1e-6)
            assert step.action["named"]["gripper"] == pytest.approx(0.5)
            assert step.observation["language_instruction"] == TASKS[task_of(ep)]
        # Episode 1 starts half a second into the shared video file of episodes 0 and 1.
        offset = FRAMES[0] / FPS if ep == 1 else 0.0
        rgb = e.steps[2].observation["media"]["rgb"]
        assert rgb["timestamp_ns"] == round((offset + 2 / FPS) * 1e6) * 1000
        file = 0 if ep < 2 else 1
        assert rgb["uri"].endswith(f"videos/observation.images.front/chunk-000/file-{file:03d}.mp4")
        assert "hf.split:train" in e.metadata["tags"]
        assert e.metadata["provenance"]["data_file"] == f"data/chunk-000/file-{file:03d}.parquet"


def test_folder_of_datasets_is_walked_and_reimport_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "hub"
    make_v21(src / "lerobot" / "pick")
    make_v30(src / "someone" / "drawer")
    (src / ".cache").mkdir()
    out = tmp_path / "episodes"
    first = import_lerobot(src, out)
    assert len(first.written) == 6
    assert {p.name.rsplit("-", 1)[0] for p in out.iterdir()} == {
        "lerobot-pick",
        "lerobot-drawer",
    }
    before = tree(out)

    proc = run_cli("import", "lerobot", str(src), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0 episode(s) written, 6 already present and skipped" in proc.stdout
    assert tree(out) == before


def test_same_id_with_different_content_is_refused_not_overwritten(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "pick")
    out = tmp_path / "episodes"
    import_lerobot(src, out)
    victim = out / "lerobot-pick-ep000001" / "steps" / "000000.jsonl"
    victim.write_text(victim.read_text().replace("open the drawer", "OPEN THE DRAWER"))
    shutil.rmtree(out / "lerobot-pick-ep000000")
    before = tree(out)
    with pytest.raises(SourceError, match=r"lerobot-pick-ep000001.*different content"):
        import_lerobot(src, out)
    assert tree(out) == before  # not even the missing episode 0 came back


def test_steps_over_the_ingest_limit_are_refused_before_writing(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "pick")
    with pytest.raises(SourceError, match=r"ingest\.max_steps"):
        import_lerobot(src, tmp_path / "episodes", IngestConfig(max_steps=5))
    assert not (tmp_path / "episodes").exists()


# --- malformed sources: precise error, nothing written ------------------------------------------


def _drop_info(root: Path) -> str:
    (root / "meta" / "info.json").unlink()
    return "meta/info.json: missing"


def _rename_action_column(root: Path) -> str:
    path = root / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    pq.write_table(
        table.rename_columns(["actions" if c == "action" else c for c in table.column_names]), path
    )
    return "episode_000001.parquet: missing column(s) ['action']"


def _short_action(root: Path) -> str:
    path = root / "data/chunk-000/episode_000002.parquet"
    table = pq.read_table(path)
    short = pa.array([[0.0, 1.0]] * table.num_rows, pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("action"), "action", short), path)
    return "episode_000002.parquet (row 5, column 'action'): 2 values, info.json declares 3"


def _broken_episodes_line(root: Path) -> str:
    path = root / "meta" / "episodes.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-1]  # drop the closing brace
    path.write_text("\n".join(lines) + "\n")
    return "meta/episodes.jsonl:2:"


def _garbage_parquet(root: Path) -> str:
    (root / "data/chunk-000/episode_000000.parquet").write_bytes(b"PAR1 not really")
    return "episode_000000.parquet: not a readable parquet file"


def _names_mismatch(root: Path) -> str:
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["names"] = ["a", "b"]
    (root / "meta/info.json").write_text(json.dumps(info))
    return "info.json (features.action): 2 names for shape [3]"


def _nan_state(root: Path) -> str:
    path = root / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    values = table.column("observation.state").to_pylist()
    values[2] = [float("nan"), 0.0, 0.0]
    col = pa.array(values, pa.list_(pa.float32()))
    pq.write_table(
        table.set_column(table.column_names.index("observation.state"), "observation.state", col),
        path,
    )
    return "episode_000001.parquet (row 2, column 'observation.state'[0]): value is not finite"


def _v3_range_mismatch(root: Path) -> str:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    to = table.column("dataset_to_index").to_pylist()
    to[0] += 1
    pq.write_table(
        table.set_column(
            table.column_names.index("dataset_to_index"), "dataset_to_index", pa.array(to)
        ),
        path,
    )
    return "file-000.parquet: episode 0 has 5 frames here, its metadata"


def _v3_no_tasks(root: Path) -> str:
    (root / "meta" / "tasks.parquet").unlink()
    return "meta/tasks.parquet: missing parquet file"


@pytest.mark.parametrize(
    ("make", "break_it"),
    [
        (make_v21, _drop_info),
        (make_v21, _rename_action_column),
        (make_v21, _short_action),
        (make_v21, _broken_episodes_line),
        (make_v21, _garbage_parquet),
        (make_v21, _names_mismatch),
        (make_v21, _nan_state),
        (make_v30, _v3_range_mismatch),
        (make_v30, _v3_no_tasks),
    ],
)
def test_malformed_dataset_is_named_and_nothing_is_written(
    tmp_path: Path, make: Any, break_it: Any
) -> None:
    # A good dataset first in walk order: validation must finish before anything is written.
    src = tmp_path / "hub"
    make_v21(src / "a_good")
    expected = break_it(make(src / "b_bad"))
    out = tmp_path / "episodes"
    with pytest.raises(SourceError) as err:
        import_lerobot(src, out)
    assert expected in str(err.value)
    assert str(src / "b_bad") in str(err.value)
    assert not out.exists()


def test_cli_reports_malformed_source_on_stderr_with_exit_2(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "pick")
    _rename_action_column(src)
    out = tmp_path / "episodes"
    proc = run_cli("import", "lerobot", str(src), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert "episode_000001.parquet: missing column(s) ['action']" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert proc.stdout == ""
    assert not out.exists()


def test_folder_without_any_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SourceError, match="no LeRobot dataset found"):
        import_lerobot(tmp_path / "empty", tmp_path / "episodes")


def test_without_pyarrow_the_error_names_the_extra(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "pick")
    # A real interpreter in which pyarrow cannot be imported (as on a robot without the extra).
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from daemon.cli import main\n"
        f"sys.exit(main(['import', 'lerobot', {str(src)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pip install 'continuon-trainer[import]'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_importers_import_neither_torch_nor_pyarrow_up_front() -> None:
    code = (
        "import sys, trainer_core.importers.lerobot, trainer_core.importers.donkey\n"
        "bad = sorted(m for m in ('torch', 'pyarrow', 'numpy') if m in sys.modules)\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the imported episodes are training data ----------------------------------------------------

TRAIN_YAML = """
root: {root}
features:
  observation:
    - path: observation.robot_state.joint_positions
      names: [shoulder, elbow, gripper]
  action:
    - path: action.command
      names: [cmd_shoulder, cmd_elbow, cmd_gripper]
  bounds: {{cmd_shoulder: [-5, 5], cmd_elbow: [-5, 5], cmd_gripper: [-5, 5]}}
safety:
  from_manifest: false
  proximity_path: null
  clamp_bounds: {{cmd_shoulder: [-5, 5], cmd_elbow: [-5, 5], cmd_gripper: [-5, 5]}}
  max_jump: 5.0
job:
  max_steps: 12
  batch_size: 4
  threads: 1
  log_every_steps: 4
"""


def test_imported_episodes_train_through_the_job(tmp_path: Path) -> None:
    """Import, make a base with the real CLI, then run the real job child on the episodes."""
    src = make_v30(tmp_path / "koch")
    out = tmp_path / "episodes"
    import_lerobot(src, out)
    proc, result = train_through_job(
        tmp_path,
        TRAIN_YAML.format(root=tmp_path),
        [out / "lerobot-koch-ep000000", out / "lerobot-koch-ep000001"],
        [out / "lerobot-koch-ep000002"],
    )
    assert proc.returncode == 0 and result.status == "done", (result.reason, proc.stderr[-2000:])
    assert result.train_episodes == 2 and result.skipped == {}
    assert result.train_samples == FRAMES[0] + FRAMES[1]
    assert result.steps == 12 and result.loss_last is not None
    assert result.metrics is not None


# --- camera frames: image features and videos --------------------------------------------------

from tests.test_camera_frames import (  # noqa: E402
    VIDEO_COLOURS,
    close,
    colour_of,
    encode,
    solid,
    write_mp4,
)
from trainer_core.features import FeatureError, read_split  # noqa: E402
from trainer_core.frames import episode_frames  # noqa: E402
from trainer_core.image_config import ImageFeature  # noqa: E402
from trainer_core.rlds import read_episode  # noqa: E402

TOP = "observation.images.top"


def _add_image_feature(root: Path, corrupt_at: tuple[int, int] | None = None) -> None:
    """Give the v2.1 dataset an image feature: episode 1 by path (images/...), the others as
    bytes in the parquet cell (LeRobot's struct of bytes/path)."""
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"] = {TOP: {"dtype": "image", "shape": [12, 16, 3], "names": None}} | {
        k: v for k, v in info["features"].items() if v.get("dtype") != "video"
    }
    del info["video_path"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "images").mkdir()
    for ep in FRAMES:
        path = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        table = pq.read_table(path)
        cells = []
        for f in table.column("frame_index").to_pylist():
            data = encode(solid(VIDEO_COLOURS[f % 5]), "PNG")
            if (ep, f) == corrupt_at:
                data = data[:40]
            if ep == 1:
                rel = f"images/ep{ep}_{f}.png"
                (root / rel).write_bytes(data)
                cells.append({"bytes": None, "path": rel})
            else:
                cells.append({"bytes": data, "path": None})
        typ = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        pq.write_table(table.append_column(TOP, pa.array(cells, type=typ)), path)


def test_image_features_are_copied_into_blobs_and_train_as_frames(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "cam")
    _add_image_feature(src)
    out = tmp_path / "episodes"
    summary = import_lerobot(src, out)
    assert len(summary.written) == 3
    shutil.move(str(out), str(tmp_path / "moved"))  # self-contained: frames travel along
    out = tmp_path / "moved"
    spec = ImageFeature(size=(12, 16))
    for ep, n in FRAMES.items():
        episode_dir = out / f"lerobot-cam-ep{ep:06d}"
        rgb = raw_steps(episode_dir)[0]["observation"]["media"]["rgb"]
        assert rgb == {"uri": "blobs/images_top_000000.png", "width": 16, "height": 12,
                       "format": "png"}  # fmt: skip
        frames = episode_frames(read_episode(episode_dir, IngestConfig()), spec)
        for f in range(n):
            assert close(colour_of(frames, f), VIDEO_COLOURS[f % 5], tol=1), (ep, f)
    meta = json.loads((out / "lerobot-cam-ep000000" / "metadata.json").read_text())
    assert meta["provenance"]["image_keys"] == [TOP]
    assert meta["provenance"]["features_not_imported"] == []
    import yaml

    from trainer_core.config import FeaturesConfig

    raw = yaml.safe_load(TRAIN_YAML.format(root=tmp_path))["features"]
    features = FeaturesConfig.model_validate({**raw, "images": [{"size": [12, 16]}]})
    split = read_split(sorted(out.iterdir()), features, IngestConfig(), frame_cache=tmp_path / "c")
    assert split.skipped == {} and len(split.arrays) == sum(FRAMES.values())


def test_a_corrupt_image_cell_is_refused_by_file_row_and_column(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "cam")
    _add_image_feature(src, corrupt_at=(2, 3))
    out = tmp_path / "episodes"
    with pytest.raises(SourceError, match=r"episode_000002\.parquet row \d+, column "
                       r"'observation\.images\.top'.*corrupt image"):  # fmt: skip
        import_lerobot(src, out)
    assert not out.exists() or not any(out.iterdir())


def test_videos_decode_at_their_timestamps_through_the_frame_path(tmp_path: Path) -> None:
    src = make_v21(tmp_path / "vid")
    for ep, n in FRAMES.items():
        for key, colours in (("front", VIDEO_COLOURS), ("wrist", VIDEO_COLOURS[::-1])):
            path = src / f"videos/chunk-000/observation.images.{key}/episode_{ep:06d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_mp4(path, [colours[(f + ep) % 5] for f in range(n)], fps=FPS)
    out = tmp_path / "episodes"
    import_lerobot(src, out)
    spec = ImageFeature(size=(12, 16))
    for ep, n in FRAMES.items():
        frames = episode_frames(read_episode(out / f"lerobot-vid-ep{ep:06d}", IngestConfig()), spec)
        for f in range(n):
            assert close(colour_of(frames, f), VIDEO_COLOURS[(f + ep) % 5], tol=12), (ep, f)
    # A missing video is a reason naming the episode, the step and the file.
    gone = src / "videos/chunk-000/observation.images.front/episode_000001.mp4"
    gone.unlink()
    with pytest.raises(FeatureError, match=r"lerobot-vid-ep000001 .* step 0: frame .*"
                       r"episode_000001\.mp4: does not exist"):  # fmt: skip
        episode_frames(read_episode(out / "lerobot-vid-ep000001", IngestConfig()), spec)
