"""The WaveCore-style safety head: clamp actions to per-name bounds and score each step's risk.

Risk formula (per step ``t``; all terms are computed for every step at once with numpy):

    C_t  = number of bounded action names whose value lay outside its [lo, hi] clamp bounds
    J_t  = number of action names whose clamped value moved more than ``max_jump`` (per name,
           ``max_jump_per_name`` overrides) since step t-1 of the SAME episode; 0 at an
           episode's first step and next to a non-finite step
    P_t  = min(1, (R - d_t) / R) * A_t when the person's distance d_t < R (envelope
           ``radius_m``), else 0; an unknown distance (NaN) adds nothing
    A_t  = f + (1 - f) * u_t, the approach factor: u_t in [0, 1] is how hard the clamped action
           drives toward the person (for each ``approach`` name, sign * value / the bound on
           that side, clipped to [0, 1]; the largest over names), f is ``approach_floor``.
           Braking near a person keeps only the floor; full throttle toward them the whole
           term. With no approach name among the actions, A_t = 1.
    raw  = 0.35 * [C_t > 0] + min(0.4, 0.1 * C_t) + P_t + min(0.4, 0.25 * J_t)
    risk = clip(raw * (1 + decay), 0, 1)                      (``decay`` of the envelope)

The clamp and proximity terms are those of continuonos' old head (FORMATS §5), so its worked
values still hold at full approach (A_t = 1): one clamped name -> 0.504 (warn), two -> 0.616
(block), a person at 0.93 m warns. (FORMATS quotes "blocks at <= 0.643 m"; under the same
formula that distance is 0.557 m, i.e. 0.643 m *inside* the 1.2 m radius.) The jump term is
new: a single jerk (one name) warns (0.28), jerks alone never block (<= 0.448), a jerk on top
of a clamp blocks.

A step whose action holds NaN/Inf is blocked outright (risk 1): a policy that emits it is not
safe to run, whatever else the step looks like.

Labels: 0 ok, 1 warn (risk >= warn_threshold), 2 block (risk >= block_threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safety.config import SafetyConfig, UnboundedActionsError

CLAMP_BASE = 0.35  # any clamp at all
CLAMP_PER_NAME = 0.1  # each clamped name ...
CLAMP_CAP = 0.4  # ... up to this
JUMP_PER_NAME = 0.25  # each name that jumped ...
JUMP_CAP = 0.4  # ... up to this

OK, WARN, BLOCK = 0, 1, 2


@dataclass(frozen=True)
class Assessment:
    """Per-step results of :meth:`SafetyHead.assess` (all arrays have length N)."""

    risk: np.ndarray  # float64, in [0, 1]
    clamped: np.ndarray  # bool: any name was clamped (or not finite)
    jumped: np.ndarray  # bool: any name jumped
    label: np.ndarray  # int8: 0 ok, 1 warn, 2 block
    clamped_actions: np.ndarray  # (N, A) float64, the actions after clamping

    @property
    def n(self) -> int:
        """Number of steps assessed."""
        return int(self.risk.shape[0])

    def rates(self) -> dict[str, float | int]:
        """Shares of steps clamped / labelled warn / labelled block, the largest risk, and ``n``.

        With zero steps every rate is 0.0 and ``n`` is 0: the promotion rule rejects that by its
        minimum-steps check, never by reading a rate.
        """
        if self.n == 0:
            return {"clamp_rate": 0.0, "warn_rate": 0.0, "block_rate": 0.0, "max_risk": 0.0, "n": 0}
        return {
            "clamp_rate": float(self.clamped.mean()),
            "warn_rate": float((self.label == WARN).mean()),
            "block_rate": float((self.label == BLOCK).mean()),
            "max_risk": float(self.risk.max()),
            "n": self.n,
        }


class SafetyHead:
    """Scores batches of actions; configure it with :func:`safety.config.merge_manifest_safety`
    so the trainer and the runtime judge by the same numbers."""

    def __init__(self, cfg: SafetyConfig) -> None:
        self.cfg = cfg

    def bounds(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper clamp bounds per name; :class:`UnboundedActionsError` naming every
        name without bounds (a head that cannot clamp a name is blind to it)."""
        missing = self.unbounded(names)
        if missing:
            raise UnboundedActionsError(
                f"action names without bounds: {missing}; give each one bounds in "
                "safety.clamp_bounds or features.bounds"
            )
        lo = np.array([self.cfg.clamp_bounds[n][0] for n in names], float)
        hi = np.array([self.cfg.clamp_bounds[n][1] for n in names], float)
        return lo, hi

    def unbounded(self, names: list[str]) -> list[str]:
        """Action names the configuration gives no clamp bounds."""
        return [n for n in names if n not in self.cfg.clamp_bounds]

    def approach(
        self, clamped: np.ndarray, names: list[str], lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """Per step, the approach factor A_t (see the module docstring)."""
        cols = [(i, self.cfg.approach[n]) for i, n in enumerate(names) if n in self.cfg.approach]
        if not cols:
            return np.ones(clamped.shape[0])
        drive = np.zeros(clamped.shape[0])
        for i, sign in cols:
            reach = max(hi[i] if sign > 0 else -lo[i], 1e-9)  # the bound in that direction
            push = np.clip(np.nan_to_num(sign * clamped[:, i] / reach), 0.0, 1.0)
            drive = np.maximum(drive, push)
        floor = self.cfg.approach_floor
        return floor + (1.0 - floor) * drive

    def assess(
        self,
        actions: np.ndarray,
        names: list[str],
        proximity: np.ndarray | None = None,
        episode_start: np.ndarray | None = None,
    ) -> Assessment:
        """Clamp and score ``actions`` (N steps x A names, in ``names`` order).

        ``proximity``: the person's distance in metres per step (NaN where unknown), or None.
        ``episode_start``: True where a step opens an episode (no jump is measured across it);
        None means all N steps are one episode.
        """
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(names):
            raise ValueError(
                f"actions must be (N, {len(names)}) for names {names} (got shape {a.shape})"
            )
        n = a.shape[0]
        prox = _per_step(proximity, n, "proximity", np.float64, np.nan)
        starts = _per_step(episode_start, n, "episode_start", bool, False)
        if n:
            starts[0] = True  # nothing before the first step

        lo, hi = self.bounds(names)
        finite = np.isfinite(a)
        clamped_actions = np.clip(a, lo, hi)
        clamped_each = (clamped_actions != a) & finite
        n_clamped = clamped_each.sum(axis=1)
        bad = ~finite.all(axis=1)

        limit = np.array(
            [self.cfg.max_jump_per_name.get(nm, self.cfg.max_jump) for nm in names], float
        )
        step = np.zeros_like(clamped_actions)
        step[1:] = np.abs(np.diff(clamped_actions, axis=0))
        # no jump into or out of a non-finite step: it is blocked on its own account
        after_bad = np.zeros(n, bool)
        after_bad[1:] = bad[:-1]
        step[starts | bad | after_bad] = 0.0
        n_jumped = (step > limit).sum(axis=1)  # NaN compares False: a bad step is blocked anyway

        radius = self.cfg.envelope.radius_m
        with np.errstate(invalid="ignore"):
            near = prox < radius  # NaN -> False: no proximity term
        prox_term = np.where(near, np.minimum(1.0, (radius - np.nan_to_num(prox)) / radius), 0.0)
        prox_term = prox_term * self.approach(clamped_actions, names, lo, hi)

        raw = (
            CLAMP_BASE * (n_clamped > 0)
            + np.minimum(CLAMP_CAP, CLAMP_PER_NAME * n_clamped)
            + prox_term
            + np.minimum(JUMP_CAP, JUMP_PER_NAME * n_jumped)
        )
        risk = np.clip(raw * (1.0 + self.cfg.envelope.decay), 0.0, 1.0)
        risk[bad] = 1.0

        label = np.where(
            risk >= self.cfg.block_threshold,
            BLOCK,
            np.where(risk >= self.cfg.warn_threshold, WARN, OK),
        ).astype(np.int8)
        return Assessment(
            risk=risk,
            clamped=(n_clamped > 0) | bad,
            jumped=n_jumped > 0,
            label=label,
            clamped_actions=clamped_actions,
        )


def _per_step(
    values: np.ndarray | None, n: int, what: str, dtype: type, fill: float | bool
) -> np.ndarray:
    """A length-N copy of ``values`` (``fill`` everywhere when None), or a ValueError."""
    if values is None:
        return np.full(n, fill, dtype=dtype)
    out = np.array(values, dtype=dtype).reshape(-1) if np.ndim(values) else None
    if out is None or out.shape[0] != n:
        raise ValueError(f"{what} must have one value per step ({n}), got shape {np.shape(values)}")
    return out
