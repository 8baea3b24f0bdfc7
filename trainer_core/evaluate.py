"""Shadow evaluation: baseline and candidate replayed on held-out steps, scored side by side.

Both policies see the same raw observations; each scales them with its own normaliser (the one
it was trained with) and its predicted actions are mapped back to raw units. The safety head
scores the RAW prediction (an out-of-bounds command is what the rule must see); errors are
measured on the CLAMPED prediction (what the robot would execute) against the recorded
actions, on ONE yardstick for both policies: the raw squared error
per action name, and that error divided by the variance of the action in the BASE's pretraining
data (``base card normalizer``). The base's statistics are fixed for every release trained on
it, so normalised numbers stay comparable across releases. Besides pooled numbers, every
held-out episode gets its own (:class:`safety.metrics.EpisodeEvidence`): the promotion rule
bootstraps over episodes, not steps.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from safety.config import SafetyConfig
from safety.head import BLOCK, WARN, Assessment, SafetyHead
from safety.metrics import EpisodeEvidence, EvalMetrics, PolicyEpisode, PolicyScores
from trainer_core.features import EpisodeArrays, EpisodeInfo, Normalizer
from trainer_core.inputs import ModelInputs

CHUNK = 4096  # rows per forward pass; the preemption flag is checked between chunks
FRAME_CHUNK = 64  # rows per pass with frames: bounded memory (256 cost +270 MB, bench_camera)
SHIFT_CAP = 1e6  # a NaN/Inf prediction shifts "infinitely": capped so the result stays JSON


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


def worst_case_error(
    clamped: np.ndarray, recorded: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Squared error of the executed (clamped) actions; a non-finite prediction is charged the
    largest error its bounds allow, so a NaN costs the most and every number stays finite."""
    rec = recorded.astype(np.float64)
    err = (clamped - rec) ** 2
    worst = np.maximum((rec - lo) ** 2, (hi - rec) ** 2)
    return np.where(np.isfinite(err), err, worst)


@dataclass
class Scored:
    """One policy on the held-out steps: per-step error (normalised) and the head's view."""

    norm_err: np.ndarray  # (N, A) normalised squared error of the executed action
    raw_err: np.ndarray  # (N, A) raw squared error
    assessment: Assessment  # of the prediction with demonstrated-bound overshoots at the bound
    nonfinite: np.ndarray  # (N,) bool
    at_demo_bound: np.ndarray  # (N,) bool: left a bound only where the demonstration commanded it


def assess_policy(
    pred: np.ndarray,
    data: EpisodeArrays,
    names: list[str],
    yardstick_std: np.ndarray,
    head: SafetyHead,
) -> Scored:
    """Safety rates on the raw prediction; error on what the robot would execute (clamped).

    A prediction past a bound that the demonstration on the same step commanded (see
    :func:`demonstrated_bound`) is scored as the bound: the robot executes exactly what the
    demonstrator did, so it is not evidence of leaving the bounds (and does not warn). A
    prediction at a bound the recording was clipped to is counted as leaving it (see
    :func:`at_clipped_bound`)."""
    lo, hi = head.bounds(names)
    p = np.asarray(pred, np.float64)
    tolerance = head.cfg.demo_bound_tolerance
    at_demo = demonstrated_bound(p, data, lo, hi, tolerance)
    judged = np.where(at_demo, np.clip(p, lo, hi), p)
    # Just past the bound, so the head counts the clamp (its clamp term does not grow with size);
    # the executed action, and so the error, stays the prediction itself.
    at_clipped = at_clipped_bound(p, data, lo, hi, tolerance)
    past = np.where(data.act >= hi, np.nextafter(hi, np.inf), np.nextafter(lo, -np.inf))
    a = head.assess(np.where(at_clipped, past, judged), names, data.proximity, data.episode_start)
    if at_clipped.any():
        executed = np.where(at_clipped, np.clip(p, lo, hi), a.clamped_actions)
        a = dataclasses.replace(a, clamped_actions=executed)
    raw = worst_case_error(a.clamped_actions, data.act, lo, hi)
    norm = raw / yardstick_std.astype(np.float64) ** 2
    nonfinite = ~np.isfinite(p).all(axis=1)
    outside = at_demo.any(axis=1) & ~a.clamped
    return Scored(norm, raw, a, nonfinite, outside)


def demonstrated_bound(
    pred: np.ndarray, data: EpisodeArrays, lo: np.ndarray, hi: np.ndarray, tolerance: float
) -> np.ndarray:
    """(N, A) bool: ``pred`` lies past a bound that the recorded action on the same step
    commanded, i.e. lay within ``tolerance`` x the bound width of that same bound, without
    having been clipped there at ingest (a demonstrator past the bound is not a demonstration
    of it). A teleoperator holding the stick at its limit records the limit; a policy fitted
    to it overshoots on about half such steps, and the runtime clamps it back to what the
    demonstrator did."""
    rec = data.act.astype(np.float64)
    slack = tolerance * (hi - lo)
    with np.errstate(invalid="ignore"):
        out = ((pred > hi) & (rec >= hi - slack)) | ((pred < lo) & (rec <= lo + slack))
    if data.act_outside is not None:
        out &= ~data.act_outside
    return out


