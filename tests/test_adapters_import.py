"""``adapters import DIR``: an adapter made elsewhere is validated, shadow-evaluated in the real
job child on this robot's own held-out episodes, and promoted only through the rule.

The adapter "made elsewhere" is the candidate of a real job on a donor root with the same base
(sealed with its checksums); the robot's own first release is that adapter with its LoRA update
shrunk to 30 %, so the imported one is judged against a real, weaker release."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from daemon.adapters import adapter_mismatch, held_out_for, import_candidate
from daemon.config import load_config
from daemon.instance import take_instance_lock
from daemon.ledger import EpisodeRow, Ledger
from daemon.store import AdapterStore
from tests.daemon_harness import CLI, REPO, make_root, synth
from tests.test_bundle import tree_digest
from trainer_core.bundle import seal_adapter

WEIGHTS = "adapter_model.safetensors"
# Half held out (8 episodes) and wider rate and per-name margins: with a CI-sized held-out set
# the intervals are wide; the adapter made worse on purpose fails the error checks anyway.
EXTRA = {
    "job": {"eval_fraction": 0.5},
    "promotion": {"clamp_rate_margin": 0.05, "max_clamp_rate": 0.08, "max_name_regression": 0.3},
}


def scaled(src: Path, dest: Path, factor: float, noise: float = 0.0) -> Path:
    """A copy of adapter ``src`` with every lora_B scaled (and noised), sealed again."""
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / WEIGHTS))
    rng = np.random.default_rng(0)
    for key, value in tensors.items():
        if "lora_B" in key:
            tensors[key] = (value * factor + noise * rng.standard_normal(value.shape)).astype(
                value.dtype
            )
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    seal_adapter(dest)
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_checkpoint):
    """The session's base, a donor root whose `once --force` made a candidate, and a robot root
    (same base, same episodes) whose current release is a weakened copy of it."""
    work = tmp_path_factory.mktemp("adapters")
    base = base_checkpoint
    donor, donor_cfg = make_root(work / "donor", EXTRA, base=base)
    synth(donor, work / "episodes", "--episodes", "16", "--steps", "80", "--seed", "8",
          "--steering-bias", "0.3")  # fmt: skip
    shutil.copytree(work / "episodes", donor / "rlds" / "episodes", dirs_exist_ok=True)
    done = subprocess.run(
        [*CLI, "--root", str(donor), "--config", str(donor_cfg), "once", "--force"],
        capture_output=True, text=True, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (candidate,) = (donor / "state" / "runs").glob("*/candidate")  # promoted there or not
    good = work / "made-elsewhere"
    shutil.copytree(candidate, good)
    seal_adapter(good)

    robot, robot_cfg = make_root(work / "robot", EXTRA, base=base)
    shutil.copytree(work / "episodes", robot / "rlds" / "episodes", dirs_exist_ok=True)
    config, _ = load_config(robot_cfg, str(robot))
    weak = scaled(good, work / "weak", 0.3)
    store = AdapterStore(config.adapters_dir, config.paths.manifest, config.policy.model_name)
    first = store.promote(weak, {"run_id": "setup", "decision": ["test setup"]})
    return {"work": work, "good": good, "robot": robot, "config": config, "first": first.id}


def test_adapter_made_elsewhere_is_evaluated_and_promoted(world):
    config, good = world["config"], world["good"]
    before = tree_digest(good)
    verdict = import_candidate(config, good, "gpu-host:/runs/7")
    assert verdict.action == "promoted", verdict.reasons
    assert verdict.reasons[0] == "imported from gpu-host:/runs/7"
    assert any(r.startswith("ok baseline: evaluated against adapter:" + world["first"])
               for r in verdict.reasons)  # fmt: skip
    assert tree_digest(good) == before  # the original is never modified
    store = AdapterStore(config.adapters_dir, config.paths.manifest)
    current = store.current()
    assert current is not None and current.id == verdict.release_id
    assert current.card["source"] == "imported from gpu-host:/runs/7"
    # judged on this robot's own held-out episodes, not on what it trained on
    assert len(current.card["metrics"]["episodes"]) >= config.promotion.min_eval_episodes
    assert current.card["origin_metrics"] is not None
    with Ledger.open(config.ledger_path) as ledger:
        assert set(current.card["episode_hashes"]) <= ledger.released_hashes()
        assert set(current.card["episode_hashes"]).isdisjoint(
            {r.content_hash for r in ledger.valid_episodes("eval")}
        )
    health = json.loads((config.state_dir / "health.json").read_text())
    rec = health["releases"][verdict.release_id]
    assert rec["state"] == "probation" and rec["predecessor"] == world["first"]


def test_adapter_made_worse_is_rejected_by_the_rule(world):
    config = world["config"]
    current = AdapterStore(config.adapters_dir, config.paths.manifest).current()
    bad = scaled(world["good"], world["work"] / "worse", 1.0, noise=0.5)
    verdict = import_candidate(config, bad, "worse on purpose")
    assert verdict.action == "rejected", verdict.reasons
    assert verdict.decisive is not None
    assert verdict.reasons[1].startswith("FAIL "), verdict.reasons  # decisive first, said why
    after = AdapterStore(config.adapters_dir, config.paths.manifest).current()
    assert after is not None and current is not None and after.id == current.id


def test_altered_adapter_is_refused_before_anything_runs(world, tmp_path):
    config = world["config"]
    altered = tmp_path / "altered"
    shutil.copytree(world["good"], altered)
    data = bytearray((altered / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (altered / WEIGHTS).write_bytes(bytes(data))
    verdict = import_candidate(config, altered, "x")
    assert verdict.action == "invalid" and WEIGHTS in verdict.reasons[0]
    assert "sha256" in verdict.reasons[0]
    unsealed = tmp_path / "unsealed"
    shutil.copytree(world["good"], unsealed)
    card = json.loads((unsealed / "card.json").read_text())
    del card["checksums"]
    (unsealed / "card.json").write_text(json.dumps(card))
    verdict = import_candidate(config, unsealed, "x")
    assert verdict.action == "invalid" and "no checksums" in verdict.reasons[0]


def test_adapter_for_another_base_is_refused(world, tmp_path):
    config = world["config"]
    other = tmp_path / "other-base"
    shutil.copytree(world["good"], other)
    card = json.loads((other / "card.json").read_text())
    card["base_sha256"] = "0" * 64
    (other / "card.json").write_text(json.dumps(card))
    seal_adapter(other)
    verdict = import_candidate(config, other, "x")
    assert verdict.action == "invalid" and verdict.decisive == "base"
    assert "0000" in verdict.reasons[0] and "this robot's base" in verdict.reasons[0]


def test_refused_while_the_daemon_holds_the_state_folder(world):
    config = world["config"]
    lock = take_instance_lock(config.state_dir, 4242)
    try:
        verdict = import_candidate(config, world["good"], "x")
    finally:
        lock.close()
    assert verdict.action == "failed" and "pid 4242" in verdict.reasons[0]


def test_cli_verb_prints_every_check_and_exits_by_verdict(world, tmp_path):
    robot = world["robot"]
    bad = scaled(world["good"], tmp_path / "worse", 1.0, noise=0.5)
    done = subprocess.run(
        [*CLI, "--root", str(robot), "--config", str(robot / "trainer.yaml"), "adapters",
         "import", str(bad), "--source", "cli test"],
        capture_output=True, text=True, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "imported from cli test" in done.stdout and "FAIL" in done.stdout
    assert "rejected: not promoted" in done.stderr


def test_pure_parts():
    cfg, _ = load_config(None, "/nonexistent-root")
    card = {"base_sha256": "b", "policy": cfg.policy.model_dump(mode="json"),
            "features": cfg.features.model_dump(mode="json")}  # fmt: skip
    assert adapter_mismatch(card, cfg, "b") is None
    assert "sha256" in (adapter_mismatch(card, cfg, "c") or "")
    wrong = {**card, "features": {**card["features"], "action_names": ["x"]}}
    assert adapter_mismatch(wrong, cfg, "b") is not None
    rows = [EpisodeRow(f"/e{i}", f"e{i}", f"h{i}", 10, 0.0) for i in range(4)]
    assert [r.path for r in held_out_for(rows, {"h0"}, ["h2"])] == ["/e1", "/e3"]


def test_import_path_is_torch_free():
    code = (
        "import sys, daemon.adapters, daemon.bundle, trainer_core.bundle;"
        "bad = [m for m in ('torch', 'peft', 'flwr') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
