"""The pure cycle: what a job trains and evaluates on (``plan_job``) and what happens to its
candidate (``judge``), table-driven."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from daemon.config import TrainerConfig, load_config
from daemon.cycle import BASE, Baseline, baseline_of, judge, pick_eval, plan_job
from daemon.ledger import EpisodeRow
from daemon.snapshot import decision_entry
from daemon.store import Release
from safety.config import PromotionConfig
from safety.metrics import EpisodeEvidence, EvalMetrics, PolicyEpisode, PolicyScores
from trainer_core.spec import JobResult


def scores(mse: float, block: float = 0.0) -> PolicyScores:
    return PolicyScores(
        mse=mse,
        mse_raw=mse,
        mse_per_name={"a": mse},
        mse_norm_per_name={"a": mse},
        clamp_rate=0.0,
        warn_rate=0.0,
        block_rate=block,
        max_risk=0.0,
    )


def side(mse: float, steps: int, block: float = 0.0) -> PolicyEpisode:
    return PolicyEpisode(
        sq_err={"a": mse * steps}, clamp=0, warn=0, block=round(block * steps), max_risk=0.0
    )


def metrics(base: float = 1.0, cand: float = 0.5, kind: str = "base", **kw: float) -> EvalMetrics:
    """Five held-out episodes with the same numbers (the rule's per-episode evidence)."""
    steps = int(kw.get("steps", 500)) // 5
    block = kw.get("block", 0.0)
    episodes = [
        EpisodeEvidence(
            episode_id=f"e{i}",
            steps=steps,
            baseline=side(base, steps),
            candidate=side(cand, steps, block),
            worse_block=round(block * steps),
        )
        for i in range(5)
    ]
    return EvalMetrics(
        eval_steps=steps * 5,
        eval_episodes=5,
        baseline_kind=kind,
        baseline=scores(base),
        candidate=scores(cand, block),
        shift_mean=0.1,
        shift_max=0.5,
        episodes=episodes,
    )


PROMO = PromotionConfig()

# (name, metrics, baseline now, gate open, expected action, the failing check or None)
JUDGE_CASES = [
    ("better, gate open", metrics(), "base", True, "promote", None),
    ("better, gate closed: waits", metrics(), "base", False, "wait", None),
    ("worse: rejected even with the gate closed", metrics(cand=1.2), "base", False, "reject",
     "improvement"),
    ("worse, gate open", metrics(cand=1.2), "base", True, "reject", "improvement"),
    ("baseline rolled back while it ran", metrics(kind="adapter:r1"), "base", True, "reject",
     "baseline"),
    ("another release landed while it ran", metrics(), "adapter:r2", True, "reject", "baseline"),
    ("baseline changed while waiting, gate still closed", metrics(), "adapter:r2", False,
     "reject", "baseline"),
    ("same adapter baseline", metrics(kind="adapter:r1"), "adapter:r1", True, "promote", None),
    ("too few steps", metrics(steps=50), "base", True, "reject", "evidence"),
    ("blocks", metrics(block=0.5), "base", True, "reject", "block_cap"),
    ("no metrics", None, "base", True, "reject", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("metrics_", "baseline_now", "gate_open", "action", "failing"),
    [c[1:] for c in JUDGE_CASES],
    ids=[c[0] for c in JUDGE_CASES],
)
def test_judge(
    metrics_: EvalMetrics | None,
    baseline_now: str,
    gate_open: bool,
    action: str,
    failing: str | None,
) -> None:
    verdict = judge(metrics_, PROMO, baseline_now, gate_open)
    assert verdict.action == action
    assert verdict.decision.promote == (action != "reject")
    if failing is not None:
        assert verdict.decision.checks[failing] is False
        assert any(r.startswith(f"FAIL {failing}") for r in verdict.reasons)
    if metrics_ is not None:  # the baseline check is always part of the decision
        assert "baseline" in verdict.decision.checks
    if action == "reject":  # the decisive reason is named first
        assert verdict.decision.decisive is not None
        assert verdict.reasons[0].startswith(f"FAIL {verdict.decision.decisive}:")
    if failing == "baseline":
        assert verdict.decision.decisive == "baseline"


def release(rid: str, legacy: bool = False) -> Release:
    return Release(
        id=rid,
        path=Path(f"/r/{rid}"),
        created="2026-01-01T00:00:00Z",
        generation=1,
        sha256="0" * 64,
        adapter_file="adapter.safetensors",
        format="safetensors",
        legacy=legacy,
    )


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, BASE),
        (release("r1", legacy=True), BASE),
        (release("r1"), Baseline("adapter:r1", "r1", Path("/r/r1"))),
    ],
    ids=["none", "legacy", "release"],
)
def test_baseline_of(current: Release | None, expected: Baseline) -> None:
    assert baseline_of(current) == expected


@pytest.fixture
def cfg(tmp_path: Path) -> TrainerConfig:
    cfg, _ = load_config(None, str(tmp_path))
    return cfg


def rows(prefix: str, n: int) -> list[EpisodeRow]:
    return [
        EpisodeRow(f"/e/{prefix}{i}", f"{prefix}{i}", f"h{prefix}{i}", 10, 0.0) for i in range(n)
    ]