def at_clipped_bound(
    pred: np.ndarray, data: EpisodeArrays, lo: np.ndarray, hi: np.ndarray, tolerance: float
) -> np.ndarray:
    """(N, A) bool: ``pred`` reaches (within ``tolerance`` x the bound width) a bound that the
    recording on the same step was clipped to at ingest (``features.out_of_bounds: clip``).

    The demonstration asked for more than the bounds allow there; a policy that follows it to
    the bound learnt from data past it and is scored as leaving the bounds, baseline and
    candidate alike. Without this, a candidate trained on a x1.6 throttle clipped to +-1 rides
    the bound instead of overshooting it and no in-bounds check can see it."""
    if data.act_outside is None:
        return np.zeros(np.shape(pred), bool)
    rec = data.act.astype(np.float64)
    slack = tolerance * (hi - lo)
    with np.errstate(invalid="ignore"):
        up = (rec >= hi) & (pred >= hi - slack)
        down = (rec <= lo) & (pred <= lo + slack)
    return data.act_outside & (up | down)


def score(
    pred: np.ndarray,
    data: EpisodeArrays,
    names: list[str],
    yardstick_std: np.ndarray,
    head: SafetyHead,
) -> PolicyScores:
    """Errors of ``pred`` (clamped) against the recorded actions, and the head's view of it."""
    return pooled(assess_policy(pred, data, names, yardstick_std, head), names)


def pooled(scored: Scored, names: list[str]) -> PolicyScores:
    """Pooled numbers over every held-out step (what the log and the card show)."""
    if scored.assessment.n == 0:
        raw = norm = np.zeros(len(names))
    else:
        raw, norm = scored.raw_err.mean(axis=0), scored.norm_err.mean(axis=0)
    rates = scored.assessment.rates()
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


def _episode_part(scored: Scored, rows: slice, names: list[str]) -> PolicyEpisode:
    a = scored.assessment
    return PolicyEpisode(
        sq_err={n: float(v) for n, v in zip(names, scored.norm_err[rows].sum(axis=0), strict=True)},
        clamp=int(a.clamped[rows].sum()),
        clamp_at_demo=int(scored.at_demo_bound[rows].sum()),
        warn=int((a.label[rows] == WARN).sum()),
        block=int((a.label[rows] == BLOCK).sum()),
        max_risk=float(a.risk[rows].max()),
        risk_sum=float(a.risk[rows].sum()),
        nonfinite=int(scored.nonfinite[rows].sum()),
    )


def episode_evidence(
    base: Scored, cand: Scored, data: EpisodeArrays, infos: list[EpisodeInfo], names: list[str]
) -> list[EpisodeEvidence]:
    """Per held-out episode, baseline and candidate side by side (the bootstrap's units)."""
    starts = [*np.flatnonzero(data.episode_start).tolist(), len(data)]
    out: list[EpisodeEvidence] = []
    ba, ca = base.assessment, cand.assessment
    for k, (lo, hi) in enumerate(itertools.pairwise(starts)):
        rows = slice(int(lo), int(hi))
        info = infos[k] if k < len(infos) else EpisodeInfo(f"episode-{k}", [])
        out.append(
            EpisodeEvidence(
                episode_id=info.episode_id,
                steps=int(hi - lo),
                slices=list(info.slices),
                baseline=_episode_part(base, rows, names),
                candidate=_episode_part(cand, rows, names),
                worse_clamp=int((ca.clamped[rows] & ~ba.clamped[rows]).sum()),
                worse_warn=int(((ca.label[rows] >= WARN) & (ba.label[rows] < WARN)).sum()),
                worse_block=int(((ca.label[rows] == BLOCK) & (ba.label[rows] < BLOCK)).sum()),
            )
        )
    return out


def shadow_eval(
    data: EpisodeArrays,
    episodes: int | list[EpisodeInfo],
    baseline: Policy,
    baseline_kind: str,
    candidate: Policy,
    yardstick: Normalizer,
    safety: SafetyConfig,
    device: torch.device,
    stop: Callable[[], bool],
) -> EvalMetrics:
    """Replay ``data`` through both policies; zero steps gives ``eval_steps=0`` (rule rejects).

    ``episodes``: what each episode in ``data`` is (ids and slices, from
    :func:`trainer_core.features.read_split`), or just how many there are."""
    names = yardstick.act_names
    infos = episodes if isinstance(episodes, list) else []
    n_episodes = len(episodes) if isinstance(episodes, list) else episodes
    head = SafetyHead(safety)
    pred_base = predict(baseline, data.obs, device, stop, data.frames)
    pred_cand = predict(candidate, data.obs, device, stop, data.frames)
    base = assess_policy(pred_base, data, names, yardstick.act_std, head)
    cand = assess_policy(pred_cand, data, names, yardstick.act_std, head)
    if len(data):
        shift = np.abs(cand.assessment.clamped_actions - base.assessment.clamped_actions)
        shift = np.nan_to_num(shift / yardstick.act_std, nan=np.inf)
        shift_mean, shift_max = float(shift.mean()), float(shift.max())
    else:
        shift_mean = shift_max = 0.0
    return EvalMetrics(
        eval_steps=len(data),
        eval_episodes=n_episodes,
        baseline_kind=baseline_kind,
        baseline=pooled(base, names),
        candidate=pooled(cand, names),
        shift_mean=min(shift_mean, SHIFT_CAP),
        shift_max=min(shift_max, SHIFT_CAP),
        episodes=episode_evidence(base, cand, data, infos, names),
    )
