"""The camera-frame feature spec: where a step's frame is, and how it becomes model input.

Kept apart from ``config.py`` so the frame path can grow without touching the shared config
module; :class:`ImageFeature` is part of ``features.images`` (and so of every fingerprint, card
and release: the runtime must preprocess exactly as training did).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Augment(BaseModel):
    """Training-time augmentation suited to driving; seeded per (seed, epoch, batch)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    brightness: float = Field(0.0, ge=0, le=1, description="max +/- fraction of full scale")
    contrast: float = Field(0.0, ge=0, le=1, description="max +/- fraction around the mean")
    shift_px: int = Field(0, ge=0, le=16, description="max horizontal/vertical shift, pixels")
    hflip: bool = Field(False, description="mirror half the frames, negating flip_action")
    flip_action: str = Field("steering", min_length=1, description="action negated on a flip")

    @property
    def active(self) -> bool:
        """True when any augmentation would change a frame."""
        return bool(self.brightness or self.contrast or self.shift_px or self.hflip)


class ImageFeature(BaseModel):
    """One camera stream: ``path`` in the step, output ``size`` [height, width], ``channels``.

    ``crop`` [top, bottom, left, right] pixels are cut from the decoded frame before it is
    resized to ``size`` (Donkeycar users crop the sky). When the step records ``width``/
    ``height`` the decoded frame must match them.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field("observation.media.rgb", min_length=1)
    kind: Literal["image"] = "image"
    name: str = Field("rgb", min_length=1)
    size: tuple[int, int] = (120, 160)
    channels: Literal["rgb", "gray"] = "rgb"
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    augment: Augment = Field(default_factory=Augment)

    @model_validator(mode="after")
    def _sizes(self) -> ImageFeature:
        if min(self.size) < 8 or max(self.size) > 1024:
            raise ValueError(f"size must be [height, width] within 8..1024 (got {self.size})")
        if min(self.crop) < 0:
            raise ValueError(f"crop must be >= 0 pixels (got {self.crop})")
        return self

    @property
    def n_channels(self) -> int:
        """3 for rgb, 1 for gray."""
        return 3 if self.channels == "rgb" else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed frame."""
        return (self.n_channels, self.size[0], self.size[1])

    def cache_key(self) -> str:
        """What a decoded frame depends on (augmentation is applied later, so left out)."""
        spec = self.model_dump(mode="json", exclude={"augment", "name"})
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
