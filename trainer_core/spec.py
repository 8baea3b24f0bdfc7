"""The contract between the daemon and the job child: ``spec.json`` in, ``result.json`` out.

The daemon writes a :class:`JobSpec` into a fresh run directory and starts
``python -m trainer_core.job <run_dir>/spec.json``; the child writes a :class:`JobResult` to
``<run_dir>/result.json`` atomically and exits with one of :class:`ExitCode`.
This module imports no torch, so the daemon can use it.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from safety.config import SafetyConfig
from safety.metrics import EvalMetrics
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig


class ExitCode(IntEnum):
    """Distinct exit statuses of the job child."""

    DONE = 0  # trained to max_steps (or data exhausted) and evaluated
    CRASHED = 1  # an unexpected exception (Python's own default for one)
    INVALID = 3  # bad spec, base or data: retrying the same input will not help
    BUDGET = 4  # stopped by max_wall_time_s or max_rss_mb; candidate evaluated if any steps ran
    PREEMPTED = 5  # SIGTERM: resume checkpoint written


Status = Literal["done", "budget", "preempted", "invalid", "crashed"]

RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
CANDIDATE_DIR = "candidate"
CHECKPOINT_DIR = "checkpoint"


class JobSpec(BaseModel):
    """Everything the child needs; all paths absolute."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    run_dir: Path
    train_episodes: list[Path] = Field(min_length=1)
    eval_episodes: list[Path]
    base_path: Path  # base policy safetensors; its card is base_path.with_suffix(".json")
    baseline_adapter: Path | None = None  # current release dir, or None for the bare base
    baseline_id: str | None = None
    resume_from: Path | None = None  # a checkpoint dir of an earlier preempted run
    # an adapter made elsewhere (``adapters import``): evaluated as the candidate, no training
    candidate_adapter: Path | None = None
    # one fleet round (trainer_core.fleet_round): the global LoRA weights to start from
    fleet_start: Path | None = None
    features: FeaturesConfig
    policy: PolicyConfig
    lora: LoraConfig
    job: JobConfig
    ingest: IngestConfig
    safety: SafetyConfig


class JobResult(BaseModel):
    """The outcome the daemon reads back."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    status: Status
    reason: str = ""
    steps: int = 0
    resumed_from_step: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    losses: list[float] = Field(default_factory=list)  # one per log_every_steps
    train_episodes: int = 0
    train_samples: int = 0
    timings: dict[str, float] = Field(default_factory=dict)  # startup_s, train_s, eval_s, total_s
    peak_rss_mb: float = 0.0
    device: str = "cpu"
    candidate_path: Path | None = None
    checkpoint_path: Path | None = None
    metrics: EvalMetrics | None = None
    episode_hashes: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # episode path -> why it was not used
    # the riskiest training episodes' recorded-action stats (trainer_core.episode_risk)
    episode_risk: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # e.g. resumed, or why a checkpoint was dropped
