"""Adversarial cases on the daemon side of the promotion decision (issue 11, items 6, 7, 9):

- preemption at each phase of the real job (a real SIGTERM through its real handler): nothing
  is promoted from a preempted job, and the resumed job finishes and is judged;
- a split change (``job.eval_fraction``) after a promotion: no episode a release trained on
  enters a candidate's eval set (real ledger, the daemon's own planning);
- a FIFO (or other non-regular file) at the mode-file path: the gate closes with a reason and
  never blocks; through the real daemon, a running job is still preempted in time.

The pure side (a passing candidate waits while the gate is closed and is re-judged against the
release current later) is table-tested in tests/test_cycle.py.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.cycle import BASE, plan_job
from daemon.ledger import Ledger, split_for
from gating.sources import ModeFileSource
from tests.daemon_harness import (
    group_alive,
    make_root,
    start_daemon,
    status,
    stop,
    synth,
    wait_until,
    write_mode,
)
from tests.test_job import World, build_world, run_job, write_spec
from trainer_core import job as job_module
from trainer_core.spec import ExitCode


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


# phase at which SIGTERM arrives -> whether a resume checkpoint is expected
PREEMPT_AT = [("load", False), ("train", True), ("eval", True)]


@pytest.mark.parametrize(("phase", "checkpoint"), PREEMPT_AT, ids=[p for p, _ in PREEMPT_AT])
def test_preemption_at_each_phase_leaves_no_candidate_and_resumes(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    phase: str,
    checkpoint: bool,
) -> None:
    real_emit = job_module.emit
    sent = []

    def emit(event: dict) -> None:
        real_emit(event)
        if event.get("event") == "phase" and event.get("phase") == phase and not sent:
            sent.append(phase)
            os.kill(os.getpid(), signal.SIGTERM)  # the job's own handler takes it

    monkeypatch.setattr(job_module, "emit", emit)
    spec = write_spec(tmp_path / "r1", world.shift[:6], world.shift[9:], world.base, max_steps=40)
    code, result = run_job(spec)
    assert sent == [phase]
    assert code == ExitCode.PREEMPTED and result.status == "preempted", result.reason
    assert result.candidate_path is None and result.metrics is None  # nothing to promote
    assert (result.checkpoint_path is not None) == checkpoint
    if phase == "eval":
        assert "evaluation" in result.reason and result.steps == 40

    monkeypatch.setattr(job_module, "emit", real_emit)
    resumed = write_spec(
        tmp_path / "r2",
        world.shift[:6],
        world.shift[9:],
        world.base,
        max_steps=40,
        resume_from=result.checkpoint_path,
    )
    code, again = run_job(resumed)
    assert code == ExitCode.DONE and again.status == "done", again.reason
    assert again.candidate_path is not None and again.metrics is not None
    assert again.resumed_from_step == (result.steps if checkpoint else 0)


def test_split_change_after_a_promotion_keeps_trained_episodes_out_of_eval(
    tmp_path: Path,
) -> None:
    cfg, _ = load_config(None, str(tmp_path))
    cfg = cfg.model_copy(update={"job": cfg.job.model_copy(update={"min_episodes": 1})})
    ids = [f"ep{i:03d}" for i in range(60)]
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.ensure_splits(0.2)
        for eid in ids:
            ledger.record(
                f"/e/{eid}",
                status="valid",
                signature="s",
                now=1.0,
                content_hash=f"h{eid}",
                episode_id=eid,
                split=split_for(eid, 0.2),
                n_steps=10,
            )
        first = plan_job(
            cfg, "j1", ledger.valid_episodes("train"), ledger.valid_episodes("eval"), BASE,
            cfg.safety, None, ledger.released_hashes(),
        )  # fmt: skip
        assert first.spec is not None
        ledger.record_job_start("j1", 1.0, first.train_hashes)
        ledger.record_trained("j1", first.train_hashes)  # what the child reported
        ledger.record_job_end("j1", "done", "promoted", "r1", 2.0)

        ledger.ensure_splits(0.7)  # the operator changes job.eval_fraction
        moved = [r for r in ledger.valid_episodes("eval") if r.content_hash in first.train_hashes]
        assert moved, "the new split must move some trained-on episodes into eval"
        second = plan_job(
            cfg, "j2", ledger.valid_episodes("train"), ledger.valid_episodes("eval"),
            BASE, cfg.safety, None, ledger.released_hashes(),
        )  # fmt: skip
        assert second.spec is not None
        assert not set(second.eval_hashes) & set(first.train_hashes)
        assert sorted(second.held_back) == sorted(r.path for r in moved)
        assert second.eval_hashes  # episodes never trained on are still evaluated


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # left bound for the test's lifetime: the inode stays a socket


NOT_REGULAR = [("fifo", _fifo, "fifo"), ("directory", _directory, "directory")]
NOT_REGULAR += [("socket", _socket, "")]  # opening a socket fails outright (ENXIO)


@pytest.mark.parametrize(
    ("make", "word"), [c[1:] for c in NOT_REGULAR], ids=[c[0] for c in NOT_REGULAR]
)
def test_non_regular_mode_file_is_refused_without_blocking(tmp_path: Path, make, word) -> None:
    path = tmp_path / ".robot_mode"
    make(path)
    t0 = time.monotonic()
    reading = ModeFileSource(path, time.time).read()["mode"]
    assert time.monotonic() - t0 < 0.5
    assert reading.value is None and reading.error
    assert word in reading.error


def test_fifo_at_mode_path_closes_the_gate_and_preempts_a_running_job(
    tmp_path: Path, world: World
) -> None:
    root, config = make_root(
        tmp_path,
        base=world.base,
        mode="idle",
        extra={"job": {"max_steps": 100000, "max_wall_time_s": 120, "batch_size": 16}},
    )
    synth(root, root / "rlds" / "episodes", "--episodes", "8", "--steps", "60", "--seed", "7")
    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        job = wait_until(
            lambda: (status(root).get("job") or {}).get("step", 0) > 0 and status(root)["job"],
            90,
            "a running job",
            log,
        )
        mode = root / ".robot_mode"
        mode.unlink()
        os.mkfifo(mode)  # no writer: a blocking open would hang the gate poll
        flipped = time.monotonic()
        wait_until(lambda: not group_alive(job["pid"]), 8, "the child to be preempted", log)
        assert time.monotonic() - flipped < 5.0
        gate = wait_until(
            lambda: (status(root).get("gate") or {}).get("open") is False and status(root)["gate"],
            5,
            "the gate closed in the status",
            log,
        )
        assert "fifo" in str(gate), gate
        decision = wait_until(lambda: status(root).get("last_decisions"), 5, "a record", log)[0]
        assert decision["verdict"] == "preempted"
        assert status(root).get("current_release") is None  # nothing promoted while closed
        mode.unlink()
        write_mode(root, "idle")
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("meanwhile", ["nothing", "another release lands"])
def test_finished_candidate_waits_for_the_gate_and_is_judged_again(
    tmp_path: Path, world: World, meanwhile: str
) -> None:
    """The real service and a real child; the gate closes after the child finished and before
    the service judged its candidate (the one window a live daemon cannot be timed into)."""
    import shutil

    from daemon.service import Phase, Service

    # What is tested is when the verdict is carried out, not the rule: the candidate learns
    # steering and leaves throttle alone, so the per-name margin is widened for this world.
    extra = {"promotion": {"max_name_regression": 0.5}}
    root, config = make_root(tmp_path, base=world.base, mode="idle", extra=extra)
    synth(root, root / "rlds" / "episodes", "--episodes", "12", "--steps", "100", "--seed", "5",
          "--steering-bias", "0.3")  # fmt: skip
    cfg, _ = load_config(config, str(root))
    service = Service(cfg, config, {})
    service.start()
    try:
        deadline = time.monotonic() + 60
        while not service.supervisor.running:
            assert time.monotonic() < deadline, service.reason
            service.tick()
        outcome = service.supervisor.wait(120)
        assert outcome is not None and outcome.status == "done", outcome
        write_mode(root, "manual_control")
        service.gate_decision = service.gate.poll()
        assert not service.gate_decision.open
        service.on_job_end(outcome)
        assert service.pending is not None and service.phase == Phase.PROMOTING
        assert "waits for the gate" in service.reason
        if meanwhile != "nothing":
            other = tmp_path / "other"
            shutil.copytree(outcome.result.candidate_path, other)
            service.store.promote(other, {"run_id": "operator"})
        landed = service.store.current()
        for _ in range(5):
            service.tick()
        assert service.store.current() == landed  # nothing promoted while the gate is closed
        if meanwhile == "nothing":
            assert service.pending is not None
            write_mode(root, "idle")
            deadline = time.monotonic() + 30
            while service.pending is not None:
                assert time.monotonic() < deadline, service.reason
                service.tick()
            decision = service.decisions[0]
            assert decision["verdict"] == "promoted", decision
        else:  # judged again at once: it was evaluated against what is no longer current
            assert service.pending is None
            decision = service.decisions[0]
            assert decision["verdict"] == "rejected", decision
            assert any(r.startswith("FAIL baseline") for r in decision["reasons"])
            assert service.store.current().id == landed.id
    finally:
        service.shutdown()


def _steps(episode: Path) -> int:
    from trainer_core.config import IngestConfig
    from trainer_core.rlds import EpisodeError, read_episode

    try:
        return len(read_episode(episode, IngestConfig()).steps)
    except EpisodeError:
        return -1


@pytest.mark.parametrize("name", ["~000001.jsonl", ".000001.jsonl", "000001.jsonl"])
def test_a_step_shard_is_read_exactly_when_it_is_hashed(tmp_path: Path, name: str) -> None:
    from trainer_core.rlds.hashing import content_hash, hashed_file
    from trainer_core.synth import write_synthetic_episodes

    episode = write_synthetic_episodes(tmp_path, 1, 10, seed=0)[0]
    shard = episode / "steps" / "000000.jsonl"
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:5]))
    before = (_steps(episode), content_hash(episode))
    (episode / "steps" / name).write_bytes(b"".join(lines[5:]))  # the other five steps
    read = _steps(episode) != before[0]
    hashed = content_hash(episode) != before[1]
    assert read == hashed == hashed_file(f"steps/{name}")
