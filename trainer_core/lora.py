"""LoRA on named Linear/Conv2d modules of a base policy, in peft's adapter directory format.

The child does not import peft: ``import peft`` pulls in transformers and costs seconds of
start-up, for a few low-rank matrices. This module implements exactly the part of peft's LoRA
the policies use (vanilla LoRA on ``nn.Linear`` and ``nn.Conv2d``: ``y = base(x) +
B(A(dropout(x))) * alpha / r``, A Kaiming-uniform, B zero) and reads and writes peft's files
byte-compatibly, so peft loads our adapters and we load peft's (tests check both, output for
output). The language-model family (``trainer_core/hf_lm.py``) stays on real peft.

An adapter directory holds ``adapter_config.json`` (peft's ``LoraConfig`` fields),
``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``, metadata ``format: pt``, as peft's ``save_pretrained`` writes them) plus
``normalizer.json`` (the training split's statistics, which the adapter's inputs and outputs are
scaled by) and ``card.json`` (metrics, base sha256, episode hashes, config, timings). A release is
such a directory. :func:`merge_lora` folds the low-rank update into the base weights (peft's
``merge_and_unload``) for runtimes that want one plain model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trainer_core.config import FeaturesConfig, LoraConfig, PolicyConfig
from trainer_core.features import Normalizer
from trainer_core.fsio import atomic_write_json
from trainer_core.policies import family_module_names, linear_module_names

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NORMALIZER_FILE = "normalizer.json"
CARD_FILE = "card.json"
KEY_PREFIX = (
    "base_model.model."  # peft's prefix for adapter weight keys (PeftModel.base_model.model)
)
PEFT_VERSION = "0.21.2"  # the peft whose format this mirrors (constraints.txt pins it)

# Fields of peft's LoraConfig that must hold these values for vanilla LoRA: an adapter asking
# for anything else (DoRA, rsLoRA patterns, biases, extra modules) is refused, never approximated.
_VANILLA = {
    "peft_type": "LORA",
    "bias": "none",
    "fan_in_fan_out": False,
    "use_dora": False,
    "lora_bias": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "exclude_modules": None,
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
}


class LoraError(ValueError):
    """LoRA cannot be attached or an adapter cannot be loaded; the message says why."""


def _matches(name: str, target: str) -> bool:
    # peft's own rule for a list of targets: the full name, or a dotted suffix of it.
    return name == target or name.endswith("." + target)


def _targeted(name: str, targets: list[str] | str) -> bool:
    # peft: a string is a regular expression over the full name; a list uses _matches.
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(_matches(name, t) for t in targets)


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


class LoraLayer(nn.Module):
    """A frozen ``nn.Linear`` or ``nn.Conv2d`` (``base_layer``) plus a trainable low-rank update.

    Shapes follow peft: Linear A (r, in), B (out, r); Conv2d A is a conv with the base's
    kernel, stride and padding into r channels, B a 1x1 conv out of them (base's groups).
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, rslora: bool) -> None:
        super().__init__()
        self.base_layer = base
        if isinstance(base, nn.Linear):
            self.lora_A: nn.Module = nn.Linear(base.in_features, r, bias=False)
            self.lora_B: nn.Module = nn.Linear(r, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            self.lora_A = nn.Conv2d(
                base.in_channels, r, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.lora_B = nn.Conv2d(r, base.out_channels, 1, 1, groups=base.groups, bias=False)
        else:  # attach_lora only wraps the two kinds; a loaded config cannot name others
            raise LoraError(f"LoRA supports Linear and Conv2d, not {type(base).__name__}")
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.r, self.alpha = r, alpha
        # peft's default init: B = 0, so a fresh adapter leaves the base's outputs unchanged.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base's output plus the scaled low-rank update."""
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight of the base's shape (peft's ``get_delta_weight``)."""
        a, b = self.lora_A.weight, self.lora_B.weight
        if isinstance(self.base_layer, nn.Linear):
            return (b @ a) * self.scaling
        if self.base_layer.weight.shape[2:4] == (1, 1):
            return (b.squeeze(3).squeeze(2) @ a.squeeze(3).squeeze(2))[:, :, None, None] * (
                self.scaling
            )
        delta = torch.nn.functional.conv2d(a.transpose(0, 1), b)
        if self.base_layer.groups > 1:
            return delta * self.scaling
        return delta.transpose(0, 1) * self.scaling


class LoraModel(nn.Module):
    """A policy with :class:`LoraLayer` in place of its targeted modules (the base is modified in
    place, as peft does); calls go straight to the policy. ``get_base_model()`` is that policy."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.peft_config = config  # the adapter_config.json this adapter saves

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped policy's forward."""
        return self.model(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The policy (with its LoRA layers), peft's name for it."""
        return self.model

    def lora_layers(self) -> dict[str, LoraLayer]:
        """Module name (as in the bare policy) -> its LoRA layer, in module order."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, LoraLayer)}


def peft_config(cfg: LoraConfig, base_class: type[nn.Module] | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` peft would write for ``cfg`` (same fields, same values)."""
    out: dict[str, Any] = {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": cfg.alpha,
        "lora_bias": False,
        "lora_dropout": cfg.dropout,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": PEFT_VERSION,
        "qalora_group_size": 16,
        "r": cfg.r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(set(cfg.target_modules)),
        "target_parameters": None,
        "task_type": None,
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
        "velora_config": None,
    }
    if base_class is not None:
        out["auto_mapping"] = {
            "base_model_class": base_class.__name__,
            "parent_library": base_class.__module__,
        }
    return out


def _inject(model: nn.Module, config: dict[str, Any]) -> LoraModel:
    """Freeze ``model`` and replace every targeted Linear/Conv2d with a :class:`LoraLayer`."""
    targets = config["target_modules"]
    chosen = [n for n in linear_module_names(model) if _targeted(n, targets)]
    if not chosen:
        raise LoraError(f"lora target_modules {targets!r} match no Linear or Conv2d module")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, attr)
        layer = LoraLayer(
            base,
            int(config["r"]),
            float(config["lora_alpha"]),
            float(config.get("lora_dropout", 0.0)),
            bool(config.get("use_rslora", False)),
        )
        layer.to(base.weight.device, base.weight.dtype)
        setattr(parent, attr, layer)
    return LoraModel(model, config)


def attach_lora(model: nn.Module, cfg: LoraConfig) -> LoraModel:
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
    return _inject(model, peft_config(cfg, type(model)))


def lora_state(model: LoraModel) -> dict[str, torch.Tensor]:
    """The adapter weights only, under peft's saved key names (a checkpoint or a release)."""
    out = {}
    for name, layer in model.lora_layers().items():
        for part in ("lora_A", "lora_B"):
            weight = getattr(layer, part).weight
            out[f"{KEY_PREFIX}{name}.{part}.weight"] = weight.detach().cpu().clone().contiguous()
    return out


def load_lora_state(model: LoraModel, state: dict[str, torch.Tensor]) -> None:
    """Put saved adapter weights back; raises :class:`LoraError` if they do not fit."""
    params = {}
    for name, layer in model.lora_layers().items():
        for part in ("lora_A", "lora_B"):
            params[f"{KEY_PREFIX}{name}.{part}.weight"] = getattr(layer, part).weight
    if set(state) != set(params):
        raise LoraError(f"adapter weights {sorted(state)} do not fit this model {sorted(params)}")
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(params[k].shape)}"
        for k, v in state.items()
        if v.shape != params[k].shape
    ]
    if wrong:
        raise LoraError(f"adapter weight shapes do not fit this model: {wrong}")
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (LoRA only, once attached)."""
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(
    model: LoraModel, out_dir: Path, normalizer: Normalizer, card: dict[str, Any]
) -> None:
    """Write the adapter directory into ``out_dir`` (the caller stages and renames it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(model), str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    atomic_write_json(out_dir / ADAPTER_CONFIG, model.peft_config)
    normalizer.save(out_dir / NORMALIZER_FILE)
    atomic_write_json(out_dir / CARD_FILE, card)


def read_card(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's ``card.json``; raises :class:`LoraError` when absent or unreadable."""
    try:
        return json.loads((Path(adapter_dir) / CARD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LoraError(f"{adapter_dir}: unreadable {CARD_FILE}: {exc}") from None


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json``, checked to be vanilla LoRA this module reproduces exactly."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoraError(f"{path}: unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise LoraError(f"{path}: not a JSON object")
    odd = [
        f"{k}={config[k]!r}"
        for k, want in _VANILLA.items()
        if k in config and config[k] != want and not (want == {} and config[k] is None)
    ]
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        odd.append(f"r={r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        odd.append(f"lora_alpha={alpha!r}")
    if not isinstance(config.get("target_modules"), list | str):
        odd.append(f"target_modules={config.get('target_modules')!r}")
    if odd:
        raise LoraError(f"{path}: not a vanilla LoRA adapter this trainer can load: {odd}")
    config["inference_mode"] = True
    return config


def load_adapter(
    base_model: nn.Module, adapter_dir: Path, base_sha256: str | None = None
) -> tuple[LoraModel, Normalizer, dict[str, Any]]:
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
    config = read_adapter_config(adapter_dir)
    try:
        normalizer = Normalizer.load(adapter_dir / NORMALIZER_FILE)
        weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise LoraError(f"{adapter_dir}: cannot load adapter: {exc}") from None
    model = _inject(base_model, config)
    try:
        load_lora_state(model, weights)
    except LoraError as exc:
        raise LoraError(f"{adapter_dir}: {exc}") from None
    model.eval()
    return model, normalizer, card


def merge_lora(model: LoraModel) -> nn.Module:
    """The bare policy with every LoRA update folded into its base weights (peft's
    ``merge_and_unload``): same outputs, plain Linear/Conv2d modules, no adapter."""
    core = model.get_base_model()
    with torch.no_grad():
        for name, layer in model.lora_layers().items():
            base = layer.base_layer
            base.weight += layer.delta_weight().to(base.weight.dtype)
            parent_name, _, attr = name.rpartition(".")
            parent = core.get_submodule(parent_name) if parent_name else core
            setattr(parent, attr, base)
    return core
