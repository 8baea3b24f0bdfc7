"""Bring your own model: the example plug-in, installed as a package, trains and promotes
through the daemon; a plug-in that raises or returns the wrong type fails its job with a clear
reason and the daemon goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from daemon.demo import manifest_template
from safety.config import SafetyConfig
from tests.daemon_harness import (
    REPO,
    cli,
    make_root,
    start_daemon,
    status,
    stop,
    synth,
    wait_until,
    write_mode,
)
from trainer_core.base import identity_normalizer, save_base
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig
from trainer_core.job import main
from trainer_core.plugins import PluginError, build_plugin
from trainer_core.spec import ExitCode, JobResult, JobSpec
from trainer_core.synth import write_synthetic_episodes

EXAMPLE = REPO / "examples" / "continuon_example_policy"
BAD_PLUGIN = """
from torch import nn

def raises(features, policy):
    raise RuntimeError("calibration file /etc/robot/cal.json missing")

def wrong_type(features, policy):
    return "a model, honestly"

def wrong_model(features, policy):
    return {"model": [nn.Linear(3, 2)]}
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed (not imported from the source tree) into a target dir."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=240, cwd=build,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("continuon_example_policy-*.dist-info"))
    return target


@pytest.fixture
def bad_plugin(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "bad_policy.py").write_text(textwrap.dedent(BAD_PLUGIN))
    return folder


@pytest.mark.slow
def test_installed_example_plugin_trains_and_promotes_through_the_daemon(
    tmp_path: Path, installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(installed))  # the daemon, the verbs and the child
    extra = {
        "policy": {
            "family": "gated-residual",  # the entry point the installed package declares
            "model_name": "continuon-gated-residual",
            "options": {"width": 24, "blocks": 2},
        },
        "lora": {"target_modules": ["blocks.0.up", "blocks.1.up", "head"]},
    }
    root, config = make_root(tmp_path, extra, mode="manual_control")
    (root / "model" / "manifest.json").write_text(
        json.dumps(manifest_template(root, "continuon-gated-residual"))
    )
    checked = cli(root, "--config", str(config), "config", "check", str(config))
    assert "match no Linear module" not in checked.stdout
    cli(root, "--config", str(config), "base", "init")
    card = json.loads((root / "model" / "base" / "policy.json").read_text())
    assert card["family"] == "gated-residual" and card["arch"] == {
        "options": {"width": 24, "blocks": 2}
    }
    synth(root, root / "rlds" / "episodes", "--episodes", "10", "--steps", "80", "--seed", "6")
    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        write_mode(root, "idle")
        decision = wait_until(lambda: status(root).get("last_decisions"), 180, "a decision", log)[0]
        assert decision["verdict"] == "promoted", decision
        current = root / "model" / "adapters" / "current"
        assert json.loads((current / "card.json").read_text())["family"] == "gated-residual"
    finally:
        stop(proc)


def write_job(run_dir: Path, base: Path, episodes: list[Path], policy: PolicyConfig) -> Path:
    run_dir.mkdir(parents=True)
    spec = JobSpec(
        run_id=run_dir.name,
        run_dir=run_dir,
        train_episodes=episodes[:3],
        eval_episodes=episodes[3:],
        base_path=base,
        features=FeaturesConfig(),
        policy=policy,
        lora=LoraConfig(target_modules=["0"]),
        job=JobConfig(max_steps=20),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    return run_dir / "spec.json"


@pytest.mark.parametrize(
    ("builder", "reason"),
    [
        ("raises", "the builder raised RuntimeError: calibration file /etc/robot/cal.json missing"),
        ("wrong_type", "the builder returned str; expected an nn.Module"),
        ("wrong_model", "the builder's model is list, not an nn.Module"),
        ("missing", "bad_policy has no 'missing'"),
    ],
)
def test_a_broken_plugin_fails_the_job_with_a_clear_reason(
    builder: str, reason: str, bad_plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(bad_plugin))
    policy = PolicyConfig(family=f"python:bad_policy:{builder}")
    with pytest.raises(PluginError, match=reason):
        build_plugin(3, 2, policy, FeaturesConfig())
    # A base whose card names the broken family (the weights of some earlier model).
    base = tmp_path / "base" / "policy.safetensors"
    model = nn.Sequential(nn.Linear(3, 2))
    save_base(model, base, policy, FeaturesConfig(), identity_normalizer(FeaturesConfig()), "init")
    episodes = write_synthetic_episodes(tmp_path / "eps", 4, 20, seed=1)
    code = main([str(write_job(tmp_path / "run", base, episodes, policy))])
    result = JobResult.model_validate_json((tmp_path / "run" / "result.json").read_text())
    assert code == ExitCode.INVALID and result.status == "invalid"
    assert reason in result.reason and f"python:bad_policy:{builder}" in result.reason


@pytest.mark.slow
def test_the_daemon_goes_on_after_a_plugin_raises(
    tmp_path: Path, bad_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(bad_plugin))
    family = "python:bad_policy:raises"
    root, config = make_root(tmp_path, {"policy": {"family": family}}, mode="idle")
    policy = PolicyConfig(family=family)
    torch.manual_seed(0)
    save_base(
        nn.Sequential(nn.Linear(3, 2)),
        root / "model" / "base" / "policy.safetensors",
        policy,
        FeaturesConfig(),
        identity_normalizer(FeaturesConfig()),
        "init",
    )
    synth(root, root / "rlds" / "episodes", "--episodes", "6", "--steps", "30", "--seed", "2")
    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        decision = wait_until(lambda: status(root).get("last_decisions"), 120, "a decision", log)[0]
        text = json.dumps(decision)
        assert decision["verdict"] != "promoted" and "the builder raised RuntimeError" in text
        before = status(root).get("updated_at") or 0
        wait_until(
            lambda: (status(root).get("updated_at") or 0) > before, 10, "status refreshes", log
        )
        assert proc.poll() is None  # the daemon goes on
    finally:
        stop(proc)
