"""The CLI finds the install the way the unit does, and says so; rough edges of the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon.locate import ETC_CONFIG
from tests.daemon_harness import CLI, FAST_CONFIG, REPO, deep_merge, make_root


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 120):
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUON_TRAINER_")}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=timeout,
    )


def installed_layout(tmp_path: Path) -> tuple[Path, Path]:
    """A robot root and, elsewhere, an /etc-like folder whose trainer.yaml points at it."""
    root, _ = make_root(tmp_path)
    etc = tmp_path / "etc" / "continuon"
    etc.mkdir(parents=True)
    config = etc / "trainer.yaml"
    config.write_text(yaml.safe_dump(deep_merge(FAST_CONFIG, {"root": str(root)})))
    return root, config


def test_status_without_flags_finds_the_installed_config(tmp_path):
    root, config = installed_layout(tmp_path)
    env = {"CONTINUON_TRAINER_CONFIG": str(config)}
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    before = run_cli("status", env=env, cwd=elsewhere)
    assert before.returncode == 1, before.stdout + before.stderr
    assert f"no daemon and no state at {root}" in before.stdout
    once = run_cli("once", env=env, cwd=elsewhere)  # no episodes: nothing to do, state written
    assert once.returncode == 0, once.stdout + once.stderr
    assert (root / "state" / "ledger.sqlite3").exists()
    done = run_cli("status", env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"config: {config} ($CONTINUON_TRAINER_CONFIG)" in done.stderr
    assert "not running" in done.stdout and "0 valid (0 trainable" in done.stdout


@pytest.mark.skipif(ETC_CONFIG.exists(), reason=f"{ETC_CONFIG} is installed on this machine")
@pytest.mark.parametrize("extra", [[], ["--root", "/nonexistent"]])
def test_status_with_nothing_installed_is_a_clear_nonzero_answer(tmp_path, extra):
    done = run_cli(*extra, "status", cwd=tmp_path)
    assert done.returncode == 1
    assert "no daemon and no state at" in done.stdout
    assert "config: the embedded default" in done.stderr
    as_json = run_cli(*extra, "status", "--json", cwd=tmp_path)
    assert as_json.returncode == 1 and "no daemon and no state at" in as_json.stderr
    assert '"schema": "continuon-trainer.status/2"' in as_json.stdout
