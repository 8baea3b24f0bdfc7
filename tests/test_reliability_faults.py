"""Faults injected at the OS boundary into the real daemon: a full disk during a job and during
promotion (a tiny tmpfs, filled to ENOSPC), a child that hangs through SIGTERM (SIGSTOPped), a
child over its memory budget (its own check, and the parent's backstop), a corrupt ledger.

Each time the fault must end cleanly: the job fails with a reason, nothing half-written is
promoted, the daemon stays up (or, for the ledger, refuses to start with the recovery named),
and once the fault is gone the next cycle works.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from daemon.store import AdapterStore
from tests.daemon_harness import group_alive, status, wait_until
from tests.reliability_harness import (
    Robot,
    fill,
    job_pid,
    make_base,
    mount_tmpfs,
    umount,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base"))


@pytest.fixture
def mounts():
    """tmpfs mounts made by a test; unmounted whatever happens."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        umount(path)


def mount_or_skip(mounts: list[Path], path: Path, size: str) -> None:
    why = mount_tmpfs(path, size)
    if why is not None:
        pytest.skip(why)
    mounts.append(path)


def store(robot: Robot) -> AdapterStore:
    return AdapterStore(robot.root / "model" / "adapters", robot.root / "model" / "manifest.json")


def decision(robot: Robot, verdict: str, timeout: float = 120) -> dict:
    return wait_until(
        lambda: next((d for d in robot.decisions() if d["verdict"] == verdict), None),
        timeout,
        f"a {verdict!r} decision",
        robot.log,
    )


def releases(robot: Robot) -> list[str]:
    folder = robot.root / "model" / "adapters" / "releases"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_disk_full_during_a_job(tmp_path, base, mounts):
    robot = Robot.create(tmp_path, base, episodes=16)
    runs = robot.root / "state" / "runs"
    mount_or_skip(mounts, runs, "32m")
    manifest_before = (robot.root / "model" / "manifest.json").read_bytes()
    robot.mode("manual_control")
    robot.start()
    try:
        robot.wait_ready()
        robot.drop(8)
        robot.mode("idle")
        robot.wait_job()
        fill(runs)  # the child's checkpoint, candidate and result now hit ENOSPC
        failed = decision(robot, "failed")
        time.sleep(3)  # retries (backoff 0.5-2 s) meet the same full disk
        assert robot.proc.poll() is None, robot.tail()
        assert (robot.root / "model" / "manifest.json").read_bytes() == manifest_before
        assert releases(robot) == []
        assert failed["release"] is None and failed["reasons"], failed
        (runs / ".filler").unlink()
        promoted = decision(robot, "promoted")
        current = store(robot).current()
        assert current is not None and current.id == promoted["release"]
        store(robot).verify(current)
        assert robot.stop() == 0, robot.tail()
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_disk_full_during_promotion(tmp_path, base, mounts):
    robot = Robot.create(tmp_path, base, episodes=16)
    model = robot.root / "model"
    saved = tmp_path / "model-saved"
    shutil.copytree(model, saved, symlinks=True)
    mount_or_skip(mounts, model, "64m")
    shutil.copytree(saved, model, symlinks=True, dirs_exist_ok=True)
    manifest_before = (model / "manifest.json").read_bytes()
    robot.mode("manual_control")
    robot.start()
    try:
        robot.wait_ready()
        robot.drop(8)
        robot.mode("idle")
        robot.wait_job()
        fill(model)  # the base is read already or readable; the release cannot be staged
        failed = decision(robot, "failed")
        assert any("promotion failed" in r for r in failed["reasons"]), failed
        assert robot.proc.poll() is None, robot.tail()
        assert (model / "manifest.json").read_bytes() == manifest_before
        assert [r for r in releases(robot) if not r.startswith(".")] == []
        assert store(robot).current() is None
        (model / ".filler").unlink()
        robot.drop(6)  # the failed job's episodes count as used; new ones arrive
        promoted = decision(robot, "promoted")
        current = store(robot).current()
        assert current is not None and current.id == promoted["release"]
        store(robot).verify(current)
        # A restart clears whatever the failed staging left behind.
        assert robot.stop() == 0, robot.tail()
        robot.start()
        robot.wait_ready()
        assert [r for r in releases(robot) if r.startswith(".")] == []
        assert store(robot).current().id == current.id
        assert robot.stop() == 0, robot.tail()
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_hung_child_is_killed_after_grace(tmp_path, base):
    robot = Robot.create(tmp_path, base, episodes=12, extra={"job": {"grace_s": 2}})
    robot.drop(8)
    robot.start()
    try:
        robot.wait_ready()
        pid = robot.wait_job()
        os.kill(pid, signal.SIGSTOP)  # a stopped process never acts on SIGTERM
        robot.mode("manual_control")
        flipped = time.monotonic()
        wait_until(lambda: not group_alive(pid), 30, "the hung child's group to be gone", robot.log)
        took = time.monotonic() - flipped
        assert took >= 2 * 0.95, f"killed after {took:.2f} s, before grace_s"
        ended = wait_until(
            lambda: next((d for d in robot.decisions()), None), 10, "the job's end", robot.log
        )
        assert ended["verdict"] == "preempted", ended
        assert robot.proc.poll() is None, robot.tail()
        robot.mode("idle")
        wait_until(lambda: job_pid(robot.root) not in (None, pid), 60, "the next job", robot.log)
        assert robot.stop() == 0, robot.tail()
        assert not group_alive(pid)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def run_result(robot: Robot, job_id: str) -> dict:
    return json.loads((robot.root / "state" / "runs" / job_id / "result.json").read_text())


