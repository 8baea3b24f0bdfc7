"""The cloud path end to end: export a bundle, ``torchrun --nproc_per_node=2`` (gloo, CPU) runs
the job's recipe under DDP, and the robot imports the adapter: evaluated on its own held-out
episodes, promoted by its rule; the same adapter made worse on purpose is rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from daemon.adapters import import_candidate
from daemon.bundle import export_bundle
from daemon.config import load_config
from daemon.store import AdapterStore
from tests.daemon_harness import REPO, cli, make_root, synth
from trainer_core.bundle import BUNDLE_FILE, check_sealed, seal_adapter
from trainer_core.distributed import World, episode_rows, main, shard_episodes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
WEIGHTS = "adapter_model.safetensors"
# Half held out and wider rate/per-name margins: on ten held-out episodes the per-name bound
# is wide (throttle, which the bias leaves alone, is -68 % with its 95 % bound at +88 %). The
# error (improvement) and safety checks keep their defaults; the noised adapter fails them.
EXTRA = {
    "job": {"eval_fraction": 0.5},
    "promotion": {"clamp_rate_margin": 0.05, "max_clamp_rate": 0.08, "max_name_regression": 1.5},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A robot root (pretrained base, biased driving), its bundle, and the adapter torchrun made."""
    work = tmp_path_factory.mktemp("dist")
    synth(work, work / "factory", "--episodes", "8", "--steps", "60", "--seed", "1")
    base = work / "base" / "policy.safetensors"  # a base that drives: as cautious as the data
    cli(work, "base", "pretrain", "--episodes", str(work / "factory"), "--steps", "300",
        "--out", str(base))  # fmt: skip
    root, config = make_root(work, EXTRA, base=base)
    synth(root, root / "rlds" / "episodes", "--episodes", "16", "--steps", "80", "--seed", "8",
          "--steering-bias", "0.3")  # fmt: skip
    cfg, _ = load_config(config, str(root))
    bundle = work / "bundle"
    export_bundle(cfg, bundle)
    out = work / "adapter"
    done = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "trainer_core.distributed",
         str(bundle), "--out", str(out), "--steps", "300", "--batch-size", "32"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"work": work, "root": root, "cfg": cfg, "bundle": bundle, "out": out, "log": done}


def test_torchrun_two_processes_write_one_sealed_adapter(trained):
    card = check_sealed(trained["out"])  # the candidate format, checksums verified
    meta = json.loads((trained["bundle"] / BUNDLE_FILE).read_text())
    off = card["trained_off_robot"]
    assert off["processes"] == 2 and off["backend"] == "gloo" and off["global_batch"] == 64
    assert card["steps"] == 300 and card["status"] == "done"
    assert card["base_sha256"] == meta["base"]["sha256"]
    # trained on the bundle's train split only, never on a held-back (robot eval) episode
    assert set(card["episode_hashes"]) == {e["hash"] for e in meta["splits"]["train"]}
    assert set(card["episode_hashes"]).isdisjoint(meta["splits"]["held_back"])
    results = sorted((trained["work"] / "adapter.run").glob("rank*/result.json"))
    notes = [json.loads(p.read_text())["notes"] for p in results]
    assert len(notes) == 2  # both ranks ran, each on its own share of the episodes
    assert notes[0] != notes[1] and all("rank" in n[0] for n in notes)


def test_robot_promotes_it_and_rejects_it_made_worse(trained):
    cfg, out = trained["cfg"], trained["out"]
    verdict = import_candidate(cfg, out, "torchrun x2")
    assert verdict.action == "promoted", verdict.reasons
    store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest)
    current = store.current()
    assert current is not None and current.card["source"] == "imported from torchrun x2"

    worse = trained["work"] / "worse"
    shutil.copytree(out, worse)
    tensors = load_file(str(worse / WEIGHTS))
    rng = np.random.default_rng(1)
    for key, value in tensors.items():
        if "lora_B" in key:
            tensors[key] = (value + 0.5 * rng.standard_normal(value.shape)).astype(value.dtype)
    save_file(tensors, str(worse / WEIGHTS), metadata={"format": "pt"})
    seal_adapter(worse)
    verdict = import_candidate(cfg, worse, "noised on purpose")
    assert verdict.action == "rejected", verdict.reasons
    assert any(r.startswith("FAIL ") for r in verdict.reasons)
    assert store.current().id == current.id  # the robot keeps its release


def test_shards_cover_every_episode_once_across_ranks():
    shards = [shard_episodes(7, World(r, 2, r), seed=3) for r in range(2)]
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(7))
    assert len(set(shards[0]) & set(shards[1])) <= 1  # the sampler pads one rank by one
    assert shards == [shard_episodes(7, World(r, 2, r), seed=3) for r in range(2)]  # seeded
    starts = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0], bool)  # episodes of 3, 2, 4 rows
    assert episode_rows(starts, [0, 2]).tolist() == [0, 1, 2, 5, 6, 7, 8]


def test_an_altered_bundle_trains_nothing(trained, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], copy)
    (copy / "base" / "policy.json").write_text("{}")
    assert main([str(copy), "--out", str(tmp_path / "a"), "--steps", "1"]) == 3
    assert "policy.json has sha256" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
