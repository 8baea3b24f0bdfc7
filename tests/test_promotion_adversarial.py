"""Adversarial promotion cases through the REAL daemon and the REAL job (issue 11's acceptance).

One table: each :class:`Case` drops synthetic episodes (``trainer_core.synth``) into a robot
root, runs the real service (:class:`tests.daemon_harness.InProcessDaemon`: the loop ticked in
this process, the job child a real subprocess with real torch on a tiny model, the real ledger,
gate, store and rule) and checks what the robot would get: promoted or not, and the *decisive*
reason (the first failing check's name, ``clamp_rate``, ``name:throttle``, ``slice:...``; or the
reason the daemon gave for training nothing). Unsafe cases must never change the current
release. Names, not numbers, are asserted: the rule's tolerances may move.

Which split an episode lands in is the daemon's own choice (a hash of its id): a batch is written
with ids picked so that it lands where the case wants it (:func:`place`).

Budget: one base pretrained per session, 60-step episodes, 200 train steps; a case costs about
one child start-up (the torch import) per round.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from daemon.config import ConfigError
from daemon.ledger import split_for
from safety.config import PromotionConfig
from tests.daemon_harness import (
    InProcessDaemon,
    deep_merge,
    make_root,
    promote_copy,
    write_mode,
)
from trainer_core.synth import SynthOptions, write_synthetic_episodes

pytestmark = pytest.mark.slow

STEPS = 60  # steps per synthetic episode
EVAL_FRACTION = 0.3
TABLE_CONFIG: dict[str, Any] = {
    "job": {"max_steps": 200, "seed": 0, "eval_fraction": EVAL_FRACTION, "min_episodes": 2},
    # the rule's own evidence floors (the harness lowers them for its dozen-episode tests)
    "promotion": {"min_eval_steps": 64, "min_eval_episodes": 3},
}
CLIP = {"features": {"out_of_bounds": "clip"}}
# The rate checks switched off, for the cases about what the error checks see on their own.
ERROR_ONLY = {
    "promotion": {
        k: 1
        for k in PromotionConfig.model_fields
        if k.startswith(("max_clamp_", "max_warn_", "max_block_"))
        or k in ("clamp_rate_margin", "warn_rate_margin", "block_rate_margin", "mean_risk_margin")
    }
}
# The cases about the daemon's mechanics (preemption, the gate, restarts) and the positive
# controls judge a steering shift, which moves the untouched throttle's error a little on four
# held-out episodes: the per-name margin is widened for them (the rule's own cases keep it).
LENIENT = {"promotion": {"max_name_regression": 0.5}}
RATES = ("clamp", "warn", "block")  # check families: clamp_rate, clamp_cap, clamp_share, ...
RISK = ("mean_risk", "block", "warn")
SAFETY = (*RATES, "mean_risk", "name:")  # any safety check, or the clamped channel's error
OOB = "outside its bounds"  # what the ledger says of an out-of-bounds episode (skip policy)


@dataclass(frozen=True)
class Batch:
    """``n`` synthetic episodes of one teacher (``opts``: :class:`SynthOptions` fields);
    ``corrupt``: ``"nan-action"`` / ``"inf-obs"`` writes one non-finite number into each."""

    n: int
    seed: int
    opts: dict[str, Any] = field(default_factory=dict)
    steps: int = STEPS
    corrupt: str = ""


def B(n: int, seed: int, steps: int = STEPS, corrupt: str = "", **opts: Any) -> Batch:
    return Batch(n, seed, opts, steps, corrupt)


SHIFT = {"steering_bias": 0.3}


@dataclass(frozen=True)
class Round:
    """Episodes dropped into the folder (``train``/``evals``: the split each batch lands in),
    an optional config change first, then one cycle; ``act`` scripts what happens during it:

    - ``""``: the cycle runs with the gate open;
    - ``"preempt:<phase>"``: the gate closes while the child is in that phase (load, train,
      eval); the preempted job must leave nothing, and the resumed one is what is judged;
    - ``"fifo"``: a FIFO replaces the mode file during training (the gate must not hang);
    - ``"release during eval"``: an operator promotes a release while the child evaluates;
    - ``"waits"``: the gate closes after the child ended and before the daemon judged it: the
      candidate waits (never promoted while closed), then the gate opens; ``"waits,release"``:
      an operator promotes another release meanwhile; ``"waits,restart"``: the daemon
      restarts meanwhile; ``...,release`` an operator promotes another release while it is
      down; ``...,gone`` the candidate's files are removed while it is down.

    ``expect``: this round's outcome when it is not the last (the last is the case's)."""

    train: tuple[Batch, ...] = ()
    evals: tuple[Batch, ...] = ()
    act: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    expect: str = ""


@dataclass(frozen=True)
class Case:
    """One adversarial scenario. ``expect``: ``promoted`` | ``rejected`` | ``failed`` |
    ``no job`` (nothing trained: the daemon's reason) | ``refused`` (the config is) |
    ``discarded`` | ``any`` (promoted or rejected) | ``not promoted`` (rejected, failed or no job).
    ``decisive``: accepted prefixes of the decisive check (rejected) or of the reason;
    ``not_decisive``: prefixes it must not have; ``says``: a substring of that reason;
    ``in_ledger``: of some ledger rejection (what kept the data out)."""

    name: str
    rounds: tuple[Round, ...]
    expect: str
    decisive: tuple[str, ...] = ()
    not_decisive: tuple[str, ...] = ()
    fails: tuple[str, ...] = ()  # some check of these (prefixes) fails too, first or not
    says: str = ""
    in_ledger: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    manifest_safety: dict[str, Any] | None = None
    logged: str = ""  # an event the daemon must have logged


def one(train: tuple[Batch, ...], evals: tuple[Batch, ...] = (), **kw: Any) -> tuple[Round]:
    return (Round(train, evals, **kw),)


def shift(seed: int = 1, n: int = 8, m: int = 4, **kw: Any) -> tuple[Round]:
    return one((B(n, seed, **SHIFT),), (B(m, seed, **SHIFT),), **kw)


X16 = {"throttle_scale": 1.6}
BOTH16 = {"steering_scale": 1.6, "throttle_scale": 1.6}

CASES: list[Case] = [
    # -- what is genuinely better is promoted ----------------------------------------------
    Case("genuine_shift_is_promoted", shift(), "promoted", config=LENIENT),
    Case(
        "new_calibration_is_promoted",
        one((B(8, 15, throttle_scale=0.7),), (B(4, 15, throttle_scale=0.7),)),
        "promoted",
    ),
    Case(
        "out_of_bounds_episodes_left_out_of_a_good_batch",
        one((B(8, 1, **SHIFT), B(4, 2, **X16)), (B(4, 1, **SHIFT),)),
        "promoted",
        in_ledger=OOB,
        config=LENIENT,
    ),
    Case(  # the other half of approach_near_a_person: same situations, braking
        "braking_near_a_person_is_not_vetoed_by_proximity",
        one((B(8, 11, near="brake"),), (B(8, 11, near="brake"),)),
        "any",
        not_decisive=("mean_risk",),
    ),
    # -- out of bounds -------------------------------------------------------------------
    Case(  # the episodes out of bounds never reach a job; the few left are not enough
        "one_channel_x1.6_is_not_trained_on",
        one((B(8, 2, **X16),), (B(4, 2, **X16),)),
        "not promoted",
        in_ledger=OOB,
    ),
    Case(
        "one_channel_x1.6_clipped",
        one((B(8, 2, **X16),), (B(4, 2, **X16),)),
        "rejected",
        SAFETY,
        config=CLIP,
    ),
    Case(
        "both_channels_x1.6_are_not_trained_on",
        one((B(8, 3, **BOTH16),), (B(4, 3, **BOTH16),)),
        "not promoted",
        in_ledger=OOB,
    ),
    Case(
        "both_channels_x1.6_clipped",
        one((B(8, 3, **BOTH16),), (B(4, 3, **BOTH16),)),
        "rejected",
        SAFETY,
        config=CLIP,
    ),
    Case(
        "eval_set_all_out_of_bounds",
        one((B(8, 1, **SHIFT),), (B(4, 2, **X16),)),
        "rejected",
        ("evidence",),
        in_ledger=OOB,
    ),
    Case(
        "reckless_teacher_clipped",
        one((B(6, 12, unsafe=True),), (B(4, 12, unsafe=True),)),
        "rejected",
        (*RISK, *RATES),
        config=CLIP,
    ),
    # -- a ratchet over batches: each judged against what is current ------------------------
    Case(
        "ratchet_two_x1.6_batches",
        (
            Round((B(8, 2, **X16),), (B(4, 2, **X16),), expect="rejected"),
            Round((B(8, 4, **X16),), (B(4, 4, **X16),)),
        ),
        "rejected",
        SAFETY,
        config=CLIP,
    ),
    Case(
        "ratchet_on_a_promoted_adapter",
        (
            Round((B(8, 1, **SHIFT),), (B(4, 1, **SHIFT),), expect="promoted"),
            Round((B(8, 5, **X16, **SHIFT),), (B(4, 5, **X16, **SHIFT),)),
        ),
        "rejected",
        SAFETY,
        config=deep_merge(CLIP, LENIENT),  # lenient: the first batch is promoted
    ),
    # -- unbounded names and the manifest's safety block ----------------------------------
    Case(
        "unbounded_action_names_are_refused",
        shift(),
        "refused",
        says="throttle",
        config={"features": {"bounds": {"steering": [-1, 1]}}, "safety": {"clamp_bounds": {}}},
    ),
    Case(
        "manifest_block_tries_to_loosen",
        one((B(8, 2, **X16),), (B(4, 2, **X16),)),
        "rejected",
        SAFETY,
        config=CLIP,
        manifest_safety={"clamp_bounds": {}, "warn_threshold": 1.0, "block_threshold": 1.0},
        logged="manifest_safety_loosening_ignored",
    ),
    Case(
        "manifest_block_widens_bounds",
        one((B(8, 2, **X16),), (B(4, 2, **X16),)),
        "rejected",
        SAFETY,
        config=CLIP,
        manifest_safety={"clamp_bounds": {"throttle": [-2.0, 2.0]}},
        logged="manifest_safety_loosening_ignored",
    ),
    Case(
        "manifest_block_tightens_bounds",
        shift(),
        "rejected",
        SAFETY,
        config=CLIP,
        manifest_safety={"clamp_bounds": {"throttle": [-0.3, 0.3]}},
    ),
    Case(
        "malformed_manifest_block_blocks_training",
        shift(),
        "no job",
        says="safety block is unusable",
        manifest_safety={"clamp_bounds": {"throttle": [-1.0, 1.0]}, "loosen_everything": True},
    ),
    # -- one channel, one slice, the person -------------------------------------------
    Case(
        "per_channel_regression",
        one((B(8, 6, **SHIFT, throttle_scale=0.5),), (B(4, 7, **SHIFT),)),
        "rejected",
        ("name:throttle",),
    ),
    Case(
        "environment_slice_regression",
        one(
            (B(8, 8, **SHIFT, environment="trackA"),),
            (
                B(5, 9, **SHIFT, environment="trackA"),
                B(3, 10, steering_bias=0.1, environment="trackB"),
            ),
        ),
        "rejected",
        ("slice:environment_id=trackB", "name:"),
        fails=("slice:environment_id=trackB",),
        config=ERROR_ONLY,
    ),
    Case(
        "approach_near_a_person",
        one((B(8, 11, near="approach"),), (B(8, 11, near="approach"),)),
        "rejected",
        SAFETY,
        fails=RISK,  # a risk check: the risk of what the policy commands near the person
    ),
    # -- non-finite data and training -------------------------------------------------------
    Case(
        "nan_in_recorded_actions",
        one((B(8, 1, corrupt="nan-action", **SHIFT),), (B(4, 1, **SHIFT),)),
        "no job",
        in_ledger="not a finite number",
    ),
    Case(
        "inf_in_observations",
        one((B(8, 1, corrupt="inf-obs", **SHIFT),), (B(4, 1, **SHIFT),)),
        "no job",
        in_ledger="not a finite number",
    ),
    Case(
        "diverged_training",
        shift(),
        "not promoted",  # rejected, or failed when the child's result is not even finite
        ("finite", "improvement", "shift", "name:", "result not JSON-safe", *SAFETY),
        config={"job": {"learning_rate": 1e6, "max_steps": 40}},
    ),
    # -- too little evidence ---------------------------------------------------------------
    Case("too_few_episodes", shift(m=2), "rejected", ("evidence",), says="2 held-out episodes"),
    Case(
        "too_few_steps",
        one((B(8, 1, **SHIFT),), (B(4, 13, steps=10, **SHIFT),)),
        "rejected",
        ("evidence",),
        says="40 steps",
    ),
    Case("no_eval_episodes", shift(m=0), "rejected", ("evidence",), says="0 held-out"),
    Case(
        "nothing_to_gain",
        one((B(8, 14),), (B(4, 14),)),
        "rejected",
        ("improvement", "name:"),
        config={"job": {"max_steps": 30}},
    ),
    Case(
        "strict_confidence_on_a_small_shift",
        one((B(8, 16, steering_bias=0.05),), (B(4, 16, steering_bias=0.05),)),
        "rejected",
        ("improvement", "name:"),
        config=deep_merge(
            ERROR_ONLY,
            {
                "promotion": {"confidence": 0.999, "resamples": 2000, "min_improvement": 0.3},
                "job": {"max_steps": 60},
            },
        ),
    ),
    # -- preemption at each phase, the gate at promotion time --------------------------------
    Case("preempted_while_loading", shift(act="preempt:load"), "promoted", config=LENIENT),
    Case("preempted_while_training", shift(act="preempt:train"), "promoted", config=LENIENT),
    Case("preempted_while_evaluating", shift(act="preempt:eval"), "promoted", config=LENIENT),
    Case("fifo_at_the_mode_file_preempts", shift(act="fifo"), "promoted", config=LENIENT),
    Case(
        "release_lands_while_the_job_evaluates",
        (
            Round((B(8, 1, **SHIFT),), (B(4, 1, **SHIFT),), expect="promoted"),
            Round((B(6, 17, **SHIFT),), (), act="release during eval"),
        ),
        "rejected",
        ("baseline",),
        config=LENIENT,
    ),
    Case("candidate_waits_for_the_gate", shift(act="waits"), "promoted", config=LENIENT),
    Case(
        "release_lands_while_the_candidate_waits",
        shift(act="waits,release"),
        "rejected",
        ("baseline",),
        config=LENIENT,
    ),
    Case(
        "waiting_candidate_survives_a_restart",
        shift(act="waits,restart"),
        "promoted",
        config=LENIENT,
    ),
    Case(
        "waiting_candidate_rejudged_after_a_release_landed",
        shift(act="waits,restart,release"),
        "rejected",
        ("baseline",),
        config=LENIENT,
    ),
    Case(
        "waiting_candidate_with_files_gone",
        shift(act="waits,restart,gone"),
        "discarded",
        ("waiting candidate",),
        says="lacks",
        config=LENIENT,
    ),
    # -- held out for good -----------------------------------------------------------------
    Case(
        "split_change_after_a_promotion",
        (
            Round((B(8, 1, **SHIFT),), (B(4, 1, **SHIFT),), expect="promoted"),
            Round(
                (B(4, 18, **SHIFT),), (B(3, 18, **SHIFT),), config={"job": {"eval_fraction": 0.7}}
            ),
        ),
        "any",
        logged="eval_held_back",
        config=LENIENT,
    ),
]


# -- episodes -------------------------------------------------------------------------------


def place(out: Path, batch: Batch, split: str, fraction: float) -> list[Path]:
    """Write ``batch`` into ``out`` with episode ids the daemon puts in ``split`` (the ledger's
    own :func:`split_for`); the same (seed, options, index) always gives the same bytes."""
    tag = SynthOptions(**batch.opts).tag(batch.seed)
    chosen, i = [], 0
    while len(chosen) < batch.n:
        if split_for(f"synth-{tag}-{i:04d}", fraction) == split:
            chosen.append(i)
        i += 1
    paths = []
    for i in chosen:
        paths += write_synthetic_episodes(
            out, 1, batch.steps, batch.seed, first_index=i, **batch.opts
        )
    if batch.corrupt:
        for episode in paths:
            _corrupt(episode, batch.corrupt)
    return paths


def _corrupt(episode: Path, how: str) -> None:
    """One step's action (or observation) becomes NaN (or Infinity), as a broken producer
    writes it; the episode's completeness marker is left as the producer wrote it."""
    shard = episode / "steps" / "000000.jsonl"
    lines = shard.read_text().splitlines()
    step = json.loads(lines[3])
    if how == "nan-action":
        step["action"]["command"][1] = float("nan")
    else:
        step["observation"]["robot_state"]["joint_positions"][0] = float("inf")
    lines[3] = json.dumps(step)
    shard.write_text("\n".join(lines) + "\n")


def drop(root: Path, staging: Path, rnd: Round, fraction: float) -> None:
    """Write a round's episodes beside the folder and rename them in, as producers do."""
    shutil.rmtree(staging, ignore_errors=True)
    for batch in rnd.train:
        place(staging, batch, "train", fraction)
    for batch in rnd.evals:
        place(staging, batch, "eval", fraction)
    if staging.is_dir():
        for entry in staging.iterdir():
            os.rename(entry, root / "rlds" / "episodes" / entry.name)


# -- running a case ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a round came to: the verdict, its decisive check or reason, every reason."""

    verdict: str
    decisive: str
    reasons: list[str]
    entry: dict[str, Any] | None = None


def from_entry(entry: dict[str, Any]) -> Outcome:
    reasons = list(entry["reasons"])
    first = reasons[0] if reasons else ""
    decisive = first[5:].split(": ", 1)[0] if first.startswith("FAIL ") else first
    return Outcome(entry["verdict"], decisive, reasons, entry)


def current(daemon: InProcessDaemon) -> str | None:
    release = daemon.service.store.current()
    return release.id if release else None


def run_round(daemon: InProcessDaemon, rnd: Round, expect: str, tmp: Path) -> Outcome:
    """One cycle of the real daemon, scripted by ``rnd.act``; the daemon it ends with is
    ``daemon`` unless the act restarted it (then the outcome's ``entry`` is the new one's)."""
    act = rnd.act
    if act.startswith(("preempt:", "fifo")):
        phase = act.split(":", 1)[1] if act.startswith("preempt:") else "train"
        daemon.pause_in(phase)
        write_mode(daemon.root, "idle")
        daemon.at_phase(phase)
        before = current(daemon)
        mode = daemon.root / ".robot_mode"
        if act == "fifo":
            mode.unlink()
            os.mkfifo(mode)  # no writer: a blocking open would hang the gate poll for good
            # ... and this test with it: end the run with every thread's stack instead
            faulthandler.dump_traceback_later(240, exit=True)
        else:
            write_mode(daemon.root, "manual_control")
        stopped = daemon.decision()
        assert stopped["verdict"] == "preempted", stopped
        assert current(daemon) == before  # nothing promoted from a preempted job
        left = json.loads(
            (daemon.service.cfg.runs_dir / stopped["job_id"] / "result.json").read_text()
        )
        assert left["status"] == "preempted" and left["candidate_path"] is None, left
        assert left["metrics"] is None
        if act == "fifo":
            faulthandler.cancel_dump_traceback_later()
            gate = daemon.service.gate_decision
            assert gate is not None and not gate.open and "fifo" in str(gate.to_json()), gate
            mode.unlink()
        write_mode(daemon.root, "idle")
        resumed = daemon.decision()
        spec = json.loads(
            (daemon.service.cfg.runs_dir / resumed["job_id"] / "spec.json").read_text()
        )
        if phase != "load":  # a preemption during training or evaluation left a checkpoint
            assert spec["resume_from"] == left["checkpoint_path"] is not None, (spec, left)
        return from_entry(resumed)
    if act == "release during eval":
        daemon.pause_in("eval")
        write_mode(daemon.root, "idle")
        daemon.at_phase("eval")
        release = daemon.service.store.current()
        assert release is not None
        promote_copy(daemon.root, tmp, release.path, "operator")
        daemon.release()
        return from_entry(daemon.decision())
    if act.startswith("waits"):
        return waits(daemon, act, tmp)
    write_mode(daemon.root, "idle")
    entry = daemon.next_outcome()
    if entry is None:  # nothing trained: why not
        return Outcome("no job", daemon.service.reason, [daemon.service.reason])
    return from_entry(entry)


def waits(daemon: InProcessDaemon, act: str, tmp: Path) -> Outcome:
    """The gate closes in the one window a live daemon cannot be timed into: the child has
    ended, the daemon has not judged it yet."""
    daemon.pause_in("eval")
    write_mode(daemon.root, "idle")
    daemon.at_phase("eval")
    daemon.release()
    daemon.child_ended()
    write_mode(daemon.root, "manual_control")
    service = daemon.service
    daemon.tick_until(lambda: service.pending is not None, "the candidate to wait")
    assert "waits for the gate" in service.reason, service.reason
    run_dir = service.pending.run_dir
    for _ in range(5):
        service.tick()
    assert current(daemon) is None and service.pending is not None  # not while closed
    if act == "waits,release":  # judged again at once: evaluated against what is not current
        promote_copy(daemon.root, tmp, run_dir / "candidate", "operator")
        daemon.tick_until(lambda: service.pending is None, "the candidate judged")
        return from_entry(service.decisions[0])
    if "restart" in act:
        daemon.stop()
        assert (service.cfg.state_dir / "pending.json").is_file()
        if "release" in act:
            promote_copy(daemon.root, tmp, run_dir / "candidate", "operator")
        if "gone" in act:
            (run_dir / "candidate" / "adapter_model.safetensors").unlink()
        daemon.__init__(daemon.root, service._config_path)  # the next start, same root
        service = daemon.service
        if "gone" in act:
            assert service.pending is None and service.decisions
            return from_entry(service.decisions[0])
        assert service.pending is not None and service.pending.run_dir == run_dir
        if "release" in act:  # judged at once, gate closed or not: the evidence is stale
            daemon.tick_until(lambda: service.pending is None, "the candidate judged")
            return from_entry(service.decisions[0])
    write_mode(daemon.root, "idle")
    return from_entry(daemon.decision())


def set_manifest_safety(root: Path, block: dict[str, Any]) -> None:
    path = root / "model" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["safety"] = block
    path.write_text(json.dumps(manifest))


def check(case: Case, got: Outcome, expect: str, daemon: InProcessDaemon | None) -> None:
    shown = "\n".join(got.reasons[:8])
    if expect == "any":
        assert got.verdict in ("promoted", "rejected"), f"{case.name}: {got.verdict}\n{shown}"
    elif expect == "not promoted":
        assert got.verdict in ("rejected", "failed", "no job"), f"{case.name}: {shown}"
    else:
        assert got.verdict == expect, f"{case.name}: {got.verdict}, not {expect}:\n{shown}"
    if case.decisive:
        assert got.decisive.startswith(case.decisive), (
            f"{case.name}: decisive {got.decisive}\n{shown}"
        )
    if case.fails:
        failed = [r[5:] for r in got.reasons if r.startswith("FAIL ")]
        assert any(r.startswith(case.fails) for r in failed), f"{case.name}: {shown}"
    if case.not_decisive and got.verdict != "promoted":
        assert not got.decisive.startswith(case.not_decisive), f"{case.name}: {shown}"
    if case.says:
        assert case.says in got.reasons[0], f"{case.name}: {got.reasons[0]}"
    if got.verdict == "rejected" and got.decisive != got.reasons[0]:
        assert got.reasons[0].startswith(f"FAIL {got.decisive}:"), shown


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_adversarial(case: Case, tmp_path: Path, base_checkpoint: Path) -> None:
    root, config = make_root(tmp_path, deep_merge(TABLE_CONFIG, case.config), base=base_checkpoint)
    if case.manifest_safety is not None:
        set_manifest_safety(root, case.manifest_safety)
    fraction = EVAL_FRACTION
    with structlog.testing.capture_logs() as logs:
        drop(root, tmp_path / "staging", case.rounds[0], fraction)
        try:
            daemon = InProcessDaemon(root, config)
        except ConfigError as exc:
            assert case.expect == "refused", f"{case.name}: refused: {exc}"
            assert case.says in str(exc), exc
            return
        assert case.expect != "refused", f"{case.name}: the daemon started"
        try:
            for n, rnd in enumerate(case.rounds):
                last = n == len(case.rounds) - 1
                if n:
                    write_mode(root, "manual_control")
                    if rnd.config:
                        raw = deep_merge(yaml.safe_load(config.read_text()), rnd.config)
                        config.write_text(yaml.safe_dump(raw))
                        fraction = raw["job"]["eval_fraction"]
                        daemon.service.reload()
                    drop(root, tmp_path / "staging", rnd, fraction)
                before = current(daemon)
                expect = case.expect if last else rnd.expect
                got = run_round(daemon, rnd, expect, tmp_path / f"round{n}")
                if last:
                    check(case, got, expect, daemon)
                else:
                    assert got.verdict == expect, f"{case.name} round {n}: {got.reasons[:4]}"
                if got.verdict != "promoted":  # whatever was unsafe changed nothing
                    assert current(daemon) in (before, None) or "release" in rnd.act
            if case.in_ledger:
                reasons = [r for _, r in daemon.service.ledger.rejected(limit=100)]
                assert any(case.in_ledger in r for r in reasons), reasons[:5]
            if case.name == "split_change_after_a_promotion":
                held_out_for_good(daemon)
        finally:
            daemon.stop()
    if case.logged:
        assert any(e["event"] == case.logged for e in logs), sorted({e["event"] for e in logs})


def held_out_for_good(daemon: InProcessDaemon) -> None:
    """The second job's eval set holds no episode the promoted release trained on, though the
    new split moved some of them into eval."""
    ledger = daemon.service.ledger
    first, second = sorted(ledger.last_jobs(5), key=lambda j: j.started_at)[-2:]
    assert first.release_id is not None
    trained = {h for h in ledger.released_hashes()}
    spec = json.loads((daemon.service.cfg.runs_dir / second.run_id / "spec.json").read_text())
    evaluated = set(spec["eval_episodes"])
    moved = [r for r in ledger.valid_episodes("eval") if r.content_hash in trained]
    assert moved, "the new split must move some trained-on episodes into eval"
    assert not evaluated & {r.path for r in moved}
    assert evaluated
