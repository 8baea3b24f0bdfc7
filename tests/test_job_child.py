"""The job as the daemon runs it: a real child process (``python -m trainer_core.job``).

SIGTERM preemption (timed, with a resume checkpoint that continues the same trajectory), abort
during start-up, an unusable spec, and a saved adapter reloaded in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.supervisor import PIDFILE, JobSupervisor, reap_orphan
from safety.config import SafetyConfig
from tests.test_job import PICKLE_PROTOCOLS, World, build_world, run_job, write_spec
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig
from trainer_core.spec import ExitCode, JobResult, JobSpec

REPO = Path(__file__).resolve().parent.parent
RESUME_TOLERANCE = 1e-5  # relative; restoring RNG, optimiser and data cursor should make it exact


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def spawn(spec_path: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainer_core.job", str(spec_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def read_until(proc: subprocess.Popen, want) -> dict:
    """Progress lines until one satisfies ``want``; fails if the child ends first."""
    for line in proc.stdout:
        event = json.loads(line)
        if want(event):
            return event
    pytest.fail(f"child ended (rc {proc.wait()}) first: {proc.stderr.read()[-2000:]}")


def result_of(run_dir: Path) -> JobResult:
    return JobResult.model_validate_json((run_dir / "result.json").read_text())


def test_sigterm_preempts_within_a_second_and_resume_continues_exactly(
    world: World, tmp_path: Path
) -> None:
    train, evals = world.shift[:9], world.shift[9:]
    first = tmp_path / "first"
    proc = spawn(write_spec(first, train, evals, world.base, max_steps=1_000_000))
    read_until(proc, lambda e: e.get("event") == "progress" and e["step"] >= 20)
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    code = proc.wait(timeout=10)
    exit_s = time.monotonic() - t
    assert code == ExitCode.PREEMPTED, proc.stderr.read()
    assert exit_s <= 1.0, f"took {exit_s:.2f} s to exit after SIGTERM"
    interrupted = result_of(first)
    assert interrupted.status == "preempted" and interrupted.candidate_path is None
    assert not (first / "candidate").exists()
    ckpt = first / "checkpoint"
    assert interrupted.checkpoint_path == ckpt
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "lora.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    for f in ckpt.iterdir():  # no pickle: safetensors and JSON only
        assert f.read_bytes()[:2] not in PICKLE_PROTOCOLS and b"data.pkl" not in f.read_bytes()
    stopped = interrupted.steps
    assert stopped >= 20
    total = stopped + 100

    _, resumed = run_job(
        write_spec(
            tmp_path / "resumed", train, evals, world.base, resume_from=ckpt, max_steps=total
        )
    )
    _, straight = run_job(
        write_spec(tmp_path / "straight", train, evals, world.base, max_steps=total)
    )
    assert resumed.status == straight.status == "done"
    assert resumed.resumed_from_step == stopped and resumed.steps == straight.steps == total
    assert any("resumed from" in n for n in resumed.notes)
    assert resumed.losses == pytest.approx(straight.losses, rel=RESUME_TOLERANCE)
    assert resumed.loss_last == pytest.approx(straight.loss_last, rel=RESUME_TOLERANCE)

    # Other data: the checkpoint no longer fits and is discarded, saying so.
    _, other = run_job(
        write_spec(
            tmp_path / "other", world.plain[:4], evals, world.base, resume_from=ckpt, max_steps=10
        )
    )
    assert other.status == "done" and other.resumed_from_step == 0
    assert any("checkpoint discarded" in n and "fingerprint" in n for n in other.notes)

    # A damaged checkpoint is discarded too, and the job trains from scratch as if none was given.
    broken = tmp_path / "broken-ckpt"
    shutil.copytree(ckpt, broken)
    (broken / "optimizer.safetensors").write_bytes(b"\0" * 16)
    _, damaged = run_job(
        write_spec(
            tmp_path / "damaged", train, evals, world.base, resume_from=broken, max_steps=total
        )
    )
    assert damaged.resumed_from_step == 0
    assert any("checkpoint discarded" in n and "unreadable" in n for n in damaged.notes)
    assert damaged.losses == pytest.approx(straight.losses, rel=RESUME_TOLERANCE)


def test_sigterm_during_startup_aborts_at_once(world: World, tmp_path: Path) -> None:
    proc = spawn(write_spec(tmp_path / "r", world.plain[:4], [], world.base, max_steps=100))
    read_until(proc, lambda e: e.get("event") == "started")  # torch/peft not yet imported
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    assert code == ExitCode.PREEMPTED and time.monotonic() - t <= 1.0
    result = result_of(tmp_path / "r")
    assert result.status == "preempted" and result.steps == 0
    assert "before training" in result.reason


def test_an_orphan_without_a_pid_file_is_found_and_killed(world: World, tmp_path: Path) -> None:
    """The daemon died between spawning its child and writing job.pid: the next start finds the
    child by its command line, kills its group, and leaves another state dir's job alone."""
    state, elsewhere = tmp_path / "state", tmp_path / "other-robot"

    def child(runs: Path) -> subprocess.Popen:
        spec = write_spec(runs / "r1", world.plain[:4], [], world.base, max_steps=1_000_000)
        return spawn(spec, start_new_session=True)  # its own group, as JobSupervisor.start does

    orphan, bystander = child(state / "runs"), child(elsewhere / "runs")
    try:
        for proc in (orphan, bystander):
            read_until(proc, lambda e: e.get("event") == "progress")
        assert not (state / PIDFILE).exists()
        note = reap_orphan(state, state / "runs")
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert note and f"group {orphan.pid}" in note and str(state / "runs" / "r1") in note
        assert bystander.poll() is None, "a job of another state dir was killed"
        assert reap_orphan(state, state / "runs") is None  # nothing left to reap
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait()


