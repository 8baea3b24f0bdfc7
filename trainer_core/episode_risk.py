"""Per-episode recorded-action statistics: which training episodes pull a candidate toward the
safety checks it fails, so a rejection can name what to quarantine.

For each training episode, the share of recorded actions outside the safety head's clamp bounds
and the share of steps that act (non-zero throttle or steering) with a person inside the
envelope radius. Computed in the job child from the arrays it already read; plain floats out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from safety.config import SafetyConfig
from trainer_core.features import Split

TOP = 5


def episode_risk(
    split: Split, action_names: list[str], safety: SafetyConfig
) -> list[dict[str, Any]]:
    """The riskiest training episodes first (at most TOP; only those with any risk)."""
    arrays = split.arrays
    if len(arrays) == 0:
        return []
    starts = [*np.flatnonzero(arrays.episode_start).tolist(), len(arrays)]
    out = []
    for path, lo, hi in zip(split.paths, starts[:-1], starts[1:], strict=False):
        act = arrays.act[lo:hi]
        outside = np.zeros(len(act), bool)
        for j, name in enumerate(action_names):
            bounds = safety.clamp_bounds.get(name)
            if bounds is not None:
                outside |= (act[:, j] < bounds[0]) | (act[:, j] > bounds[1])
        prox = arrays.proximity[lo:hi]
        near = np.nan_to_num(prox, nan=np.inf) < safety.envelope.radius_m
        acting = np.abs(act).max(axis=1) > 1e-3 if act.shape[1] else np.zeros(len(act), bool)
        risk = {
            "path": str(Path(path)),
            "out_of_bounds": round(float(outside.mean()), 4),
            "acting_near_person": round(float((near & acting).mean()), 4),
        }
        if risk["out_of_bounds"] or risk["acting_near_person"]:
            out.append(risk)
    out.sort(key=lambda r: (-(r["out_of_bounds"] + r["acting_near_person"]), r["path"]))
    return out[:TOP]
