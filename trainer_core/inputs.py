"""What a policy is fed: a numeric vector and, for camera policies, frames or trunk features.

:class:`ModelInputs` is the one representation ``train.py`` and ``evaluate.py`` use for every
family: ``batch(idx)`` returns the positional arguments of ``model(...)`` (``(obs,)`` for an
MLP, ``(obs, frames)`` or ``(obs, None, feats)`` for the cnn) and the matching targets, with
the seeded augmentation applied. A bare tensor is accepted too (numeric-only callers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer_core.image_config import Augment

TRUNK_CHUNK = 64  # frames per no-grad trunk pass: 256 cost +270 MB peak RSS (bench_camera)


@dataclass
class ModelInputs:
    """Normalised numeric observations (N, O) plus frames or trunk features, on one device."""

    numeric: torch.Tensor
    frames: Any = None  # trainer_core.frame_cache.FrameStore
    feats: torch.Tensor | None = None  # (N, F) trunk features, when the trunk is frozen
    augment: Augment | None = None
    seed: int = 0
    flip_col: int | None = None  # action column negated on a horizontal flip
    flip_offset: float = 0.0  # in normalised units, -y -> -y - 2 mean/std

    def __len__(self) -> int:
        return len(self.numeric)

    @property
    def device(self) -> torch.device:
        """Where the tensors live (frames are moved there per batch)."""
        return self.numeric.device

    def rows(self, start: int, stop: int) -> tuple[Any, ...]:
        """Model arguments for rows ``start:stop`` in order (evaluation; no augmentation)."""
        stop = min(stop, len(self.numeric))
        obs = self.numeric[start:stop]
        if self.feats is not None:
            return (obs, None, self.feats[start:stop])
        if self.frames is None:
            return (obs,)
        frames = torch.from_numpy(self.frames.gather(np.arange(start, stop)))
        return (obs, frames.to(self.device))

    def batch(
        self, idx: torch.Tensor, y: torch.Tensor, key: int
    ) -> tuple[tuple[Any, ...], torch.Tensor]:
        """Model arguments and targets for rows ``idx``; ``key`` seeds the augmentation."""
        obs, target = self.numeric[idx], y[idx]
        if self.feats is not None:
            return (obs, None, self.feats[idx]), target
        if self.frames is None:
            return (obs,), target
        frames = torch.from_numpy(self.frames.gather(idx.cpu().numpy()))
        if self.augment is not None and self.augment.active:
            frames, flipped = augment_frames(frames, self.augment, self.seed, key)
            if flipped is not None and self.flip_col is not None and flipped.any():
                target = target.clone()
                col = target[flipped, self.flip_col]
                target[flipped, self.flip_col] = -col - self.flip_offset
        return (obs, frames.to(self.device)), target


def batch_of(
    x: torch.Tensor | ModelInputs, y: torch.Tensor, idx: torch.Tensor, key: int
) -> tuple[tuple[Any, ...], torch.Tensor]:
    """``x.batch(...)`` for :class:`ModelInputs`, ``((x[idx],), y[idx])`` for a tensor."""
    if isinstance(x, ModelInputs):
        return x.batch(idx, y, key)
    return (x[idx],), y[idx]


def augment_frames(
    frames: torch.Tensor, aug: Augment, seed: int, key: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Brightness/contrast jitter, small shifts and (optionally) mirroring, uint8 in and out.

    A pure function of (frames, seed, key): a resumed job sees the same augmented batches.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + key + 7)
    b = len(frames)
    x = frames.float()
    if aug.contrast:
        c = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * aug.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
    if aug.brightness:
        x = x + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * aug.brightness * 255.0
    if aug.shift_px:
        dy, dx = torch.randint(-aug.shift_px, aug.shift_px + 1, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    flipped = None
    if aug.hflip:
        flipped = torch.rand(b, generator=gen) < 0.5
        x[flipped] = x[flipped].flip(3)
    return x.clamp_(0, 255).to(torch.uint8), flipped


def trunk_features(core: torch.nn.Module, frames: Any, device: torch.device) -> torch.Tensor:
    """``core.features`` of every frame in ``frames`` (a FrameStore), computed without grad."""
    out = []
    with torch.no_grad():
        for start in range(0, len(frames), TRUNK_CHUNK):
            rows = np.arange(start, min(start + TRUNK_CHUNK, len(frames)))
            out.append(core.features(torch.from_numpy(frames.gather(rows)).to(device)))
    return torch.cat(out) if out else torch.zeros(0, core.n_features, device=device)


def trunk_is_frozen(model: torch.nn.Module, lora_targets: list[str]) -> bool:
    """True when the model has a trunk and no LoRA target lies inside it."""
    return hasattr(model, "trunk") and not any(
        t == "trunk" or t.startswith("trunk.") or t.startswith("conv") for t in lora_targets
    )


def training_inputs(
    model: torch.nn.Module,
    arrays: Any,
    numeric: torch.Tensor,
    features: Any,
    lora_targets: list[str] | None,
    normalizer: Any,
    seed: int,
) -> tuple[torch.Tensor | ModelInputs, str | None]:
    """What the loop trains on, and a note when the trunk's features were computed once.

    ``arrays`` is the train split's :class:`~trainer_core.features.EpisodeArrays`, ``model``
    the LoRA-wrapped policy (``get_base_model()`` is the bare one); ``lora_targets`` None means
    every weight trains (base pretraining), so the trunk is never cached.
    """
    if arrays.frames is None:
        return numeric, None
    spec = features.images[0]
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    aug = spec.augment
    if lora_targets is not None and trunk_is_frozen(core, lora_targets) and not aug.active:
        feats = trunk_features(core, arrays.frames, numeric.device)
        return ModelInputs(numeric, feats=feats), f"trunk features cached for {len(feats)} frames"
    names = features.action_names
    flip_col = names.index(aug.flip_action) if aug.hflip and aug.flip_action in names else None
    offset = 0.0
    if flip_col is not None:
        offset = float(2 * normalizer.act_mean[flip_col] / normalizer.act_std[flip_col])
    return (
        ModelInputs(
            numeric,
            frames=arrays.frames,
            augment=aug,
            seed=seed,
            flip_col=flip_col,
            flip_offset=offset,
        ),
        None,
    )
