"""Shadow evaluation: baseline and candidate replayed on held-out steps, scored side by side.

Both policies see the same raw observations; each scales them with its own normaliser (the one
it was trained with) and its predicted actions are mapped back to raw units. Errors are then
measured against the recorded actions on ONE yardstick for both policies: the raw squared error
per action name, and that error divided by the variance of the action in the BASE's pretraining
data (``base card normalizer``). The base's statistics are fixed for every release trained on
it, so normalised numbers stay comparable across releases. The safety head scores each policy's
predicted raw actions with the proximity recorded in the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from safety.config import SafetyConfig
from safety.head import SafetyHead
from safety.metrics import EvalMetrics, PolicyScores
from trainer_core.features import EpisodeArrays, Normalizer
from trainer_core.inputs import ModelInputs

CHUNK = 4096  # rows per forward pass; the preemption flag is checked between chunks
FRAME_CHUNK = 256  # rows per pass when frames are decoded into the batch (bounded memory)


class EvalInterrupted(Exception):
    """Preemption arrived during evaluation."""


@dataclass
class Policy:
    """A policy as evaluation sees it: a model in normalised units and its normaliser."""

    model: nn.Module
    normalizer: Normalizer


@torch.no_grad()
def predict(
    policy: Policy,
    obs: np.ndarray,
    device: torch.device,
    stop: Callable[[], bool],
    frames: Any = None,
) -> np.ndarray:
    """Raw-unit actions for raw observations ``obs`` (N, O) and their ``frames`` (a
    FrameStore, camera policies); raises :class:`EvalInterrupted`."""
    policy.model.eval()
    x = ModelInputs(torch.from_numpy(policy.normalizer.norm_obs(obs)).to(device), frames)
    chunk = CHUNK if frames is None else FRAME_CHUNK
    out = []
    for start in range(0, len(x), chunk):
        if stop():
            raise EvalInterrupted
        out.append(policy.model(*x.rows(start, start + chunk)).float().cpu().numpy())
    pred = np.concatenate(out) if out else np.zeros((0, len(policy.normalizer.act_names)))
    return policy.normalizer.denorm_act(pred)


def score(
    pred: np.ndarray,
    data: EpisodeArrays,
    names: list[str],
    yardstick_std: np.ndarray,
    head: SafetyHead,
) -> PolicyScores:
    """Errors of ``pred`` against the recorded actions, and the safety head's view of ``pred``."""
    if len(data) == 0:
        zeros = {n: 0.0 for n in names}
        return PolicyScores(
            mse=0.0,
            mse_raw=0.0,
            mse_per_name=zeros,
            mse_norm_per_name=dict(zeros),
            clamp_rate=0.0,
            warn_rate=0.0,
            block_rate=0.0,
            max_risk=0.0,
        )
    err = (pred.astype(np.float64) - data.act.astype(np.float64)) ** 2
    raw = err.mean(axis=0)
    norm = raw / yardstick_std.astype(np.float64) ** 2
    rates = head.assess(pred, names, data.proximity, data.episode_start).rates()
    return PolicyScores(
        mse=float(norm.mean()),
        mse_raw=float(raw.mean()),
        mse_per_name={n: float(v) for n, v in zip(names, raw, strict=True)},
        mse_norm_per_name={n: float(v) for n, v in zip(names, norm, strict=True)},
        clamp_rate=float(rates["clamp_rate"]),
        warn_rate=float(rates["warn_rate"]),
        block_rate=float(rates["block_rate"]),
        max_risk=float(rates["max_risk"]),
    )


def shadow_eval(
    data: EpisodeArrays,
    n_episodes: int,
    baseline: Policy,
    baseline_kind: str,
    candidate: Policy,
    yardstick: Normalizer,
    safety: SafetyConfig,
    device: torch.device,
    stop: Callable[[], bool],
) -> EvalMetrics:
    """Replay ``data`` through both policies; zero steps gives ``eval_steps=0`` (rule rejects)."""
    names = yardstick.act_names
    head = SafetyHead(safety)
    pred_base = predict(baseline, data.obs, device, stop, data.frames)
    pred_cand = predict(candidate, data.obs, device, stop, data.frames)
    if len(data):
        shift = np.abs(pred_cand - pred_base) / yardstick.act_std
        shift_mean, shift_max = float(shift.mean()), float(shift.max())
    else:
        shift_mean = shift_max = 0.0
    return EvalMetrics(
        eval_steps=len(data),
        eval_episodes=n_episodes,
        baseline_kind=baseline_kind,
        baseline=score(pred_base, data, names, yardstick.act_std, head),
        candidate=score(pred_cand, data, names, yardstick.act_std, head),
        shift_mean=shift_mean,
        shift_max=shift_max,
    )
