"""``export --format merged|onnx``: a release merged into its base, and as an ONNX graph.

A small cnn base (and an MLP one) with a LoRA adapter whose update is far from zero is
promoted into a real adapter store; the real CLI exports it. The merged safetensors, loaded into
a plain policy with no adapter code, must drive a recorded camera episode as the release does
(``predict``'s path); the ONNX graph, run by onnxruntime on raw frames, must give the same raw
actions as torch. Skipped with a reason where the ``onnx`` extra is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from daemon.config import default_config_text, load_config
from daemon.store import AdapterStore
from tests.daemon_harness import CLI, REPO
from trainer_core.base import build_fresh, identity_normalizer, load_base, save_base
from trainer_core.evaluate import Policy, predict
from trainer_core.export_model import MERGED_WEIGHTS, ONNX_FILE, FixedAdaptivePool
from trainer_core.features import read_split
from trainer_core.lora import attach_lora, save_adapter
from trainer_core.predict_cli import load_release
from trainer_core.synth_camera import write_camera_episodes

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
CAMERA = {
    "features": {
        "observation": [],
        "images": [{"path": "observation.media.rgb", "size": [30, 40]}],
        "action": [{"path": "action.command", "names": ["steering", "throttle"]}],
        "bounds": {"steering": [-1.0, 1.0], "throttle": [-1.0, 1.0]},
    },
    "policy": {"family": "cnn", "conv": [8, 16, 16], "hidden": [32, 16]},
    # a conv target too: the merge must fold a Conv2d update as well as Linear ones
    "lora": {"target_modules": ["trunk.conv1", "dense.0", "head"]},
}


def make_release(tmp_path: Path, extra: dict | None) -> tuple[Path, Path]:
    """A root with a fresh base and one promoted release whose LoRA B weights are random."""
    root = tmp_path / "robot"
    root.mkdir()
    config_path = root / "trainer.yaml"
    raw = yaml.safe_load(default_config_text())
    config_path.write_text(yaml.safe_dump({**raw, **(extra or {}), "root": str(root)}))
    cfg, _ = load_config(config_path, str(root))
    torch.manual_seed(0)
    model = build_fresh(cfg.policy, cfg.features)
    save_base(
        model,
        cfg.policy.base_path,
        cfg.policy,
        cfg.features,
        identity_normalizer(cfg.features),
        "t",
    )
    base = load_base(cfg.policy.base_path, cfg.policy, cfg.features)
    lora = attach_lora(base.model, cfg.lora)
    with torch.no_grad():
        for layer in lora.lora_layers().values():
            layer.lora_B.weight.normal_(0, 0.3)  # a trained adapter is not zero: merge must show
    normalizer = identity_normalizer(cfg.features)
    normalizer.act_mean[:] = [0.1, 0.4]  # de-standardisation must happen on every path
    normalizer.act_std[:] = [0.5, 0.2]
    candidate = tmp_path / "candidate"
    card = {
        "kind": "continuon-lora-adapter",
        "base_sha256": base.sha256,
        "features": cfg.features.model_dump(mode="json"),
        "policy": cfg.policy.model_dump(mode="json"),
    }
    save_adapter(lora, candidate, normalizer, card)
    store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest, model_name=cfg.policy.model_name)
    store.promote(candidate, {})
    return root, config_path


def export(
    root: Path, config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(root), "--config", str(config), "export", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )


def test_merged_model_drives_an_episode_as_the_release_does(tmp_path: Path) -> None:
    root, config = make_release(tmp_path, CAMERA)
    out = tmp_path / "merged"
    done = export(root, config, "--format", "merged", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "merged vs LoRA, max abs diff" in done.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "continuon-merged-policy" and card["format"] == "merged"
    assert card["images"][0]["size"] == [30, 40] and "crop" in card["images"][0]
    assert card["normalizer"]["action"]["throttle"] == pytest.approx({"mean": 0.4, "std": 0.2})
    assert card["checks"]["merged_vs_lora_max_abs_diff"] <= 1e-4
    cfg, _ = load_config(config, str(root))
    # The merged weights have the base's keys: a plain policy loads them strictly.
    plain = build_fresh(cfg.policy, cfg.features)
    plain.load_state_dict(load_file(str(out / MERGED_WEIGHTS)), strict=True)
    base_keys = set(load_file(str(cfg.policy.base_path)))
    assert set(load_file(str(out / MERGED_WEIGHTS))) == base_keys
    _, lora_model, normalizer, _ = load_release(cfg, None)
    episode = write_camera_episodes(tmp_path / "eps", 1, 12, seed=4)[0]
    data = read_split([episode], cfg.features, cfg.ingest).arrays
    cpu = torch.device("cpu")
    want = predict(Policy(lora_model, normalizer), data.obs, cpu, lambda: False, data.frames)
    got = predict(Policy(plain, normalizer), data.obs, cpu, lambda: False, data.frames)
    bare = build_fresh(cfg.policy, cfg.features)
    bare.load_state_dict(load_file(str(cfg.policy.base_path)))
    without = predict(Policy(bare, normalizer), data.obs, cpu, lambda: False, data.frames)
    assert np.abs(want - without).max() > 1e-2  # the adapter matters on this episode
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    # A second export into the same folder is refused; a missing release is named.
    again = export(root, config, "--format", "merged", "--out", str(out))
    assert again.returncode == 1 and "exists" in again.stderr
    gone = export(
        root, config, "--format", "merged", "--out", str(tmp_path / "x"), "--release", "r9"
    )
    assert gone.returncode == 1 and "no release at" in gone.stderr
    assert not (tmp_path / "x").exists()


def test_fixed_pool_equals_adaptive_pool_for_a_non_dividing_size() -> None:
    x = torch.randn(2, 3, 8, 10)  # 120x160 frames reach the pool as 8x10; 3x4 does not divide
    want = torch.nn.AdaptiveAvgPool2d((3, 4))(x)
    assert torch.allclose(FixedAdaptivePool((8, 10), (3, 4))(x), want, atol=1e-6)


@pytest.mark.skipif(not HAVE_ONNX, reason="the 'onnx' extra (onnx, onnxruntime) is not installed")
@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_onnx_graph_matches_torch_on_raw_inputs(tmp_path: Path, family: str) -> None:
    import onnxruntime as ort

    root, config = make_release(tmp_path, CAMERA if family == "cnn" else None)
    out = tmp_path / "onnx"
    done = export(root, config, "--format", "onnx", "--out", str(out))
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "card.json").read_text())
    diff = card["checks"]["onnx_vs_torch_max_abs_diff"]
    assert diff is not None and diff <= 1e-4 and f"max abs diff: {diff:.3g}" in done.stdout
    cfg, _ = load_config(config, str(root))
    _, lora_model, normalizer, _ = load_release(cfg, None)
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    cpu = torch.device("cpu")
    if family == "cnn":
        assert card["onnx"]["inputs"] == ["frames"]
        episode = write_camera_episodes(tmp_path / "eps", 1, 12, seed=4)[0]
        data = read_split([episode], cfg.features, cfg.ingest).arrays
        frames = data.frames.gather(np.arange(len(data)))
        got = session.run(["action"], {"frames": frames})[0]
        want = predict(Policy(lora_model, normalizer), data.obs, cpu, lambda: False, data.frames)
    else:
        assert card["onnx"]["inputs"] == ["observation"]
        obs = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32)
        got = session.run(["action"], {"observation": obs})[0]
        want = predict(Policy(lora_model, normalizer), obs, cpu, lambda: False)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def test_onnx_without_the_extra_names_it(tmp_path: Path) -> None:
    root, config = make_release(tmp_path, None)
    # A sitecustomize that hides onnxruntime, as on a robot installed without the extra.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['onnxruntime'] = None\n"  # import raises ImportError
    )
    import os

    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{REPO}"}
    done = export(root, config, "--format", "onnx", "--out", str(tmp_path / "o"), env=env)
    assert done.returncode == 1
    assert "optional extra 'onnx'" in done.stderr and "continuon-trainer[onnx]" in done.stderr
    assert not (tmp_path / "o").exists()
