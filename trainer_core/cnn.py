"""The ``cnn`` policy family: a Donkeycar-class camera pilot.

``trunk`` (convolutions ``trunk.conv0`` ... with ReLU, then a fixed adaptive pool, so any
input size maps to the same feature width) -> optional numeric observations joined after it
-> ``dense.0``, ``dense.1`` ... (``policy.hidden``) -> ``head``. Frames arrive as uint8
(B, C, H, W) and are scaled here, so a runtime feeds the camera's bytes as they are. LoRA may
target any conv or linear by these names (``dense.0``, ``head``, ``trunk.conv3``). When every
LoRA target lies above the trunk, the job computes :meth:`CNNPolicy.features` once per frame and
trains on them (``feats=``), skipping the frozen convolutions on every step.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import nn

from trainer_core.config import PolicyConfig

POOL = (3, 4)  # trunk output grid, whatever the frame size (120x160 -> 3x4 like Donkeycar's)
IN_CHANNELS = 3  # gray frames are repeated to 3 channels, so one trunk fits both
KERNELS = (5, 5, 3, 3, 3, 3)
STRIDES = (2, 2, 2, 1, 1, 1)


class CNNPolicy(nn.Module):
    """Conv trunk + dense layers + action head; see the module docstring for names."""

    def __init__(self, n_obs: int, n_act: int, cfg: PolicyConfig) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (c_in, c_out) in enumerate(itertools.pairwise([IN_CHANNELS, *cfg.conv])):
            k, s = KERNELS[min(i, len(KERNELS) - 1)], STRIDES[min(i, len(STRIDES) - 1)]
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2)
            layers[f"relu{i}"] = nn.ReLU()
        layers["pool"] = nn.AdaptiveAvgPool2d(POOL)
        layers["flatten"] = nn.Flatten()
        self.trunk = nn.Sequential(layers)
        self.n_features = cfg.conv[-1] * POOL[0] * POOL[1]
        sizes = [self.n_features + n_obs, *cfg.hidden]
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = nn.ReLU()
        self.head = nn.Linear(sizes[-1], n_act)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Trunk features (B, F) of uint8 frames (B, C, H, W)."""
        x = frames.float() * (1.0 / 255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, IN_CHANNELS, -1, -1)
        return self.trunk(x)

    def forward(
        self,
        obs: torch.Tensor,
        frames: torch.Tensor | None = None,
        feats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised actions from normalised numeric ``obs`` and frames (or their features)."""
        if feats is None:
            if frames is None:
                raise ValueError("the cnn policy needs frames (or precomputed trunk features)")
            feats = self.features(frames)
        x = torch.cat([feats, obs], dim=1) if obs.shape[1] else feats
        for layer in self.dense:
            x = self.act(layer(x))
        return self.head(x)


def build_cnn(n_obs: int, n_act: int, cfg: PolicyConfig) -> nn.Module:
    """Registry builder for ``family: cnn``."""
    return CNNPolicy(n_obs, n_act, cfg)