def test_child_over_memory_stops_itself(tmp_path, base):
    # The child holds about 370 MB once torch and peft are loaded; 300 MB trips its own check at
    # the first step while the parent's backstop (1.5 x 300 = 450 MB) stays out of the way,
    # even at the import peak.
    robot = Robot.create(tmp_path, base, episodes=12, extra={"job": {"max_rss_mb": 300}})
    robot.drop(8)
    robot.start()
    try:
        robot.wait_ready()
        ended = wait_until(
            lambda: next((d for d in robot.decisions() if d["verdict"] != "preempted"), None),
            120,
            "the job's end",
            robot.log,
        )
        result = run_result(robot, ended["job_id"])
        assert result["status"] == "budget", result
        assert "max_rss_mb" in result["reason"], result["reason"]
        assert robot.proc.poll() is None, robot.tail()
        assert robot.stop() == 0, robot.tail()
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_parent_backstop_stops_a_child_over_memory(tmp_path, base):
    robot = Robot.create(tmp_path, base, episodes=12, extra={"job": {"max_rss_mb": 40}})
    robot.drop(8)
    robot.start()
    try:
        robot.wait_ready()
        pid = robot.wait_job()
        wait_until(lambda: not group_alive(pid), 60, "the child to be stopped", robot.log)
        ended = wait_until(lambda: robot.decisions(), 10, "the job's end", robot.log)[0]
        # Not a preemption to resume at once: a failed job (with backoff), the reason says why.
        assert ended["verdict"] == "failed", ended
        assert any("RSS" in r and "budget" in r for r in ended["reasons"]), ended
        assert robot.proc.poll() is None, robot.tail()
        assert store(robot).current() is None
        assert robot.stop() == 0, robot.tail()
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_corrupt_ledger_is_refused_and_the_documented_recovery_works(tmp_path, base):
    robot = Robot.create(tmp_path, base, episodes=6)
    robot.mode("manual_control")
    robot.drop(6)
    robot.start()
    ledger = robot.root / "state" / "ledger.sqlite3"
    try:
        robot.wait_ready()
        wait_until(lambda: (status(robot.root).get("ledger") or {}).get("valid") == 6, 30, "ingest")
        assert robot.stop() == 0, robot.tail()
        junk = os.urandom(8192)
        ledger.write_bytes(junk)
        robot.start()
        code = robot.proc.wait(timeout=60)
        assert code != 0
        said = robot.tail()
        assert str(ledger) in said and "move it aside" in said and "rescanning" in said, said
        assert ledger.read_bytes() == junk, "the corrupt ledger was reset silently"
        # The recovery the message (and README) gives: move it aside, start again.
        os.rename(ledger, ledger.with_name(ledger.name + ".broken"))
        robot.start()
        robot.wait_ready()
        wait_until(
            lambda: (status(robot.root).get("ledger") or {}).get("valid") == 6,
            30,
            "the episodes re-ingested",
            robot.log,
        )
        assert robot.stop() == 0, robot.tail()
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()
