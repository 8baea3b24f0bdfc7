"""Where a job runs: ``job.device`` (auto | cpu | cuda) and whether bf16 autocast is used.

``auto`` picks CUDA when torch sees a device (a Jetson, a desktop GPU), else the CPU. bf16 is
used only when asked (``job.bf16``) and the device supports it (CUDA with bf16 support: Ampere
and later, Jetson Orin); the CPU path stays float32, where autocast would cost more than it saves
for models this small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer_core.config import JobConfig


class DeviceError(ValueError):
    """The configured device is not available."""


@dataclass(frozen=True)
class Placement:
    """The chosen device and the compute dtype that goes into the release card."""

    device: torch.device
    bf16: bool

    @property
    def dtype(self) -> str:
        """``bfloat16`` or ``float32``: what the card records."""
        return "bfloat16" if self.bf16 else "float32"


def pick_device(job: JobConfig, cuda_available: bool | None = None) -> Placement:
    """The device and dtype for ``job``; raises :class:`DeviceError` for cuda without CUDA."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if job.device == "cuda" and not cuda:
        raise DeviceError("job.device is cuda but torch sees no CUDA device")
    use_cuda = job.device == "cuda" or (job.device == "auto" and cuda)
    device = torch.device("cuda" if use_cuda else "cpu")
    bf16 = bool(job.bf16 and use_cuda and torch.cuda.is_bf16_supported())
    return Placement(device, bf16)
