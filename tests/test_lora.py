"""The in-house LoRA (trainer_core/lora.py) against real peft: same files, same outputs.

peft is a dev dependency here only to check the format; the job child never imports it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from trainer_core.config import LoraConfig, PolicyConfig
from trainer_core.features import Normalizer
from trainer_core.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraError,
    attach_lora,
    load_adapter,
    lora_state,
    merge_lora,
    save_adapter,
)
from trainer_core.policies import build_policy

peft = pytest.importorskip("peft", reason="peft (dev extra) is needed to check its format")

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "mlp": (PolicyConfig(), ["layers.0", "layers.1"]),
    "cnn": (
        PolicyConfig(family="cnn", conv=[4, 6, 8], hidden=[16]),
        ["trunk.conv0", "trunk.conv2", "dense.0", "head"],
    ),
}


def _base(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_policy(3, 2, CASES[family][0])


def _inputs(family: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(5, 3, generator=gen)
    if family == "cnn":
        frames = torch.randint(0, 256, (5, 3, 24, 32), generator=gen, dtype=torch.uint8)
        return obs, frames
    return (obs,)


def _perturb(model: torch.nn.Module) -> None:
    # A fresh adapter is the identity (B = 0); give every LoRA weight a value to compare.
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _side_files(out: Path) -> None:
    norm = Normalizer(
        ["a", "b", "c"],
        ["u", "v"],
        *(np.zeros(k) + z for k, z in ((3, 0.0), (3, 1.0), (2, 0.0), (2, 1.0))),
    )
    norm.save(out / "normalizer.json")
    (out / "card.json").write_text('{"base_sha256": "x"}')


@pytest.mark.parametrize("family", sorted(CASES))
def test_peft_loads_our_adapter_with_the_same_outputs(family: str, tmp_path: Path) -> None:
    ours = attach_lora(_base(family), LoraConfig(target_modules=CASES[family][1], r=3, alpha=6))
    _perturb(ours)
    ours.eval()
    inputs = _inputs(family)
    expected = ours(*inputs)
    _side_files(tmp_path)
    save_adapter(ours, tmp_path, Normalizer.load(tmp_path / "normalizer.json"), {"b": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "card.json", "normalizer.json"]
    )
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    theirs = peft.PeftModel.from_pretrained(_base(family), str(tmp_path))
    theirs.eval()
    assert keys == set(peft.get_peft_model_state_dict(theirs))
    torch.testing.assert_close(theirs(*inputs), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(_base(family)(*inputs), expected)  # the adapter does something


@pytest.mark.parametrize("family", sorted(CASES))
def test_we_load_a_peft_saved_adapter_with_the_same_outputs(family: str, tmp_path: Path) -> None:
    cfg = peft.LoraConfig(target_modules=CASES[family][1], r=2, lora_alpha=5, bias="none")
    theirs = peft.get_peft_model(_base(family), cfg)
    _perturb(theirs)
    theirs.eval()
    inputs = _inputs(family)
    expected = theirs(*inputs)
    theirs.save_pretrained(str(tmp_path), safe_serialization=True)
    _side_files(tmp_path)
    ours, _, _ = load_adapter(_base(family), tmp_path)
    torch.testing.assert_close(ours(*inputs), expected, rtol=0, atol=1e-6)
    assert set(lora_state(ours)) == set(peft.get_peft_model_state_dict(theirs))
    # and merging gives peft's merge_and_unload, with plain modules left
    merged = merge_lora(ours)
    torch.testing.assert_close(merged(*inputs), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        theirs.merge_and_unload()(*inputs), merged(*inputs), rtol=0, atol=1e-5
    )
    assert not any("lora" in n for n, _ in merged.named_modules())


def test_fresh_adapter_is_the_identity_and_trains_only_lora() -> None:
    base = _base("cnn")
    inputs = _inputs("cnn")
    before = base(*inputs).detach()
    model = attach_lora(base, LoraConfig(target_modules=["dense.0", "trunk.conv1"]))
    torch.testing.assert_close(model(*inputs), before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [
        "model.trunk.conv1.lora_A.weight",
        "model.trunk.conv1.lora_B.weight",
        "model.dense.0.lora_A.weight",
        "model.dense.0.lora_B.weight",
    ]


def test_an_adapter_we_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    cfg = peft.LoraConfig(target_modules=["layers.0"], r=2, use_dora=True)
    theirs = peft.get_peft_model(_base("mlp"), cfg)
    theirs.save_pretrained(str(tmp_path), safe_serialization=True)
    _side_files(tmp_path)
    with pytest.raises(LoraError, match=r"not a vanilla LoRA adapter .*use_dora=True"):
        load_adapter(_base("mlp"), tmp_path)


def test_wrong_shaped_weights_are_refused_by_name(tmp_path: Path) -> None:
    ours = attach_lora(_base("mlp"), LoraConfig(target_modules=["layers.0"], r=4))
    _side_files(tmp_path)
    save_adapter(ours, tmp_path, Normalizer.load(tmp_path / "normalizer.json"), {})
    text = (tmp_path / ADAPTER_CONFIG).read_text().replace('"r": 4', '"r": 2')
    (tmp_path / ADAPTER_CONFIG).write_text(text)
    with pytest.raises(LoraError, match=r"layers\.0\.lora_A\.weight \(4, 3\) != \(2, 3\)"):
        load_adapter(_base("mlp"), tmp_path)


def test_the_job_child_path_does_not_import_peft_or_transformers() -> None:
    code = (
        "import sys, torch\n"
        "from trainer_core import job, lora, base, evaluate, train, inputs, checkpoint, cnn\n"
        "from trainer_core.config import LoraConfig, PolicyConfig\n"
        "from trainer_core.policies import build_policy\n"
        "m = lora.attach_lora(build_policy(3, 2, PolicyConfig()), LoraConfig())\n"
        "m(torch.zeros(1, 3)).sum().backward()\n"
        "print(sorted(k for k in ('peft', 'transformers') if k in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
