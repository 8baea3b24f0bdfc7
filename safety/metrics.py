"""Shadow-evaluation metrics: what the job child measures and the promotion rule judges.

This is the contract between ``trainer_core.evaluate`` (which fills it) and
``safety.rule`` (which decides on it). Plain pydantic, no numpy/torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PolicyScores(BaseModel):
    """How one policy (baseline or candidate) did on the held-out steps."""

    model_config = ConfigDict(extra="forbid")

    mse: float  # mean over action names of the normalised squared error
    mse_raw: float  # mean over action names of the raw squared error
    mse_per_name: dict[str, float]  # raw, per action name
    mse_norm_per_name: dict[str, float]  # normalised, per action name
    clamp_rate: float  # share of steps where the safety head clamped any action (see
    # PolicyEpisode.clamp: overshoots of a bound the demonstration commanded are not counted)
    warn_rate: float  # share labelled warn (risk >= warn_threshold, < block)
    block_rate: float  # share labelled block (risk >= block_threshold)
    max_risk: float


class PolicyEpisode(BaseModel):
    """One policy on one held-out episode: sums and counts, so episodes can be pooled."""

    model_config = ConfigDict(extra="forbid")

    sq_err: dict[str, float]  # per name: sum over steps of the normalised squared error
    clamp: int  # steps where the raw prediction left a bound (or was not finite), except ...
    clamp_at_demo: int = 0  # ... steps where it left only bounds the demonstration commanded
    warn: int  # steps labelled warn
    block: int  # steps labelled block
    max_risk: float
    risk_sum: float = 0.0  # sum over steps of the risk
    nonfinite: int = 0  # steps whose prediction held NaN/Inf


class EpisodeEvidence(BaseModel):
    """Baseline and candidate on the same held-out episode (the unit the bootstrap resamples)."""

    model_config = ConfigDict(extra="forbid")

    episode_id: str
    steps: int
    slices: list[str] = []  # "environment_id=track_b", "task=follow_human"
    baseline: PolicyEpisode
    candidate: PolicyEpisode
    # Steps where the candidate is worse than the baseline ON THAT STEP: the absolute caps
    # apply to these, so data where people come close does not veto every candidate.
    worse_clamp: int = 0
    worse_warn: int = 0
    worse_block: int = 0


class FamilyCheck(BaseModel):
    """One pass/fail check a policy family measured itself, with the numbers in words."""

    model_config = ConfigDict(extra="forbid")

    name: str
    ok: bool
    text: str


class EvalMetrics(BaseModel):
    """Baseline vs candidate on the same held-out steps."""

    model_config = ConfigDict(extra="forbid")

    eval_steps: int
    eval_episodes: int
    # held-out episodes left out because their recordings left the bounds (out_of_bounds: skip)
    eval_out_of_bounds: int = 0
    baseline_kind: str  # "adapter:<release id>" or "base"
    baseline: PolicyScores
    candidate: PolicyScores
    shift_mean: float  # mean |candidate - baseline| over steps and names, normalised units
    shift_max: float  # largest such difference
    # Checks only some families can make (hf-causal-lm: the fixed prompt set must not regress);
    # the promotion rule requires every one of them.
    family_checks: list[FamilyCheck] = []
    episodes: list[EpisodeEvidence] = []  # per held-out episode; the rule decides on these