# (name, train rows, eval rows, max_episodes, min_episodes, trained-on hashes, expected
#  number of train episodes or None for no job, expected eval episode ids)
PLAN_CASES = [
    ("no train episodes", 0, 3, 10, 1, set(), None, ["v0", "v1", "v2"]),
    ("fewer than min_episodes", 3, 3, 10, 4, set(), None, []),
    ("all", 3, 2, 10, 1, set(), 3, ["v0", "v1"]),
    ("capped at max_episodes", 5, 2, 2, 1, set(), 2, ["v0", "v1"]),
    ("no eval", 4, 0, 10, 4, set(), 4, []),
    ("a release trained on an eval episode (split changed)", 3, 3, 10, 1, {"hv1"}, 3,
     ["v0", "v2"]),
    ("every eval episode trained on", 3, 2, 10, 1, {"hv0", "hv1"}, 3, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("n_train", "n_eval", "max_episodes", "min_episodes", "trained", "expect_train", "evals"),
    [c[1:] for c in PLAN_CASES],
    ids=[c[0] for c in PLAN_CASES],
)
def test_plan_job(
    cfg: TrainerConfig,
    n_train: int,
    n_eval: int,
    max_episodes: int,
    min_episodes: int,
    trained: set[str],
    expect_train: int | None,
    evals: list[str],
) -> None:
    job = cfg.job.model_copy(update={"max_episodes": max_episodes, "min_episodes": min_episodes})
    cfg = cfg.model_copy(update={"job": job})
    baseline = Baseline("adapter:r1", "r1", Path("/r/r1"))
    train_rows, eval_rows = rows("t", n_train), rows("v", n_eval)
    plan = plan_job(cfg, "run1", train_rows, eval_rows, baseline, cfg.safety, None, trained)
    if expect_train is None:
        assert plan.spec is None and "train episodes" in plan.reason
        return
    assert plan.spec is not None
    assert len(plan.spec.train_episodes) == expect_train == len(plan.train_hashes)
    assert plan.train_hashes == [f"ht{i}" for i in range(expect_train)]  # new ones come first
    assert [p.name for p in plan.spec.eval_episodes] == evals
    assert not set(plan.eval_hashes) & (trained | set(plan.train_hashes))
    assert len(plan.held_back) == n_eval - len(evals)
    assert plan.spec.baseline_id == "r1" and plan.spec.baseline_adapter == Path("/r/r1")
    assert plan.spec.run_dir == cfg.runs_dir / "run1"


def held_out(hashes: str) -> list[EpisodeRow]:
    """Eval rows e0, e1, ... newest first, whose content hashes are the letters of ``hashes``."""
    return [EpisodeRow(f"/e/e{i}", f"e{i}", h, 10, 0.0) for i, h in enumerate(hashes)]


# (name, content hashes of the held-out episodes newest first, limit, expected episode ids)
PICK_CASES = [
    ("under the limit: all, in order", "fedc", 6, ["e0", "e1", "e2", "e3"]),
    ("at the limit", "fedc", 4, ["e0", "e1", "e2", "e3"]),
    ("newest half, then the lowest hashes of the older", "zyxbca", 4, ["e0", "e1", "e5", "e3"]),
    ("odd limit: the newer half is the larger", "zyxbca", 3, ["e0", "e1", "e5"]),
    ("limit 1: the newest", "zyxbca", 1, ["e0"]),
    ("nothing held out", "", 4, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("hashes", "limit", "expected"), [c[1:] for c in PICK_CASES], ids=[c[0] for c in PICK_CASES]
)
def test_pick_eval(hashes: str, limit: int, expected: list[str]) -> None:
    assert [r.episode_id for r in pick_eval(held_out(hashes), limit)] == expected


def test_pick_eval_changes_little_as_episodes_arrive() -> None:
    """One new episode changes the capped eval set by at most one episode in and one out, so
    successive candidates are judged on nearly the same set (a random sample would not be)."""
    rng = random.Random(4)
    pool: list[EpisodeRow] = []
    previous: set[str] = set()
    for i in range(300):
        pool.insert(0, EpisodeRow(f"/e/{i}", str(i), f"{rng.getrandbits(64):016x}", 10, 0.0))
        chosen = {r.episode_id for r in pick_eval(pool, 40)}
        assert len(chosen) == min(len(pool), 40)
        if len(pool) > 40:
            assert len(chosen - previous) <= 1 and str(i) in chosen
        previous = chosen


def test_plan_job_caps_the_eval_set(cfg: TrainerConfig) -> None:
    cfg = cfg.model_copy(update={"job": cfg.job.model_copy(update={"max_eval_episodes": 8})})
    plan = plan_job(cfg, "run1", rows("t", 4), rows("v", 30), BASE, cfg.safety, None)
    assert plan.spec is not None and len(plan.spec.eval_episodes) == 8 == len(plan.eval_hashes)
    assert "8 eval episodes (of 30 held out; job.max_eval_episodes)" in plan.reason
    assert plan.held_back == []  # left out by the cap, not held back for having been trained on


def test_plan_job_never_evaluates_on_this_jobs_own_train_episode(cfg: TrainerConfig) -> None:
    train_rows = rows("t", 4)
    copy = EpisodeRow("/e/copy", "copy", "ht0", 10, 0.0)  # same bytes as a train episode
    plan = plan_job(cfg, "run1", train_rows, [copy], BASE, cfg.safety, None)
    assert plan.spec is not None and plan.spec.eval_episodes == []
    assert plan.held_back == ["/e/copy"]


def test_a_decision_entry_leaves_out_the_per_episode_evidence() -> None:
    """``status`` shows a decision's metrics without ``metrics.episodes``: the status file is
    rewritten at every change and must not grow with the held-out set."""
    small = metrics()
    big = small.model_copy(update={"episodes": small.episodes * 40})
    entries = [
        decision_entry(
            "run1", "t", "rejected", ["FAIL x"], JobResult(run_id="run1", status="done", metrics=m)
        )
        for m in (small, big)
    ]
    assert entries[0] == entries[1]
    assert "episodes" not in entries[0]["metrics"]
    assert entries[0]["metrics"]["candidate"]["mse"] == 0.5
