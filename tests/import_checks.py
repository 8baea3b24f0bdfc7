"""Checks shared by the importer tests: read imported episodes back as the daemon would, and
run the real job child on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon.config import load_config
from trainer_core.config import IngestConfig
from trainer_core.rlds import read_episode
from trainer_core.spec import RESULT_FILE, SPEC_FILE, JobResult, JobSpec
from trainer_core.validate import validate_episode

REPO = Path(__file__).resolve().parent.parent


def read_back(out: Path) -> dict[str, Any]:
    """Every imported episode, read and validated (deep: NaN anywhere) by the daemon's own
    reader, which is what the watcher will do with them."""
    episodes = {}
    for p in sorted(out.iterdir()):
        if p.name.startswith("."):
            continue
        episode = read_episode(p, IngestConfig())
        validate_episode(episode, deep=True)
        assert episode.episode_id == p.name
        episodes[p.name] = episode
    return episodes


def train_through_job(
    tmp_path: Path, config_yaml: str, train: list[Path], evals: list[Path]
) -> tuple[subprocess.CompletedProcess[str], JobResult]:
    """Write the config, make a fresh base with the real CLI, run ``python -m trainer_core.job``
    on ``train``/``evals``; return the child's process and its result."""
    cfg_path = tmp_path / "trainer.yaml"
    cfg_path.write_text(config_yaml)
    base = tmp_path / "base" / "policy.safetensors"
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "base",
            "init",
            "--config",
            str(cfg_path),
            "--out",
            str(base),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    config, _ = load_config(cfg_path, None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = JobSpec(
        run_id="import-test",
        run_dir=run_dir,
        train_episodes=train,
        eval_episodes=evals,
        base_path=base,
        features=config.features,
        policy=config.policy,
        lora=config.lora,
        job=config.job,
        ingest=config.ingest,
        safety=config.safety,
    )
    (run_dir / SPEC_FILE).write_text(spec.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "trainer_core.job", str(run_dir / SPEC_FILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, JobResult.model_validate_json((run_dir / RESULT_FILE).read_bytes())


def assert_imports_without(modules: list[str], banned: list[str]) -> None:
    """Import ``modules`` in a fresh interpreter; fail naming any of ``banned`` that came along
    (the daemon's promise: no torch, no flwr, ...)."""
    code = (
        f"import sys; [__import__(m) for m in {modules!r}];"
        f"bad = [m for m in {banned!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
