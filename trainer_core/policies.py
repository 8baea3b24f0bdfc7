"""Registry of policy families: family name -> builder (LeRobot style, one registry).

A builder takes the sizes from the feature spec and :class:`PolicyConfig` and returns a plain
``nn.Module`` mapping a normalised observation batch ``(B, O)`` to a normalised action batch
``(B, A)``. Submodules are named so LoRA targets read well (``layers.0``, ``layers.1``, ``head``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from trainer_core.config import PolicyConfig

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


Builder = Callable[[int, int, PolicyConfig], nn.Module]

FAMILIES: dict[str, Builder] = {
    "mlp": lambda n_obs, n_act, cfg: MLPPolicy(n_obs, n_act, cfg.hidden, cfg.activation),
    "cnn": lambda n_obs, n_act, cfg: _cnn(n_obs, n_act, cfg),
}


def _cnn(n_obs: int, n_act: int, cfg: PolicyConfig) -> nn.Module:
    from trainer_core.cnn import build_cnn  # cnn imports this module's config types

    return build_cnn(n_obs, n_act, cfg)


def build_policy(n_obs: int, n_act: int, cfg: PolicyConfig) -> nn.Module:
    """A freshly initialised policy of ``cfg.family``; raises KeyError naming known families."""
    try:
        builder = FAMILIES[cfg.family]
    except KeyError:
        raise KeyError(f"unknown policy family {cfg.family!r}; known: {sorted(FAMILIES)}") from None
    return builder(n_obs, n_act, cfg)


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the ``Linear`` and ``Conv2d`` submodules: what LoRA ``target_modules`` may name."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
