"""Daemon-side promotion cases that need no job (issue 11, items 6 and 9); the cases through
the real job and daemon (preemption at each phase, a candidate waiting for the gate and across
a restart, a FIFO at the mode path preempting a job, ...) are one table in
tests/test_promotion_adversarial.py.

- a split change (``job.eval_fraction``) after a promotion: no episode a release trained on
  enters a candidate's eval set (real ledger, the daemon's own planning);
- a FIFO (or other non-regular file) at the mode-file path: the gate source refuses it with a
  reason and never blocks;
- a step shard is read exactly when it is hashed;
- the waiting candidate's file: what a restarted daemon takes back, and why it discards one.

The pure side (a passing candidate waits while the gate is closed and is re-judged against the
release current later) is table-tested in tests/test_cycle.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.cycle import BASE, plan_job
from daemon.ledger import Ledger, split_for
from daemon.runs import WAITING_FILE, clear_waiting, load_waiting, save_waiting
from gating.sources import ModeFileSource


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


# -- the waiting candidate's file (daemon.runs): what a restart can take back ------------------


def _waiting_run(runs: Path) -> Path:
    """A finished run with metrics and a complete candidate, as the child leaves one."""
    from daemon.store import CANDIDATE_FILES
    from tests.test_cycle import metrics
    from trainer_core.fsio import atomic_write_json
    from trainer_core.spec import JobResult, JobSpec

    cfg, _ = load_config(None, str(runs.parent))
    run = runs / "20260101T000000Z-0001"
    candidate = run / "candidate"
    candidate.mkdir(parents=True)
    for name in CANDIDATE_FILES:
        (candidate / name).write_text("{}")
    (candidate / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
    header = b'{"__metadata__":{}}'
    (candidate / "adapter_model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header
    )
    result = JobResult(run_id=run.name, status="done", candidate_path=candidate, metrics=metrics())
    atomic_write_json(run / "result.json", result.model_dump(mode="json"))
    spec = JobSpec(
        run_id=run.name, run_dir=run, train_episodes=[run / "e"], eval_episodes=[],
        base_path=cfg.policy.base_path, features=cfg.features, policy=cfg.policy,
        lora=cfg.lora, job=cfg.job, ingest=cfg.ingest, safety=cfg.safety,
    )  # fmt: skip
    (run / "spec.json").write_text(spec.model_dump_json())
    return run


def _no_candidate_file(run: Path) -> None:
    (run / "candidate" / "normalizer.json").unlink()


def _not_safetensors(run: Path) -> None:
    (run / "candidate" / "adapter_model.safetensors").write_bytes(b"\x80\x04pickle")


def _preempted(run: Path) -> None:
    data = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps(data | {"status": "preempted"}))


def _no_result(run: Path) -> None:
    (run / "result.json").unlink()


def _run_gone(run: Path) -> None:
    shutil.rmtree(run)


def _elsewhere(run: Path) -> None:
    (run.parent.parent / "state" / WAITING_FILE).write_text(json.dumps({"run_dir": "/etc"}))


def _garbage(run: Path) -> None:
    (run.parent.parent / "state" / WAITING_FILE).write_text("{not json")


# (case, damage done while the daemon was down, what the problem says; "" = judged again)
WAITING_CASES = [
    ("intact", lambda run: None, ""),
    ("a_candidate_file_removed", _no_candidate_file, "lacks normalizer.json"),
    ("adapter_not_safetensors", _not_safetensors, "not safetensors"),
    ("result_says_preempted", _preempted, "without an evaluated candidate"),
    ("result_removed", _no_result, "no result.json"),
    ("run_directory_removed", _run_gone, "is gone"),
    ("names_a_folder_outside_the_runs", _elsewhere, "names no run"),
    ("unreadable_file", _garbage, "unreadable pending.json"),
]


@pytest.mark.parametrize(("damage", "problem"), [c[1:] for c in WAITING_CASES],
                         ids=[c[0] for c in WAITING_CASES])  # fmt: skip
def test_a_waiting_candidate_is_taken_back_only_when_complete(
    tmp_path: Path, damage, problem: str
) -> None:
    state, runs = tmp_path / "state", tmp_path / "runs"
    state.mkdir()
    run = _waiting_run(runs)
    save_waiting(state, run, 1.0)
    damage(run)
    waiting = load_waiting(state, runs)
    assert waiting is not None
    assert problem in waiting.problem and bool(waiting.problem) == bool(problem), waiting.problem
    assert (waiting.result is not None) == (not problem)
    clear_waiting(state)
    assert load_waiting(state, runs) is None