def test_unusable_spec_exits_invalid_with_a_result(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text('{"run_id": "r"}')
    proc = spawn(run_dir / "spec.json")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INVALID
    started = json.loads(out.splitlines()[0])
    assert started["event"] == "started" and started["max_steps"] == 0  # an int, never null
    result = result_of(run_dir)
    assert result.status == "invalid" and "train_episodes" in result.reason


FLOODING_CHILD = """#!/bin/sh
# Stands in for the interpreter: a malformed event first, then more output than a pipe holds.
echo '{"event": "started", "max_steps": null}'
echo '{"event": "progress", "step": "x", "max_steps": [1], "loss": "nan"}'
echo '{"event": "phase", "phase": null}'
i=0
while [ $i -lt 4000 ]; do
  echo '{"event": "progress", "step": 7, "max_steps": 9, "loss": 0.5, "pad": "%s"}'
  i=$((i + 1))
done
"""


def test_supervisor_keeps_draining_stdout_after_malformed_progress(tmp_path: Path) -> None:
    # ~400 KB of progress after malformed events: if the reader thread died on them, the child
    # would block on the full pipe and never end.
    pad = "p" * 80
    child = tmp_path / "fake-python"
    child.write_text(FLOODING_CHILD.replace("%s", pad))
    child.chmod(0o755)
    run_dir = tmp_path / "run"
    spec = JobSpec(
        run_id="run",
        run_dir=run_dir,
        train_episodes=[tmp_path / "ep"],
        eval_episodes=[],
        base_path=tmp_path / "base.safetensors",
        features=FeaturesConfig(),
        policy=PolicyConfig(),
        lora=LoraConfig(),
        job=JobConfig(),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    state = tmp_path / "state"
    state.mkdir()
    supervisor = JobSupervisor(state, os.environ, python=str(child))
    supervisor.start(spec)
    outcome = supervisor.wait(20)
    if outcome is None:
        supervisor.stop("test", grace_s=0.1)
        supervisor.wait(5)
        pytest.fail("the child blocked on its stdout: the progress reader stopped draining")
    assert outcome.exit_code == 0
    assert (supervisor.progress.step, supervisor.progress.max_steps) == (7, 9)
    assert supervisor.progress.loss == 0.5


RELOAD = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from trainer_core.base import load_base
from trainer_core.config import FeaturesConfig, PolicyConfig
from trainer_core.evaluate import Policy, predict
from trainer_core.lora import load_adapter
import numpy as np
base = load_base(Path(sys.argv[1]), PolicyConfig(), FeaturesConfig())
model, norm, card = load_adapter(base.model, Path(sys.argv[2]), base.sha256)
obs = np.array(json.loads(sys.argv[3]), dtype=np.float32)
pred = predict(Policy(model, norm), obs, torch.device("cpu"), lambda: False)
print(json.dumps([[float(v).hex() for v in row] for row in pred]))
"""


def test_saved_adapter_reloads_identically_in_a_fresh_process(world: World, tmp_path: Path):
    import numpy as np
    import torch

    from trainer_core.base import load_base
    from trainer_core.config import FeaturesConfig, PolicyConfig
    from trainer_core.evaluate import Policy, predict
    from trainer_core.lora import load_adapter

    torch.set_num_threads(1)
    code, result = run_job(
        write_spec(tmp_path / "r", world.shift[:9], world.shift[9:], world.base, max_steps=40)
    )
    assert code == ExitCode.DONE
    obs = [[0.5, 0.2, 3.0], [1.2, -0.7, 1.5], [0.0, 0.0, 2.0]]
    base = load_base(world.base, PolicyConfig(), FeaturesConfig())
    model, norm, _ = load_adapter(base.model, result.candidate_path, base.sha256)
    here = predict(Policy(model, norm), np.array(obs, np.float32), torch.device("cpu"), lambda: 0)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD,
            str(world.base),
            str(result.candidate_path),
            json.dumps(obs),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    there = [[float.fromhex(v) for v in row] for row in json.loads(out.stdout)]
    assert there == here.astype(float).tolist()
    # and the adapter is not a no-op: it differs from the bare base
    bare = predict(
        Policy(load_base(world.base, PolicyConfig(), FeaturesConfig()).model, base.normalizer),
        np.array(obs, np.float32),
        torch.device("cpu"),
        lambda: 0,
    )
    assert not np.allclose(bare, here)
