"""One training cycle, decided by pure functions: what a job trains and evaluates on, and whether
its candidate is promoted.

:func:`plan_job` turns the ledger's episodes and the current baseline into a
:class:`~trainer_core.spec.JobSpec`; :func:`judge` turns the child's metrics, the release that is
current *now* and the gate into a :class:`Verdict`. Neither does I/O: the service reads the
ledger, store and gate at its edge and acts on what these return, so every check of the
decision sits in one call path and is table-tested (tests/test_cycle.py).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from daemon.config import TrainerConfig
from daemon.ledger import EpisodeRow
from daemon.store import Release
from safety.config import PromotionConfig, SafetyConfig
from safety.metrics import EvalMetrics
from safety.rule import Decision, decide
from trainer_core.spec import JobSpec

Action = Literal["promote", "reject", "wait"]


@dataclass(frozen=True)
class Baseline:
    """What a candidate is judged against: a release, or the bare base (``kind`` ``"base"``)."""

    kind: str  # "base" | "adapter:<release id>"
    release_id: str | None = None
    path: Path | None = None


BASE = Baseline("base")


def baseline_of(current: Release | None) -> Baseline:
    """The current release, unless it was adopted from an old install (a .pt of unknown shape),
    when the bare base is the baseline."""
    if current is None or current.legacy:
        return BASE
    return Baseline(f"adapter:{current.id}", current.id, current.path)


@dataclass(frozen=True)
class Plan:
    """A job to start (``spec``), or why none can (``spec`` None, ``reason`` says why)."""

    spec: JobSpec | None
    reason: str
    train_hashes: list[str] = field(default_factory=list)
    eval_hashes: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)  # eval paths left out: trained on


def job_spec(
    cfg: TrainerConfig,
    run_id: str,
    train: Sequence[Path],
    evals: Sequence[Path],
    baseline: Baseline,
    safety: SafetyConfig,
    **extra: Any,
) -> JobSpec:
    """A job child's spec: these episodes against ``baseline`` under ``safety``, the rest from
    ``cfg``; ``extra`` sets what only some jobs have (``resume_from``, ``candidate_adapter``)."""
    return JobSpec(
        run_id=run_id,
        run_dir=cfg.runs_dir / run_id,
        train_episodes=list(train),
        eval_episodes=list(evals),
        base_path=cfg.policy.base_path,
        baseline_adapter=baseline.path,
        baseline_id=baseline.release_id,
        features=cfg.features,
        policy=cfg.policy,
        lora=cfg.lora,
        job=cfg.job,
        ingest=cfg.ingest,
        safety=safety,
        **extra,
    )


def pick_eval(evals: Sequence[EpisodeRow], limit: int) -> list[EpisodeRow]:
    """At most ``limit`` of the held-out ``evals`` (newest first): the newest half, then the
    older ones with the lowest content hashes. A candidate is judged on today's conditions and
    on a sample of the robot's whole history that a new episode rarely changes, so the eval set
    (and the child's eval time and the daemon's memory with it) stays bounded as the robot
    records, without drifting from job to job."""
    if len(evals) <= limit:
        return list(evals)
    newest = (limit + 1) // 2
    older = sorted(evals[newest:], key=lambda r: r.content_hash)[: limit - newest]
    return [*evals[:newest], *older]


def plan_job(
    cfg: TrainerConfig,
    run_id: str,
    train: Sequence[EpisodeRow],
    evals: Sequence[EpisodeRow],
    baseline: Baseline,
    safety: SafetyConfig,
    resume_from: Path | None,
    trained: Set[str] = frozenset(),
) -> Plan:
    """The job for these ledger episodes: the first ``job.max_episodes`` train episodes (the
    ledger lists new ones first), judged against ``baseline`` on the eval episodes that no
    release trained on (``trained``: content hashes), nor this job: held out for good, whatever
    ``job.eval_fraction`` re-derived since; at most ``job.max_eval_episodes`` of them
    (:func:`pick_eval`). Fewer than ``job.min_episodes`` train episodes make
    no job."""
    chosen = list(train[: cfg.job.max_episodes])
    if len(chosen) < cfg.job.min_episodes:
        return Plan(
            None, f"{len(chosen)} valid train episodes (job.min_episodes is {cfg.job.min_episodes})"
        )
    never = set(trained) | {r.content_hash for r in chosen}
    held_back = [r.path for r in evals if r.content_hash in never]
    usable = [r for r in evals if r.content_hash not in never]
    evals = pick_eval(usable, cfg.job.max_eval_episodes)
    spec = job_spec(
        cfg,
        run_id,
        [Path(r.path) for r in chosen],
        [Path(r.path) for r in evals],
        baseline,
        safety,
        resume_from=resume_from,
    )
    reason = f"job {run_id}: {len(chosen)} train / {len(evals)} eval episodes"
    if len(evals) < len(usable):
        reason += f" (of {len(usable)} held out; job.max_eval_episodes)"
    if held_back:
        reason += f" ({len(held_back)} eval episodes left out: already trained on)"
    train_hashes = [r.content_hash for r in chosen]
    return Plan(spec, reason, train_hashes, [r.content_hash for r in evals], held_back)


@dataclass(frozen=True)
class Verdict:
    """What to do with a finished candidate, and the decision (every check) behind it."""

    action: Action
    decision: Decision

    @property
    def reasons(self) -> list[str]:
        """One line per check, as logged and shown in ``status``."""
        return list(self.decision.reasons)


def judge(
    metrics: EvalMetrics | None,
    promotion: PromotionConfig,
    baseline_now: str,
    gate_open: bool,
) -> Verdict:
    """Judge a candidate: the promotion rule, plus that it was evaluated against the release that
    is current now (an operator may have rolled back while it ran). A candidate that passes waits
    while the gate is closed: promoting is work on the robot too, and the current release may
    still change before it opens (then it is judged again, and fails ``baseline``)."""
    decision = decide(metrics, promotion)
    checks = dict(decision.checks)
    reasons = list(decision.reasons)
    decisive = decision.decisive
    if metrics is not None:
        same = metrics.baseline_kind == baseline_now
        checks["baseline"] = same
        if same:
            reasons.append(f"ok baseline: evaluated against {baseline_now}, still current")
        else:  # a stale baseline outranks every other reason: the evidence is about the past
            reasons.insert(
                0,
                f"FAIL baseline: evaluated against {metrics.baseline_kind}, but the current "
                f"adapter is now {baseline_now}",
            )
            decisive = "baseline"
    promote = decision.promote and all(checks.values())
    whole = Decision(promote, reasons, checks, dict(decision.numbers), decisive)
    if not promote:
        return Verdict("reject", whole)
    return Verdict("promote" if gate_open else "wait", whole)
