"""``continuon-trainer import donkey-tub``: a real Donkeycar 5.x tub on disk (CRLF JSON-lines
manifest, catalogs and their manifests, images), imported through the real CLI and the library
function, read back with the daemon's own episode reader."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.import_checks import read_back, train_through_job
from trainer_core.importers.common import SourceError
from trainer_core.importers.donkey import import_tub, split_segments

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / ".venv" / "bin" / "continuon-trainer"
CRLF = "\r\n"  # what Donkeycar's datastore writes
T0 = 1_700_000_000_000
S0, S1 = "23-11-14_0", "23-11-14_1"
DELETED = 3
MAX_LEN = 6


def record_plan() -> list[dict[str, Any]]:
    """Session 0: records 0-7 every 50 ms with a 5 s pause before record 5; session 1: 8-11."""
    plan = []
    t = T0
    for i in range(12):
        if i == 5:
            t += 5_000
        elif i == 8:
            t += 60_000
        elif i:
            t += 50
        plan.append(
            {
                "_index": i,
                "_session_id": S0 if i < 8 else S1,
                "_timestamp_ms": t,
                "cam/image_array": f"{i}_cam_image_array_.jpg",
                "user/angle": round(-0.5 + i / 10, 3),
                "user/throttle": round(0.2 + i / 100, 3),
                "user/mode": "user" if i < 10 else "local_angle",
                "car/speed": i * 0.25,
            }
        )
    return plan


def jpeg_bytes(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A real 160x120 JPEG, as Donkeycar's camera part writes (different per seed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def make_tub(root: Path, records: list[dict[str, Any]] | None = None) -> Path:
    records = record_plan() if records is None else records
    (root / "images").mkdir(parents=True)
    inputs = ["cam/image_array", "user/angle", "user/throttle", "user/mode", "car/speed"]
    types = ["image_array", "float", "float", "str", "float"]
    catalogs = []
    for c in range(0, len(records), MAX_LEN):
        name = f"catalog_{c // MAX_LEN}.catalog"
        chunk = records[c : c + MAX_LEN]
        lines = [json.dumps(r, sort_keys=True) + CRLF for r in chunk]
        (root / name).write_text("".join(lines), newline="")
        side = {
            "path": f"catalog_{c // MAX_LEN}.catalog_manifest",
            "created_at": T0 / 1000,
            "start_index": c,
            "line_lengths": [len(x) for x in lines],
        }
        (root / f"catalog_{c // MAX_LEN}.catalog_manifest").write_text(
            json.dumps(side, sort_keys=True) + CRLF, newline=""
        )
        catalogs.append(name)
    for r in records:
        (root / "images" / r["cam/image_array"]).write_bytes(jpeg_bytes(r["_index"]))
    manifest = [
        inputs,
        types,
        {"track": "garage"},
        {
            "created_at": T0 / 1000,
            "sessions": {"all_full_ids": [S0, S1], "last_id": 1, "last_full_id": S1},
        },
        {
            "paths": catalogs,
            "current_index": len(records),
            "max_len": MAX_LEN,
            "deleted_indexes": [DELETED],
        },
    ]
    (root / "manifest.json").write_text("".join(json.dumps(x) + CRLF for x in manifest), newline="")
    return root


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "daemon.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def test_cli_imports_tub_one_episode_per_session_split_at_gaps(tmp_path: Path) -> None:
    tub = make_tub(tmp_path / "tub_garage")
    out = tmp_path / "episodes"
    proc = run_cli("import", "donkey-tub", str(tub), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 episode(s) written, 0 already present and skipped, 11 step(s)" in proc.stdout

    episodes = read_back(out)
    ids = {
        f"donkey-tub_garage-{S0}-000": [0, 1, 2, 4],  # record 3 is deleted
        f"donkey-tub_garage-{S0}-001": [5, 6, 7],  # after the 5 s pause
        f"donkey-tub_garage-{S1}-000": [8, 9, 10, 11],
    }
    assert sorted(episodes) == sorted(ids)
    plan = {r["_index"]: r for r in record_plan()}
    for eid, indexes in ids.items():
        e = episodes[eid]
        assert [int(s.step_metadata["donkey_index"]) for s in e.steps] == indexes
        for i, (step, idx) in enumerate(zip(e.steps, indexes, strict=True)):
            rec = plan[idx]
            assert step.action["command"] == [rec["user/angle"], rec["user/throttle"]]
            assert step.observation["named_state"] == {"car_speed": rec["car/speed"]}
            rgb = step.observation["media"]["rgb"]
            # Frames are copied into the episode (it moves as one folder), sizes recorded.
            assert rgb["uri"] == f"blobs/{rec['cam/image_array']}"
            assert (rgb["width"], rgb["height"]) == (160, 120)
            blob = out / eid / "blobs" / rec["cam/image_array"]
            assert blob.read_bytes() == (tub / "images" / rec["cam/image_array"]).read_bytes()
            assert rgb["timestamp_ns"] == rec["_timestamp_ms"] * 1_000_000
            assert step.observation["robot_state"]["wall_time_millis"] == rec["_timestamp_ms"]
            assert step.step_metadata["donkey_mode"] == rec["user/mode"]
            assert step.action["source"] == (
                "human_teleop" if rec["user/mode"] == "user" else "donkey_local_angle"
            )
            last = i == len(indexes) - 1
            assert (step.is_first, step.is_last, step.is_terminal) == (i == 0, last, last)
        session = S0 if indexes[0] < 8 else S1
        assert e.metadata["tags"] == [
            "origin:donkey:tub_garage",
            f"donkey.session:{session}",
            "donkeycar",
        ]
        assert e.metadata["start_time_unix_ms"] == plan[indexes[0]]["_timestamp_ms"]
        assert e.metadata["provenance"]["tub_metadata"] == {"track": "garage"}
    second = out / f"donkey-tub_garage-{S0}-001" / "steps/000000.jsonl"
    raw = json.loads(second.read_text().splitlines()[0])
    assert raw["timestamp"] == plan[5]["_timestamp_ms"] / 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging dir left behind"


def test_gap_is_configurable_and_reimport_writes_nothing(tmp_path: Path) -> None:
    tub = make_tub(tmp_path / "tub")
    out = tmp_path / "episodes"
    first = import_tub(tub, out, max_gap_s=10.0)
    assert sorted(first.written) == [f"donkey-tub-{S0}-000", f"donkey-tub-{S1}-000"]
    assert first.steps == 11
    before = tree(out)
    proc = run_cli(
        "import", "donkey-tub", str(tub), "--out", str(out), "--max-gap-s", "10", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "0 episode(s) written, 2 already present and skipped" in proc.stdout
    assert tree(out) == before


@pytest.mark.parametrize(
    ("gaps_ms", "max_gap_s", "expected"),
    [
        ([50, 50, 50], 2.0, [4]),
        ([50, 2000, 50], 2.0, [4]),  # exactly the limit: same episode
        ([50, 2001, 50], 2.0, [2, 2]),
        ([50, -10, 50], 2.0, [2, 2]),  # the clock went back: a new episode
        ([3000, 3000, 3000], 5.0, [4]),
    ],
)
def test_split_segments(gaps_ms: list[int], max_gap_s: float, expected: list[int]) -> None:
    from trainer_core.importers.donkey import _Record

    t, recs = 0, []
    for i in range(len(gaps_ms) + 1):
        t += gaps_ms[i - 1] if i else 0
        recs.append(_Record(i, "s", t, 0.0, 0.0, None, None, {}, f"c:{i}"))
    assert [len(s) for s in split_segments(recs, max_gap_s)] == expected


def test_tub_folder_walk_names_tubs_apart(tmp_path: Path) -> None:
    make_tub(tmp_path / "data" / "tub_a")
    make_tub(tmp_path / "data" / "tub_b")
    summary = import_tub(tmp_path / "data", tmp_path / "episodes")
    assert len(summary.written) == 6
    assert {w.split("-")[1] for w in summary.written} == {"tub_a", "tub_b"}


# --- malformed tubs: precise error, nothing written ---------------------------------------------


def _break_catalog_line(tub: Path) -> str:
    path = tub / "catalog_1.catalog"
    lines = path.read_bytes().decode().split(CRLF)
    lines[2] = lines[2][:25]  # torn record (a crash mid-write)
    path.write_text(CRLF.join(lines), newline="")
    return "catalog_1.catalog:3:"


def _deleted_out_of_range(tub: Path) -> str:
    path = tub / "manifest.json"
    lines = path.read_bytes().decode().split(CRLF)
    meta = json.loads(lines[4])
    meta["deleted_indexes"] = [3, 40]
    lines[4] = json.dumps(meta)
    path.write_text(CRLF.join(lines), newline="")
    return "manifest.json:5: deleted index 40 is out of range: records are 0..11"


def _missing_image(tub: Path) -> str:
    (tub / "images" / "9_cam_image_array_.jpg").unlink()
    return "catalog_1.catalog:4: image images/9_cam_image_array_.jpg does not exist"


def _missing_catalog(tub: Path) -> str:
    (tub / "catalog_1.catalog").unlink()
    return "catalog_1.catalog: missing catalog (listed in manifest.json line 5)"


def _short_manifest(tub: Path) -> str:
    path = tub / "manifest.json"
    path.write_text(CRLF.join(path.read_bytes().decode().split(CRLF)[:4]), newline="")
    return "manifest.json: 4 JSON lines; a tub manifest has 5"


def _no_throttle(tub: Path) -> str:
    path = tub / "catalog_0.catalog"
    lines = path.read_bytes().decode().split(CRLF)
    rec = json.loads(lines[1])
    del rec["user/throttle"]
    lines[1] = json.dumps(rec)
    path.write_text(CRLF.join(lines), newline="")
    return "catalog_0.catalog:2: record has no 'user/throttle'"


def _nan_angle(tub: Path) -> str:
    path = tub / "catalog_0.catalog"
    lines = path.read_bytes().decode().split(CRLF)
    lines[4] = lines[4].replace('"user/angle": -0.1', '"user/angle": NaN')
    path.write_text(CRLF.join(lines), newline="")
    return "catalog_0.catalog (line 5, 'user/angle'): value is not finite"


def _no_manifest(tub: Path) -> str:
    (tub / "manifest.json").unlink()
    return "manifest.json: missing"


def _broken_catalog_manifest(tub: Path) -> str:
    (tub / "catalog_0.catalog_manifest").write_text('{"path": "catalog_0.catalog_manifest", ')
    return "catalog_0.catalog_manifest:1:"


@pytest.mark.parametrize(
    "break_it",
    [
        _break_catalog_line,
        _deleted_out_of_range,
        _missing_image,
        _missing_catalog,
        _short_manifest,
        _no_throttle,
        _nan_angle,
        _no_manifest,
        _broken_catalog_manifest,
    ],
)
def test_malformed_tub_is_named_and_nothing_is_written(
    tmp_path: Path, break_it: Callable[[Path], str]
) -> None:
    make_tub(tmp_path / "data" / "a_good")
    expected = break_it(make_tub(tmp_path / "data" / "b_bad"))
    out = tmp_path / "episodes"
    with pytest.raises(SourceError) as err:
        import_tub(tmp_path / "data", out)
    assert expected in str(err.value)
    assert "b_bad" in str(err.value)
    assert not out.exists()


def test_deleted_record_with_a_torn_line_is_still_an_error(tmp_path: Path) -> None:
    # A line that does not parse cannot be known to be the deleted one: refuse, do not guess.
    tub = make_tub(tmp_path / "tub")
    path = tub / "catalog_0.catalog"
    lines = path.read_bytes().decode().split(CRLF)
    lines[DELETED] = lines[DELETED][:10]
    path.write_text(CRLF.join(lines), newline="")
    with pytest.raises(SourceError, match=r"catalog_0\.catalog:4:"):
        import_tub(tub, tmp_path / "episodes")


def test_cli_reports_broken_tub_on_stderr_with_exit_2(tmp_path: Path) -> None:
    tub = make_tub(tmp_path / "tub")
    expected = _break_catalog_line(tub)
    out = tmp_path / "episodes"
    proc = run_cli("import", "donkey-tub", str(tub), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "invalid JSON" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert not out.exists()


DONKEY_TRAIN_YAML = """
root: {root}
features:
  observation:
    - path: observation.named_state.car_speed
      names: [car_speed]
  action:
    - path: action.command
      names: [steering, throttle]
safety:
  from_manifest: false
  proximity_path: null
job:
  max_steps: 8
  batch_size: 2
  drop_last: false
  log_every_steps: 4
"""


def test_imported_tub_trains_through_the_job(tmp_path: Path) -> None:
    """A tub's episodes, with features pointing at what a tub records, run through the child."""
    out = tmp_path / "episodes"
    import_tub(make_tub(tmp_path / "tub"), out)
    episodes = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(episodes) >= 2
    proc, result = train_through_job(
        tmp_path, DONKEY_TRAIN_YAML.format(root=tmp_path), episodes[:-1], episodes[-1:]
    )
    assert proc.returncode == 0 and result.status == "done", (result.reason, proc.stderr[-2000:])
    assert result.skipped == {} and result.steps == 8 and result.metrics is not None
