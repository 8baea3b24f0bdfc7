"""A continuon-trainer policy plug-in: a gated residual MLP (see README.md for the contract)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class GatedBlock(nn.Module):
    """x + sigmoid(gate(x)) * up(x): a residual block LoRA can target by name (``up``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One gated residual step."""
        return x + torch.sigmoid(self.gate(x)) * torch.tanh(self.up(x))


class GatedResidualPolicy(nn.Module):
    """Observation -> ``stem`` -> gated blocks -> ``head`` -> action (all normalised)."""

    def __init__(self, n_obs: int, n_act: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Linear(n_obs, width)
        self.blocks = nn.ModuleList(GatedBlock(width) for _ in range(blocks))
        self.head = nn.Linear(width, n_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised actions for a batch of normalised observations."""
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def huber(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Less sensitive to the odd teleop spike than the default squared error."""
    return F.smooth_l1_loss(pred, target, beta=0.5)


def load_base(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Accept this package's 0.0 checkpoint names (``input.*``) as well as today's (``stem.*``)."""
    renamed = {
        ("stem." + k[len("input.") :] if k.startswith("input.") else k): v
        for k, v in tensors.items()
    }
    model.load_state_dict(renamed, strict=True)


def build(features: Any, policy: Any) -> dict[str, Any]:
    """The trainer's entry point: the model sized from the feature spec, a loss, a base loader."""
    options = dict(policy.options)
    model = GatedResidualPolicy(
        len(features.observation_names),
        len(features.action_names),
        width=int(options.get("width", 32)),
        blocks=int(options.get("blocks", 2)),
    )
    return {"model": model, "loss": huber, "load_base": load_base}
