"""Temp files a power cut leaves: the atomic writer's ``.tmp-<name>.<random>`` beside the status,
health, pid and result files. The daemon removes stale ones of its own naming at start, and
never touches anything in the episodes folder (a user's) nor a file of another naming."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.status import remove_stale_state_temps
from tests.daemon_harness import make_root, start_daemon, status, wait_until
from trainer_core.fsio import remove_stale_temps


def old(path: Path, age_s: float = 3600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{half a status")
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_only_stale_temps_of_our_naming_go(tmp_path: Path) -> None:
    root, config = make_root(tmp_path, extra={"metrics": {"textfile": "metrics/trainer.prom"}})
    cfg, _ = load_config(config, str(root))
    state = cfg.state_dir
    gone = [
        old(state / ".tmp-status.json.ab12CD_9"),
        old(state / ".tmp-health.json.zzzzzzzz"),
        old(cfg.runs_dir / "20260101T000000Z-0001" / ".tmp-result.json.q1w2e3r4"),
        old(root / "metrics" / ".tmp-trainer.prom.a1b2c3d4"),
    ]
    kept = [
        old(state / ".tmp-status.json.abc"),  # not mkstemp's suffix
        old(state / "notes.tmp-status.json.ab12CD_9"),  # not our prefix
        old(root / "metrics" / ".tmp-other.prom.a1b2c3d4"),  # another exporter's file
        old(root / "rlds" / "episodes" / ".tmp-status.json.ab12CD_9"),  # a user's folder
        old(root / "rlds" / "episodes" / "ep1" / ".tmp-steps.jsonl.ab12CD_9"),
        old(state / ".tmp-job.pid.young123", age_s=1),  # a write in flight, maybe
    ]
    (state / ".tmp-status.json.dir12345").mkdir()  # not a regular file
    kept.append(state / ".tmp-status.json.dir12345")
    removed = remove_stale_state_temps(cfg)
    assert sorted(removed) == sorted(gone)
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)


def test_a_temp_from_before_the_boot_goes_however_young(tmp_path: Path) -> None:
    temp = old(tmp_path / ".tmp-status.json.abcdefgh", age_s=5)
    assert remove_stale_temps(tmp_path, boot_time=time.time() - 60) == []
    assert remove_stale_temps(tmp_path, boot_time=time.time()) == [temp]


@pytest.mark.slow
def test_the_daemon_removes_them_at_start(tmp_path: Path) -> None:
    root, config = make_root(tmp_path)
    temp = old(root / "state" / ".tmp-status.json.ab12CD_9")
    episode_temp = old(root / "rlds" / "episodes" / ".tmp-status.json.ab12CD_9")
    proc = start_daemon(root, config)
    try:
        wait_until(lambda: status(root).get("pid") == proc.pid, 60, "ready", root / "daemon.log")
        assert not temp.exists()
        assert episode_temp.exists()
        assert '"stale_temp_removed"' in (root / "daemon.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_preempted_and_failed_jobs_do_not_pile_up_run_dirs(tmp_path: Path) -> None:
    """A gate that flaps all day preempts every job, and a broken job fails at every retry:
    neither is ever judged, so run dirs (a checkpoint each) must be pruned at their ends too."""
    from daemon.service import Service
    from daemon.supervisor import Outcome

    root, config = make_root(tmp_path, extra={"service": {"keep_runs": 3}})
    cfg, _ = load_config(config, str(root))
    service = Service(cfg, config, {})
    service.start()
    try:
        ends = []
        for i in range(12):
            run = cfg.runs_dir / f"20260101T0000{i:02d}Z-0001"
            run.mkdir(parents=True)
            (run / "result.json").write_text("{}")  # the child's (content not needed here)
            service.ledger.record_job_start(run.name, 1000.0 + i, [])
            preempted = i % 2 == 0
            ends.append(run)
            service.on_job_end(
                Outcome(
                    run,
                    0 if preempted else 1,
                    None,
                    "teleop" if preempted else "exit 1",
                    killed_by_parent="preempted: teleop" if preempted else None,
                )
            )
            left = sorted(p.name for p in cfg.runs_dir.iterdir())
            assert len(left) <= 3 + 1, left  # keep_runs, and the one that just ended
            assert run.name in left  # the latest stays (its checkpoint, its child.log)
    finally:
        service.shutdown()
