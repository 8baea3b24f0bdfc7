"""A stock Donkeycar v2 tub, end to end through the real daemon, to a promoted camera adapter.

The tub is written here in Donkeycar's own format (five-line CRLF ``manifest.json``, JSON-line
catalogs with their ``.catalog_manifest``, ``images/*.jpg``, a deleted record), with frames of
the synthetic lane camera and the teacher's steering as ``user/angle``. It is imported with the
real CLI (frames copied into each episode's ``blobs/``), validated, and the daemon trains and
promotes a camera adapter. A tub with one corrupted JPEG is refused, naming that file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.daemon_harness import (
    CLI,
    REPO,
    make_root,
    start_daemon,
    status,
    stop,
    wait_until,
    write_mode,
)
from trainer_core.base import pretrain_base
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig
from trainer_core.image_config import ImageFeature
from trainer_core.synth_camera import CameraOptions, render, simulate, write_camera_episodes

pytestmark = pytest.mark.slow

CRLF = "\r\n"
T0 = 1_700_000_000_000
FEATURES = FeaturesConfig(observation=[], images=[ImageFeature(size=(30, 40))])
POLICY = PolicyConfig(family="cnn", conv=[8, 16, 16], hidden=[32, 16])
LORA = LoraConfig(target_modules=["dense.0", "dense.1", "head"])
CAMERA_CONFIG = {
    "features": FEATURES.model_dump(mode="json"),
    "policy": {"family": "cnn", "conv": [8, 16, 16], "hidden": [32, 16]},
    "lora": {"target_modules": ["dense.0", "dense.1", "head"]},
    "job": {"threads": 2, "max_steps": 250, "max_wall_time_s": 180},
}


def jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_tub(root: Path, sessions: int, per_session: int, opts: CameraOptions, seed: int) -> Path:
    """A Donkeycar 5.x (v2) tub: what ``donkeycar.parts.tub_v2.Tub`` writes."""
    (root / "images").mkdir(parents=True)
    records, t = [], T0
    for s in range(sessions):
        session = f"24-01-0{s + 1}_0"
        rows = simulate(per_session, np.random.default_rng([seed, s]), opts)
        t += 120_000  # a new session starts minutes later
        for row in rows:
            i = len(records)
            name = f"{i}_cam_image_array_.jpg"
            (root / "images" / name).write_bytes(
                jpeg(render(row["e"], row["psi"], row["kappa"], opts))
            )
            t += 50
            records.append(
                {
                    "_index": i,
                    "_session_id": session,
                    "_timestamp_ms": t,
                    "cam/image_array": name,
                    "user/angle": round(float(np.clip(row["steering"], -1, 1)), 4),
                    "user/throttle": round(row["throttle"], 4),
                    "user/mode": "user",
                }
            )
    max_len = 1000
    paths = []
    for c in range(0, len(records), max_len):
        name = f"catalog_{c // max_len}.catalog"
        lines = [json.dumps(r) + CRLF for r in records[c : c + max_len]]
        (root / name).write_text("".join(lines), newline="")
        side = {"path": name, "created_at": T0 / 1000, "start_index": c}
        side["line_lengths"] = [len(x) for x in lines]
        (root / f"{name}_manifest").write_text(json.dumps(side) + CRLF, newline="")
        paths.append(name)
    manifest = [
        ["cam/image_array", "user/angle", "user/throttle", "user/mode"],
        ["image_array", "float", "float", "str"],
        {},
        {"created_at": T0 / 1000, "sessions": {"all_full_ids": [], "last_id": sessions}},
        {
            "paths": paths,
            "current_index": len(records),
            "max_len": max_len,
            "deleted_indexes": [3],  # deleted in the tub UI: must not be trained on
        },
    ]
    (root / "manifest.json").write_text("".join(json.dumps(x) + CRLF for x in manifest), newline="")
    return root


def run_cli(root: Path, *args: str, config: Path | None = None):
    import subprocess

    cmd = [*CLI, "--root", str(root)] + (["--config", str(config)] if config else [])
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=240, cwd=REPO, env=os.environ
    )


@pytest.fixture(scope="module")
def camera_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cambase")
    first = write_camera_episodes(work / "first", 8, 60, seed=0)
    out = work / "base" / "policy.safetensors"
    pretrain_base(
        first, out, POLICY, FEATURES, JobConfig(threads=2), IngestConfig(), steps=400, seed=0
    )
    return out


def test_donkey_tub_imports_validates_and_trains_through_the_daemon(
    tmp_path: Path, camera_base: Path
) -> None:
    root, config = make_root(tmp_path, extra=CAMERA_CONFIG, base=camera_base)
    tub = write_tub(tmp_path / "car1" / "data", 8, 50, CameraOptions(steering_bias=0.35), seed=3)
    episodes = root / "rlds" / "episodes"
    done = run_cli(
        root, "import", "donkey-tub", str(tub), "--out", str(episodes), "--prefix", "car1"
    )
    assert done.returncode == 0, done.stderr
    assert "8 episode(s) written" in done.stdout, done.stdout
    first = sorted(episodes.iterdir())[0]
    assert first.name.startswith("donkey-car1-data-")
    assert len(list((first / "blobs").glob("*.jpg"))) == 49  # record 3 was deleted
    # Importing the parent folder finds the same tub: nothing is imported twice.
    again = run_cli(root, "import", "donkey-tub", str(tmp_path / "car1"), "--out", str(episodes))
    assert again.returncode == 0 and "0 episode(s) written, 8 already present" in again.stdout
    checked = run_cli(root, "validate", str(episodes), config=config)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        wait_until(lambda: status(root).get("pid"), 60, "the daemon's status file", log)
        write_mode(root, "idle")
        decided = wait_until(
            lambda: [
                d for d in status(root).get("last_decisions", []) if d["verdict"] != "preempted"
            ],
            300,
            "a decision",
            log,
        )[0]
        assert decided["verdict"] == "promoted", decided
        card = json.loads((root / "model" / "adapters" / "current" / "card.json").read_text())
        assert card["features"]["images"][0]["size"] == [30, 40]
        assert card["policy"]["family"] == "cnn"
        assert stop(proc) == 0
        # The promoted release drives an episode as the runtime would: one action per step.
        shown = run_cli(root, "predict", str(first), config=config)
        assert shown.returncode == 0, shown.stderr
        lines = [x for x in shown.stdout.splitlines() if x.startswith("step ")]
        assert len(lines) == 49 and "steering=" in lines[0] and "(recorded " in lines[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_corrupted_jpeg_is_refused_by_name(tmp_path: Path) -> None:
    tub = write_tub(tmp_path / "data", 1, 6, CameraOptions(), seed=1)
    bad = tub / "images" / "4_cam_image_array_.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a torn write on the SD card
    done = run_cli(tmp_path, "import", "donkey-tub", str(tub), "--out", str(tmp_path / "eps"))
    assert done.returncode != 0
    assert "4_cam_image_array_.jpg: corrupt image" in done.stderr, done.stderr
    assert not (tmp_path / "eps").exists() or not any((tmp_path / "eps").iterdir())
