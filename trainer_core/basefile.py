"""Which file holds a base policy's weights (torch-free: the daemon checks it exists)."""

from __future__ import annotations

from pathlib import Path

from trainer_core.config import PolicyConfig


def weights_path(base_path: Path) -> Path:
    """The file that holds a base's weights.

    Safetensors bytes are never written under a ``.pt`` name (a legacy ``base_model_path`` such
    as ``hat_vision_seed.pt``): they go beside it as ``<stem>.safetensors``, which is then
    preferred; a real legacy ``.pt`` alone is read through ``torch.load(weights_only=True)``.
    """
    base_path = Path(base_path)
    if base_path.suffix != ".pt":
        return base_path
    beside = base_path.with_suffix(".safetensors")
    return beside if beside.is_file() or not base_path.is_file() else base_path


def base_weights_file(policy: PolicyConfig) -> Path:
    """The file whose presence means the configured base exists (a model folder's config for
    ``hf-causal-lm``)."""
    if policy.family == "hf-causal-lm":
        return Path(policy.model_dir or "<policy.model_dir unset>") / "config.json"
    return weights_path(policy.base_path)
