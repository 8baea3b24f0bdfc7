"""Registry of policy families: family name -> builder (LeRobot style, one registry).

A builder takes the sizes from the feature spec, :class:`PolicyConfig` and the feature spec
itself (token families split the observation vector by group) and returns a plain ``nn.Module``
mapping a normalised observation batch ``(B, O)`` to a normalised action batch ``(B, A)``.
Submodules are named so LoRA targets read well (``layers.0``, ``head``, ``q_proj``). Families
not built in are plug-ins (trainer_core/plugins.py); ``hf-causal-lm`` has its own job path
(trainer_core/hf_lm.py) and is listed here so every family name lives in one place.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from trainer_core.config import FeaturesConfig, PolicyConfig
from trainer_core.plugins import build_plugin, is_plugin
from trainer_core.transformer import build_transformer

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class MLPPolicy(nn.Module):
    """Hidden ``Linear`` layers ``layers.<i>`` with an activation after each, then ``head``."""

    def __init__(self, n_obs: int, n_act: int, hidden: list[int], activation: str) -> None:
        super().__init__()
        sizes = [n_obs, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(sizes[-1], n_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Actions (normalised) for a batch of normalised observations."""
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


Builder = Callable[[int, int, PolicyConfig, FeaturesConfig | None], nn.Module]


def _hf_not_here(n_obs: int, n_act: int, cfg: PolicyConfig, features: object) -> nn.Module:
    raise ValueError("hf-causal-lm is a language model: it trains through trainer_core.hf_lm")


FAMILIES: dict[str, Builder] = {
    "mlp": lambda n_obs, n_act, cfg, features=None: MLPPolicy(
        n_obs, n_act, cfg.hidden, cfg.activation
    ),
    "transformer": build_transformer,
    "cnn": lambda n_obs, n_act, cfg, features=None: _cnn(n_obs, n_act, cfg),
    "hf-causal-lm": _hf_not_here,
}


def _cnn(n_obs: int, n_act: int, cfg: PolicyConfig) -> nn.Module:
    from trainer_core.cnn import build_cnn  # cnn imports this module's config types

    return build_cnn(n_obs, n_act, cfg)


def build_policy(
    n_obs: int, n_act: int, cfg: PolicyConfig, features: FeaturesConfig | None = None
) -> nn.Module:
    """A freshly initialised policy of ``cfg.family`` (a built-in or a plug-in).

    Raises ValueError (a :class:`~trainer_core.plugins.PluginError` for plug-ins) saying why a
    policy cannot be built.
    """
    if cfg.family in FAMILIES:
        return FAMILIES[cfg.family](n_obs, n_act, cfg, features)
    if is_plugin(cfg.family):
        return build_plugin(n_obs, n_act, cfg, features)
    raise ValueError(f"unknown policy family {cfg.family!r}; known: {sorted(FAMILIES)}")


def family_module_names(cfg: PolicyConfig, features: FeaturesConfig) -> list[str]:
    """The Linear module names of the configured family, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_policy(
            len(features.observation_names), len(features.action_names), cfg, features
        )
    return linear_module_names(model)


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the ``Linear`` and ``Conv2d`` submodules: what LoRA ``target_modules`` may name."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
