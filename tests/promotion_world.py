"""A shared world for promotion scenarios: one pretrained base, cached synthetic episode sets and
job results, every job run through the job child's real entry point and judged by the real rule.
Used by ``tests/test_promotion_adversarial.py`` and ``bench/bench_promotion.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safety.config import PromotionConfig, SafetyConfig
from safety.rule import decide
from trainer_core.base import pretrain_base
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig
from trainer_core.job import main
from trainer_core.spec import JobResult, JobSpec
from trainer_core.synth import write_synthetic_episodes

STEPS = 60  # steps per synthetic episode
TRAIN_STEPS = 200  # optimiser steps per job
CLIP = FeaturesConfig(out_of_bounds="clip")
SAFETY_CHECKS = (
    "clamp_rate",
    "clamp_share",
    "clamp_cap",
    "warn_rate",
    "warn_cap",
    "block_rate",
    "block_cap",
    "mean_risk",
)


# The rate checks switched off, for the cases about what the error checks see on their own.
ERROR_ONLY = PromotionConfig(
    clamp_rate_margin=1,
    warn_rate_margin=1,
    block_rate_margin=1,
    max_clamp_rate=1,
    max_clamp_share=1,
    max_warn_rate=1,
    max_block_rate=1,
    mean_risk_margin=1,
)


@dataclass
class Verdict:
    """What the daemon would do with a job's result: promoted or not, and why."""

    promote: bool
    decisive: str  # a rule check, or "job:<status>" when no candidate came out
    reasons: list[str]
    result: JobResult
    decide_s: float = 0.0  # how long the rule took


class World:
    """A base and cached episode sets and job results for the whole module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._eps: dict[str, list[Path]] = {}
        self._jobs: dict[str, Verdict] = {}
        factory = write_synthetic_episodes(root / "factory", 12, STEPS, seed=100)
        self.base = root / "base" / "policy.safetensors"
        pretrain_base(
            factory,
            self.base,
            PolicyConfig(),
            FeaturesConfig(),
            JobConfig(),
            IngestConfig(),
            steps=500,
            seed=0,
        )

    def eps(self, name: str, n: int, seed: int, **opts: Any) -> list[Path]:
        """``n`` synthetic episodes under ``name`` (written once)."""
        if name not in self._eps:
            self._eps[name] = write_synthetic_episodes(
                self.root / "eps" / name, n, STEPS, seed=seed, **opts
            )
        return self._eps[name]

    def job(
        self,
        name: str,
        train: list[Path],
        evals: list[Path],
        *,
        features: FeaturesConfig | None = None,
        safety: SafetyConfig | None = None,
        baseline: Path | None = None,
        promotion: PromotionConfig | None = None,
        **job: Any,
    ) -> Verdict:
        """Run the job child's entry point once per name; judge its result."""
        if name in self._jobs:
            return self._jobs[name]
        run_dir = self.root / "runs" / name
        run_dir.mkdir(parents=True)
        spec = JobSpec(
            run_id=name,
            run_dir=run_dir,
            train_episodes=train,
            eval_episodes=evals,
            base_path=self.base,
            baseline_adapter=baseline,
            baseline_id=baseline.parent.name if baseline else None,
            resume_from=None,
            features=features or FeaturesConfig(),
            policy=PolicyConfig(),
            lora=LoraConfig(),
            job=JobConfig(**{"max_steps": TRAIN_STEPS, "seed": 0, **job}),
            ingest=IngestConfig(),
            safety=safety or SafetyConfig(),
        )
        (run_dir / "spec.json").write_text(spec.model_dump_json())
        main([str(run_dir / "spec.json")])
        result = JobResult.model_validate_json((run_dir / "result.json").read_text())
        if result.status not in ("done", "budget") or result.candidate_path is None:
            verdict = Verdict(False, f"job:{result.status}", [result.reason], result)
        else:
            t = time.perf_counter()
            d = decide(result.metrics, promotion or PromotionConfig())
            took = time.perf_counter() - t
            verdict = Verdict(d.promote, d.decisive or "", d.reasons, result, took)
        self._jobs[name] = verdict
        return verdict
