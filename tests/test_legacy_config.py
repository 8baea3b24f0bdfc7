"""The legacy continuonos job config (pi5-donkey.json, unmodified) trains end to end.

It maps onto the transformer family (its lora_layers q/k/v/o_proj match), ``base init`` writes
safetensors beside the ``.pt`` name, the state folder follows systemd's StateDirectory, config
check warns about LoRA targets that match nothing, and a manifest for another model is refused
before any job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from daemon.config import load_config
from daemon.demo import manifest_template
from daemon.precheck import manifest_model_mismatch
from tests.daemon_harness import (
    CLI,
    FAST_CONFIG,
    REPO,
    start_daemon,
    status,
    stop,
    synth,
    wait_until,
    write_mode,
)
from trainer_core.config import PolicyConfig

LEGACY = "pi5-donkey.json"
GEMMA = PolicyConfig(family="hf-causal-lm", model_name="gemma-3n")
# What this test machine needs and a robot does not: signals it cannot control switched off and
# short timings. Only gate/ingest/service/promotion timing; policy, LoRA, features and job come
# from the legacy file, unmodified.
TEST_MACHINE = {k: FAST_CONFIG[k] for k in ("ingest", "gate")} | {
    "service": {"poll_interval_s": 0.2, "rescan_interval_s": 5, "cooldown_s": 0},
}


def legacy_brain(tmp_path: Path, samples: Path, dropin: dict | None = None) -> tuple[Path, Path]:
    """A continuonos brain folder in tmp, with the legacy config copied byte for byte."""
    brain = tmp_path / "brain"
    (brain / "rlds" / "episodes").mkdir(parents=True)
    (brain / "model").mkdir()
    config = tmp_path / LEGACY
    shutil.copyfile(samples / "configs" / LEGACY, config)
    if dropin is not None:
        (tmp_path / f"{LEGACY}.d").mkdir()
        (tmp_path / f"{LEGACY}.d" / "10-test-machine.yaml").write_text(yaml.safe_dump(dropin))
    return brain, config


def run_cli(brain: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(brain), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )


def test_legacy_config_maps_to_the_transformer_family(samples: Path) -> None:
    cfg, warnings = load_config(samples / "configs" / LEGACY)
    assert cfg.policy.family == "transformer"
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # Paths inside the brain folder stay inside it when the root moves.
    brain = Path("/opt/continuonos/brain")
    assert cfg.policy.base_path == brain / "model" / "base_model" / "hat_vision_seed.pt"
    moved, _ = load_config(samples / "configs" / LEGACY, root="/tmp/elsewhere")
    assert moved.paths.episodes == Path("/tmp/elsewhere/rlds/episodes")
    assert any("policy.family is transformer" in w for w in warnings)


def test_state_folder_follows_the_units_state_directory(samples: Path, monkeypatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/continuon-trainer")
    cfg, _ = load_config(samples / "configs" / LEGACY)
    assert cfg.paths.state == Path("/var/lib/continuon-trainer")
    assert cfg.paths.model == Path("/opt/continuonos/brain/model")
    monkeypatch.delenv("STATE_DIRECTORY")
    cfg, _ = load_config(samples / "configs" / LEGACY)
    assert cfg.paths.state == Path("/opt/continuonos/brain/state")
    unit = (REPO / "deploy" / "systemd" / "continuon-trainer.service").read_text()
    assert "StateDirectory=continuon-trainer" in unit  # what sets $STATE_DIRECTORY


def test_config_check_warns_when_lora_targets_match_nothing(tmp_path: Path) -> None:
    config = tmp_path / "legacy.json"
    config.write_text(json.dumps({"rlds_dir": "/x/rlds/episodes", "lora_layers": ["fc_9"]}))
    done = subprocess.run(
        [*CLI, "config", "check", str(config)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "lora.target_modules ['fc_9'] match no Linear module of policy.family 'mlp'" in (
        done.stdout
    )
    config.write_text(json.dumps({"rlds_dir": "/x/rlds/episodes", "lora_layers": ["q_proj"]}))
    done = subprocess.run(
        [*CLI, "config", "check", str(config)], capture_output=True, text=True, cwd=REPO
    )
    assert "match no Linear module" not in done.stdout


@pytest.mark.parametrize(
    ("manifest", "policy", "refused"),
    [
        ({"model_name": "gemma-3n"}, PolicyConfig(family="transformer"), "names model 'gemma-3n'"),
        (
            {"model_name": "gemma-3n"},
            PolicyConfig(family="transformer", model_name="gemma-3n"),
            "a language model",
        ),
        ({"model_name": "gemma-3n"}, GEMMA, None),
        ({"model_name": "continuon-mlp-policy"}, PolicyConfig(family="transformer"), None),
        ({"model_name": 7}, PolicyConfig(), "no model_name string"),
        (None, PolicyConfig(), None),
    ],
)
def test_manifest_model_precheck(manifest, policy, refused) -> None:
    reason = manifest_model_mismatch(manifest, policy)
    assert (reason is None) if refused is None else (refused in reason), reason


def test_base_init_never_writes_safetensors_under_a_pt_name(tmp_path: Path, samples: Path) -> None:
    brain, config = legacy_brain(tmp_path, samples)
    done = run_cli(brain, config, "base", "init")
    assert done.returncode == 0, done.stderr
    base_dir = brain / "model" / "base_model"
    assert not (base_dir / "hat_vision_seed.pt").exists()
    assert (base_dir / "hat_vision_seed.safetensors").read_bytes()[:8]  # safetensors header
    assert "written beside it as" in done.stdout
    card = json.loads((base_dir / "hat_vision_seed.json").read_text())
    assert card["family"] == "transformer" and card["arch"]["routing"] == "hybrid"


def copy_sample_episodes(samples: Path, episodes: Path) -> None:
    for entry in (samples / "episodes").iterdir():
        dest = episodes / entry.name
        if entry.is_dir():
            shutil.copytree(entry, dest)
        else:
            shutil.copyfile(entry, dest)


def test_manifest_for_another_model_is_refused_before_any_job(tmp_path, samples) -> None:
    brain, config = legacy_brain(tmp_path, samples, TEST_MACHINE)
    assert run_cli(brain, config, "base", "init").returncode == 0
    manifest = manifest_template(brain, "gemma-3n")
    (brain / "model" / "manifest.json").write_text(json.dumps(manifest))
    copy_sample_episodes(samples, brain / "rlds" / "episodes")
    synth(brain, brain / "rlds" / "episodes", "--episodes", "20", "--steps", "40", "--seed", "3")
    write_mode(brain, "idle")
    time.sleep(0.5)  # past ingest.settle_s: every episode counts at the first scan
    done = run_cli(brain, config, "once")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the manifest names model 'gemma-3n'" in done.stderr
    assert not (brain / "state" / "runs").exists() or not any((brain / "state" / "runs").iterdir())


def test_legacy_config_trains_to_a_promoted_release_through_the_daemon(tmp_path, samples):
    """pi5-donkey.json unmodified + the continuonos sample episodes -> a promoted adapter."""
    brain, config = legacy_brain(tmp_path, samples, TEST_MACHINE)
    assert run_cli(brain, config, "base", "init").returncode == 0
    cfg, _ = load_config(config, str(brain))
    (brain / "model" / "manifest.json").write_text(
        json.dumps(manifest_template(brain, cfg.policy.model_name))
    )
    episodes = brain / "rlds" / "episodes"
    copy_sample_episodes(samples, episodes)
    # The samples hold one usable 5-step Pi 5 episode; the legacy min_episodes is 16, so
    # more episodes of the same layout (the Pi 5 follow-human v1.1 format) join them.
    synth(brain, tmp_path / "more", "--episodes", "20", "--steps", "60", "--seed", "4")
    for entry in (tmp_path / "more").iterdir():
        os.rename(entry, episodes / entry.name)
    write_mode(brain, "idle")
    proc = start_daemon(brain, config)
    log = brain / "daemon.log"
    try:
        decision = wait_until(
            lambda: [d for d in status(brain).get("last_decisions", []) if d["verdict"]],
            240,
            "a decision",
            log,
        )[0]
        assert decision["verdict"] == "promoted", decision
        current = brain / "model" / "adapters" / "current"
        card = json.loads((current / "card.json").read_text())
        assert card["family"] == "transformer" and card["device"] == "cpu"
        adapter = json.loads((current / "adapter_config.json").read_text())
        assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
        skipped = status(brain).get("ledger") or {}
        assert skipped.get("valid", 0) >= 16
    finally:
        stop(proc)


def test_a_safetensors_header_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path: Path) -> None:
    """A 1920-byte header (0x780: first byte 0x80, as four q/k/v/o LoRA pairs give) is
    safetensors; the sniffer once called it a pickle and refused the candidate."""
    import torch
    from safetensors.torch import save_file

    from daemon.store import sniff_format

    path = tmp_path / "adapter_model.safetensors"
    tensors = {f"layers.{i}.self_attn.q_proj.lora_A.weight": torch.zeros(2) for i in range(30)}
    for pad in range(60):
        save_file(tensors, path, metadata={"format": "pt", "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert sniff_format(path) == "safetensors"
