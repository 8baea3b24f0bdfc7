"""Faults an SD card makes, injected at the file-system boundary of the real daemon.

* a read-only remount of the model folder (a tmpfs the test mounts, ``mount -o remount,ro``);
* EIO / ENOSPC on ledger writes, EIO on episode reads and a slow fsync (seconds) on the model
  folder, through the faultfs LD_PRELOAD shim (tests/faultfs), active while a flag file exists;
* an episode truncated under the daemon.

Each time: the daemon stays up, says why (status / decisions / log), and recovers when the fault
goes (nothing lost: every episode ends up in the ledger, a promotion still happens). Needs root
for the mount (skipped otherwise) and gcc for the shim (skipped otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from daemon.store import AdapterStore
from tests import faultfs
from tests.daemon_harness import CLI, REPO, status, wait_until
from tests.reliability_harness import (
    Robot,
    job_pid,
    ledger_rows,
    make_base,
    mount_tmpfs,
    umount,
)

pytestmark = pytest.mark.slow  # each test runs the real daemon through a fault and back


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    lib = faultfs.build(tmp_path_factory.mktemp("faultfs"))
    if lib is None:
        pytest.skip("no C compiler (gcc) to build the faultfs LD_PRELOAD shim")
    return lib


def valid_names(robot: Robot) -> set[str]:
    try:
        return {Path(r[0]).name for r in ledger_rows(robot.root) if r[1] == "valid"}
    except Exception:  # the ledger may be mid-fault or locked: nothing known yet
        return set()


def decision(robot: Robot, verdict: str, timeout: float = 150) -> dict:
    return wait_until(
        lambda: next((d for d in robot.decisions() if d["verdict"] == verdict), None),
        timeout,
        f"a {verdict!r} decision",
        robot.log,
    )


def stop(robot: Robot) -> None:
    if robot.proc is not None and robot.proc.poll() is None:
        assert robot.stop() == 0, robot.tail()


@pytest.mark.parametrize("kind", ["eio-write", "enospc-write"])
def test_ledger_write_faults_then_recovery(tmp_path, base, shim, monkeypatch, kind):
    robot = Robot.create(tmp_path, base, episodes=12)
    flag = tmp_path / "fault-on"
    for key, value in faultfs.env(shim, robot.root / "state" / "ledger", flag, kind).items():
        monkeypatch.setenv(key, value)
    robot.mode("manual_control")  # no job: this is about the scan writing the ledger
    robot.start()
    try:
        robot.wait_ready()
        flag.touch()
        robot.drop(4)
        time.sleep(4)  # scans meet the failing card
        assert robot.proc.poll() is None, robot.tail()
        said = robot.log.read_text()
        assert "ledger" in said and ("I/O" in said or "space" in said or "disk" in said), said[
            -3000:
        ]
        flag.unlink()
        wait_until(lambda: len(valid_names(robot)) >= 4, 60, "the 4 episodes recorded", robot.log)
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_episode_read_eio_then_recovery(tmp_path, base, shim, monkeypatch):
    robot = Robot.create(tmp_path, base, episodes=12)
    flag = tmp_path / "fault-on"
    for key, value in faultfs.env(shim, robot.episodes, flag, "eio-read").items():
        monkeypatch.setenv(key, value)
    robot.mode("manual_control")
    robot.start()
    try:
        robot.wait_ready()
        flag.touch()
        robot.drop(4)
        time.sleep(4)
        assert robot.proc.poll() is None, robot.tail()
        assert "Input/output error" in robot.log.read_text(), robot.tail()
        flag.unlink()
        # a read error is the card's, not the episode's: once it reads again, it is recorded
        wait_until(lambda: len(valid_names(robot)) >= 4, 60, "the 4 episodes recorded", robot.log)
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_slow_fsync_on_the_model_folder_still_promotes(tmp_path, base, shim, monkeypatch):
    robot = Robot.create(tmp_path, base, episodes=16)
    flag = tmp_path / "fault-on"
    flag.touch()
    for key, value in faultfs.env(shim, robot.root / "model", flag, "slow-fsync", 2).items():
        monkeypatch.setenv(key, value)
    robot.mode("manual_control")
    robot.start()
    try:
        robot.wait_ready()
        robot.drop(8)
        robot.mode("idle")
        promoted = decision(robot, "promoted")
        assert robot.proc.poll() is None, robot.tail()
        store = AdapterStore(
            robot.root / "model" / "adapters", robot.root / "model" / "manifest.json"
        )
        assert store.current().id == promoted["release"]
        flag.unlink()
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_model_folder_remounted_read_only_then_writable(tmp_path, base):
    robot = Robot.create(tmp_path, base, episodes=16)
    model = robot.root / "model"
    saved = tmp_path / "model-saved"
    shutil.copytree(model, saved, symlinks=True)
    why = mount_tmpfs(model, "64m")
    if why is not None:
        pytest.skip(why)
    try:
        shutil.copytree(saved, model, symlinks=True, dirs_exist_ok=True)
        before = (model / "manifest.json").read_bytes()
        robot.mode("manual_control")
        robot.start()
        robot.wait_ready()
        robot.drop(8)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(model)], capture_output=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr!r}")
        robot.mode("idle")
        failed = decision(robot, "failed")
        assert any("Read-only" in r for r in failed["reasons"]), failed
        assert robot.proc.poll() is None, robot.tail()
        assert (model / "manifest.json").read_bytes() == before
        subprocess.run(["mount", "-o", "remount,rw", str(model)], check=True)
        robot.drop(6)
        promoted = decision(robot, "promoted")
        store = AdapterStore(model / "adapters", model / "manifest.json")
        assert store.current().id == promoted["release"]
        store.verify(store.current())
        stop(robot)
    finally:
        if robot.proc is not None and robot.proc.poll() is None:
            robot.proc.kill()
        umount(model)


def test_episode_truncated_under_the_daemon(tmp_path, base):
    robot = Robot.create(tmp_path, base, episodes=8)
    robot.mode("manual_control")
    robot.start()
    try:
        robot.wait_ready()
        robot.drop(4)
        wait_until(lambda: len(valid_names(robot)) >= 4, 60, "4 episodes recorded", robot.log)
        victim = max(
            (p for p in robot.episodes.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
        )
        entry = str(robot.episodes / victim.relative_to(robot.episodes).parts[0])
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)

        def verdict() -> tuple[str, str | None] | None:
            rows = {r[0]: (r[1], r[3]) for r in ledger_rows(robot.root)}
            row = rows.get(entry)
            return row if row is not None and row[0] == "rejected" else None

        _, reason = wait_until(verdict, 60, "the truncated episode rejected", robot.log)
        assert reason, "a rejection says why"
        assert robot.proc.poll() is None, robot.tail()
        assert status(robot.root).get("counts", {}).get("rejected", 1) >= 1
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_ledger_read_eio_then_recovery(tmp_path, base, shim, monkeypatch):
    """The card stops reading the ledger: the daemon stays up and says why in status and in the
    journal; once the card reads again the episodes that arrived meanwhile are recorded."""
    robot = Robot.create(tmp_path, base, episodes=12)
    flag = tmp_path / "fault-on"
    for key, value in faultfs.env(shim, robot.root / "state" / "ledger", flag, "eio-read").items():
        monkeypatch.setenv(key, value)
    robot.mode("manual_control")  # no job: this is about the daemon reading its ledger
    robot.start()
    try:
        robot.wait_ready()
        wait_until(lambda: status(robot.root).get("pid") == robot.proc.pid, 30, "status")
        robot.drop(4)
        wait_until(lambda: len(valid_names(robot)) >= 4, 60, "4 episodes recorded", robot.log)
        flag.touch()
        # The daemon's own writes keep its page cache valid, so it would never read the card:
        # an operator's quarantine (another process, a healthy path to the file) changes the
        # database, and the daemon's next look must read it from the failing card.
        first = sorted(valid_names(robot))[0]
        healthy = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "FAULTFS"))}
        subprocess.run(
            [
                *CLI,
                "--root",
                str(robot.root),
                "--config",
                str(robot.config),
                "episodes",
                "exclude",
                first,
                "--reason",
                "operator",
            ],
            check=True,
            capture_output=True,
            env=healthy,
            cwd=REPO,
            timeout=120,
        )
        robot.drop(2)

        def said_why() -> dict | None:
            snap = status(robot.root)
            err = snap.get("ledger_error") or ""
            return snap if "I/O" in err or "disk" in err.lower() else None

        snap = wait_until(said_why, 60, "status naming the ledger fault", robot.log)
        assert "ledger" in snap["reason"], snap
        assert robot.proc.poll() is None, robot.tail()
        assert '"ledger_unavailable"' in robot.log.read_text(), robot.tail()
        flag.unlink()
        wait_until(lambda: len(valid_names(robot)) >= 6, 60, "all 6 episodes recorded", robot.log)
        wait_until(lambda: status(robot.root).get("ledger_error") is None, 30, "the fault cleared")
        assert '"ledger_recovered"' in robot.log.read_text()
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def faulty_robot(
    tmp_path: Path, base: Path, shim: Path, monkeypatch, under: str, kinds: str, episodes: int
) -> tuple[Robot, Path]:
    """A robot whose daemon (and its children) see ``kinds`` faults for files under
    ``root/under`` while the returned flag file exists; started and ready, gate closed."""
    robot = Robot.create(tmp_path, base, episodes=episodes)
    flag = tmp_path / "fault-on"
    for key, value in faultfs.env(shim, robot.root / under, flag, kinds).items():
        monkeypatch.setenv(key, value)
    robot.mode("manual_control")
    robot.start()
    return robot, flag


@pytest.mark.parametrize("kind", ["eio-write", "enospc-write"])
def test_store_write_faults_fail_the_promotion_then_recovery(
    tmp_path, base, shim, monkeypatch, kind
):
    """The model folder (the store: releases, the current link, the manifest) stops taking
    writes: the promotion fails with the card's error in the decision and the journal, the
    manifest is untouched, the daemon stays up; once the card writes again a job promotes."""
    robot, flag = faulty_robot(tmp_path, base, shim, monkeypatch, "model/adapters", kind, 20)
    model = robot.root / "model"
    manifest = (model / "manifest.json").read_bytes()
    try:
        robot.wait_ready()
        flag.touch()
        robot.drop(8)
        robot.mode("idle")
        failed = decision(robot, "failed")
        word = "Input/output error" if kind == "eio-write" else "No space left"
        assert any("promotion failed" in r and word in r for r in failed["reasons"]), failed
        assert robot.proc.poll() is None, robot.tail()
        assert (model / "manifest.json").read_bytes() == manifest
        assert '"promotion_failed"' in robot.log.read_text()
        flag.unlink()
        robot.drop(6)
        promoted = decision(robot, "promoted")
        store = AdapterStore(model / "adapters", model / "manifest.json")
        assert store.current().id == promoted["release"]
        store.verify(store.current())
        assert not [p for p in (model / "adapters").rglob(".tmp-*")], "staging left behind"
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()


def test_store_read_eio_blocks_then_recovery(tmp_path, base, shim, monkeypatch):
    """The card stops reading the manifest: no job is planned on a store it cannot read, status
    says why, the daemon stays up; once it reads again a job runs and promotes."""
    robot, flag = faulty_robot(
        tmp_path, base, shim, monkeypatch, "model/manifest.json", "eio-read", 20
    )
    model = robot.root / "model"
    try:
        robot.wait_ready()
        flag.touch()
        robot.drop(8)
        robot.mode("idle")

        def said_why() -> dict | None:
            snap = status(robot.root)
            text = f"{snap.get('reason')} {snap.get('blocked')} {snap.get('store_error')}"
            return snap if "Input/output error" in text else None

        wait_until(said_why, 60, "status naming the store fault", robot.log)
        assert robot.proc.poll() is None, robot.tail()
        assert job_pid(robot.root) is None, "a job planned on an unreadable store"
        flag.unlink()
        promoted = decision(robot, "promoted")
        store = AdapterStore(model / "adapters", model / "manifest.json")
        assert store.current().id == promoted["release"]
        stop(robot)
    finally:
        if robot.proc.poll() is None:
            robot.proc.kill()
