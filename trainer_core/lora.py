"""peft LoRA on named modules of a base policy, and the adapter directory format.

An adapter directory holds what peft writes (``adapter_config.json``,
``adapter_model.safetensors``; safe serialisation only) plus ``normalizer.json`` (the training
split's statistics, which the adapter's inputs and outputs are scaled by) and ``card.json``
(metrics, base sha256, episode hashes, config, timings). A release is such a directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from trainer_core.config import FeaturesConfig, LoraConfig, PolicyConfig
from trainer_core.features import Normalizer
from trainer_core.fsio import atomic_write_json
from trainer_core.policies import family_module_names, linear_module_names

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NORMALIZER_FILE = "normalizer.json"
CARD_FILE = "card.json"


class LoraError(ValueError):
    """LoRA cannot be attached or an adapter cannot be loaded; the message says why."""


def _matches(name: str, target: str) -> bool:
    # peft's own rule for a list of targets: the full name, or a dotted suffix of it.
    return name == target or name.endswith("." + target)


def missing_targets(
    policy: PolicyConfig, features: FeaturesConfig, cfg: LoraConfig
) -> tuple[list[str], list[str]]:
    """(targets that match no Linear module of the configured family, the names it has)."""
    if policy.family == "hf-causal-lm":
        from trainer_core.hf_lm import hf_module_names

        names = hf_module_names(policy)
    else:
        names = family_module_names(policy, features)
    return [t for t in cfg.target_modules if not any(_matches(n, t) for n in names)], names


def attach_lora(model: nn.Module, cfg: LoraConfig) -> PeftModel:
    """Wrap ``model`` with fresh LoRA weights on ``cfg.target_modules``; the base stays frozen.

    Every target must name a ``Linear`` or ``Conv2d`` module; otherwise :class:`LoraError`
    lists the names that exist (a legacy ``lora_layers: [q_proj, ...]`` on an MLP fails here,
    readably).
    """
    names = linear_module_names(model)
    missing = [t for t in cfg.target_modules if not any(_matches(n, t) for n in names)]
    if missing:
        raise LoraError(
            f"lora.target_modules {missing} match no Linear module or Conv2d of the base policy; "
            f"it has {names}"
        )
    peft_cfg = PeftLoraConfig(
        target_modules=list(cfg.target_modules),
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        bias="none",
    )
    return get_peft_model(model, peft_cfg)


def lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter weights only (what a checkpoint or a release needs)."""
    state = get_peft_model_state_dict(model)
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def load_lora_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Put saved adapter weights back; raises :class:`LoraError` if they do not fit."""
    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        raise LoraError(f"adapter weights {sorted(state)} do not fit this model {sorted(expected)}")
    set_peft_model_state_dict(model, state)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (LoRA only, once attached)."""
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(
    model: PeftModel, out_dir: Path, normalizer: Normalizer, card: dict[str, Any]
) -> None:
    """Write the adapter directory into ``out_dir`` (the caller stages and renames it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    readme = out_dir / "README.md"  # peft's generic model-card stub; card.json says more
    readme.unlink(missing_ok=True)
    normalizer.save(out_dir / NORMALIZER_FILE)
    atomic_write_json(out_dir / CARD_FILE, card)


def read_card(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's ``card.json``; raises :class:`LoraError` when absent or unreadable."""
    try:
        return json.loads((Path(adapter_dir) / CARD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LoraError(f"{adapter_dir}: unreadable {CARD_FILE}: {exc}") from None


def load_adapter(
    base_model: nn.Module, adapter_dir: Path, base_sha256: str | None = None
) -> tuple[PeftModel, Normalizer, dict[str, Any]]:
    """Load an adapter directory onto ``base_model`` (modified in place) for inference.

    When ``base_sha256`` is given, the card must name the same base: an adapter trained on
    another base is refused rather than silently producing nonsense.
    """
    adapter_dir = Path(adapter_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, NORMALIZER_FILE, CARD_FILE):
        if not (adapter_dir / name).is_file():
            raise LoraError(f"{adapter_dir}: adapter is missing {name}")
    card = read_card(adapter_dir)
    if base_sha256 is not None and card.get("base_sha256") != base_sha256:
        raise LoraError(
            f"{adapter_dir}: trained on base {card.get('base_sha256')!r}, "
            f"not on the configured base {base_sha256!r}"
        )
    try:
        normalizer = Normalizer.load(adapter_dir / NORMALIZER_FILE)
        model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise LoraError(f"{adapter_dir}: cannot load adapter: {exc}") from None
    model.eval()
    return model, normalizer, card
