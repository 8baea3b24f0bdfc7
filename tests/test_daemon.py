"""The real daemon as a subprocess: notify protocol, end to end, preemption, status, no torch."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon_harness import (
    CLI,
    REPO,
    NotifySocket,
    group_alive,
    make_root,
    next_decision,
    once,
    start_daemon,
    status,
    stop,
    synth,
    wait_until,
    write_mode,
)

pytestmark = pytest.mark.slow


def torch_mapped(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/" in maps


def test_daemon_modules_import_without_torch():
    code = (
        "import sys, daemon.cli, daemon.service, daemon.status, daemon.demo, gating, safety.rule,"
        " daemon.metrics, daemon.journal, daemon.logs;"
        "bad = [m for m in ('torch', 'peft', 'transformers', 'matplotlib', 'prometheus_client')"
        " if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_notify_protocol(tmp_path, base_checkpoint):
    root, config = make_root(tmp_path, base=base_checkpoint, mode="manual_control")
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_daemon(root, config, notify, watchdog_usec=1_000_000)
    log = root / "daemon.log"
    try:
        wait_until(lambda: notify.lines("READY=1"), 30, "READY=1", log)
        wait_until(
            lambda: any("gate closed" in m for _, m in notify.lines("STATUS=")),
            10,
            "a STATUS line naming the closed gate",
            log,
        )
        # Watchdog pings at half of WATCHDOG_USEC (0.5 s) while the loop makes progress.
        time.sleep(2.2)
        pings = [t for t, _ in notify.lines("WATCHDOG=1")]
        recent = [t for t in pings if t > time.monotonic() - 2.0]
        assert 3 <= len(recent) <= 5, pings
        gaps = [b - a for a, b in itertools.pairwise(recent)]
        assert all(0.3 < g < 0.9 for g in gaps), gaps
        # Stall the loop through the test hook: the pings stop.
        proc.send_signal(signal.SIGUSR2)
        time.sleep(0.5)
        before = len(notify.lines("WATCHDOG=1"))
        time.sleep(1.5)
        assert len(notify.lines("WATCHDOG=1")) == before
        proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: len(notify.lines("WATCHDOG=1")) > before, 3, "pings again", log)
        assert not torch_mapped(proc.pid)
        # Off a terminal, each log line is one JSON object behind a syslog priority prefix.
        first = log.read_text().splitlines()[0]
        assert first[:3] in ("<6>", "<4>", "<3>") and json.loads(first[3:])["event"]
        assert stop(proc) == 0
        assert notify.lines("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


def test_end_to_end_promote_then_reject_unsafe(tmp_path, base_checkpoint):
    # clip: the reckless driver's out-of-bounds commands are clipped and trained on (with the
    # default, skip, they never reach a job); it still drives into people at full throttle
    root, config = make_root(
        tmp_path,
        base=base_checkpoint,
        mode="manual_control",
        extra={"features": {"out_of_bounds": "clip"}},
    )
    manifest_path = root / "model" / "manifest.json"
    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        wait_until(lambda: status(root).get("pid"), 30, "the daemon's status file", log)
        staging = tmp_path / "staging"
        synth(
            root,
            staging,
            "--episodes",
            "12",
            "--steps",
            "100",
            "--seed",
            "5",
            "--steering-bias",
            "0.3",
        )
        first = next_decision(root, staging, 12)
        assert first["verdict"] == "promoted", first
        manifest = json.loads(manifest_path.read_text())
        assert manifest["adapter_meta"]["release_id"] == first["release"]
        assert manifest["notes"] == "Written by `continuon-trainer demo`."  # runtime fields kept
        assert Path(manifest["paths"]["adapter"]).is_file()
        assert not torch_mapped(proc.pid)

        # Unsafe episodes: the candidate drives into people; it must not be promoted.
        write_mode(root, "manual_control")
        before = manifest_path.read_bytes()
        synth(root, staging, "--episodes", "10", "--steps", "100", "--seed", "6", "--unsafe")
        second = next_decision(root, staging, 22, exclude=(first["job_id"],))
        assert second["verdict"] == "rejected", second
        decisive = second["reasons"][0]
        assert decisive.startswith(("FAIL clamp", "FAIL block", "FAIL warn", "FAIL mean_risk")), (
            decisive
        )
        assert manifest_path.read_bytes() == before
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_preemption_stops_the_child_and_resumes(tmp_path, base_checkpoint):
    root, config = make_root(
        tmp_path,
        base=base_checkpoint,
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
        pid = job["pid"]
        write_mode(root, "manual_control")
        flipped = time.monotonic()
        wait_until(lambda: not group_alive(pid), 5, "the child's process group to be gone", log)
        assert time.monotonic() - flipped < 3.0
        decision = wait_until(lambda: status(root).get("last_decisions"), 5, "a record", log)[0]
        assert decision["verdict"] == "preempted"
        checkpoint = root / "state" / "runs" / decision["job_id"] / "checkpoint"
        assert checkpoint.is_dir()
        write_mode(root, "idle")
        resumed = wait_until(
            lambda: (
                (status(root).get("job") or {}).get("job_id") not in (None, decision["job_id"])
                and status(root)["job"]
            ),
            60,
            "the job to resume",
            log,
        )
        spec = json.loads((root / "state" / "runs" / resumed["job_id"] / "spec.json").read_text())
        assert spec["resume_from"] == str(checkpoint)
        assert stop(proc) == 0
        assert not group_alive(resumed["pid"])
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_with_and_without_daemon(tmp_path, base_checkpoint):
    root, config = make_root(tmp_path, base=base_checkpoint, mode="manual_control")
    down = subprocess.run(
        [*CLI, "--root", str(root), "--config", str(config), "status"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    # Never ran here: no daemon and no state is an explicit, non-zero answer.
    assert down.returncode == 1 and "no daemon and no state at" in down.stdout
    proc = start_daemon(root, config)
    try:
        wait_until(lambda: status(root).get("gate"), 30, "status", root / "daemon.log")
        up = subprocess.run(
            [*CLI, "--root", str(root), "--config", str(config), "status", "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        snap = json.loads(up.stdout)
        assert snap["schema"] == "continuon-trainer.status/2"
        assert snap["running"] is True and snap["gate"]["open"] is False
        assert any("manual_control" in r for r in snap["gate"]["reasons"])
    finally:
        stop(proc)
    after = subprocess.run(
        [*CLI, "--root", str(root), "--config", str(config), "status"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert after.returncode == 0 and "not running" in after.stdout
    down_json = subprocess.run(
        [*CLI, "--root", str(root), "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    # One schema whether or not the daemon runs: the same keys.
    assert sorted(json.loads(down_json.stdout)) == sorted(snap)


def test_sighup_keeps_old_config_when_new_is_bad(tmp_path, base_checkpoint):
    root, config = make_root(tmp_path, base=base_checkpoint)
    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        wait_until(lambda: status(root).get("pid"), 30, "start", log)
        config.write_text("job: {max_steps: -5}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload_refused" in log.read_text(), 10, "reload refused", log)
        assert "job.max_steps: must be > 0" in log.read_text()
        assert proc.poll() is None
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_once_force_runs_one_cycle_despite_teleop(tmp_path, base_checkpoint):
    root, config = make_root(tmp_path, base=base_checkpoint, mode="manual_control")
    synth(
        root,
        root / "rlds" / "episodes",
        "--episodes",
        "12",
        "--steps",
        "100",
        "--seed",
        "8",
        "--steering-bias",
        "0.3",
    )
    done = once(root, config, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"event":"candidate_promoted"' in done.stderr
    assert '<4>{"event":"gate_closed"' not in done.stderr  # --force: the gate is no warning
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    assert manifest["generation"] == 1
    # Without --force and with the robot in teleop, `once` does not train: it waits for the gate
    # or, with nothing new to do, says so and exits.
    again = once(root, config, timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert "(episodes: " in again.stderr and "trainable" in again.stderr  # one vocabulary


def test_once_says_why_it_cannot_train(tmp_path):
    root, config = make_root(tmp_path, base=None, mode="idle")  # no base policy
    synth(root, root / "rlds" / "episodes", "--episodes", "4", "--steps", "20", "--seed", "9")
    done = once(root, config, "--force", timeout=60)
    assert done.returncode == 1
    assert "cannot train: no base policy at" in done.stderr


def test_one_daemon_per_state_folder_and_reload_is_acknowledged(tmp_path, base_checkpoint):
    root, config = make_root(tmp_path, base=base_checkpoint, mode="manual_control")
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_daemon(root, config, notify)
    log = root / "daemon.log"
    try:
        wait_until(lambda: notify.lines("READY=1"), 30, "READY=1", log)
        second = once(root, config, timeout=60)
        assert second.returncode == 2
        assert "another continuon-trainer (pid" in second.stderr
        assert proc.poll() is None
        # A valid reload is acknowledged with READY=1 (after RELOADING=1), as sd_notify wants.
        text = config.read_text().replace("cooldown_s: 0", "cooldown_s: 5")
        config.write_text(text)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(notify.lines("READY=1")) >= 2, 10, "READY=1 after reload", log)
        assert notify.lines("RELOADING=1")
        assert "config_reloaded" in log.read_text()
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


@pytest.mark.parametrize(
    ("damage", "shape_ok"),
    [
        ({"updated_at": None}, False),
        ({"last_decisions": "promoted"}, False),
        ({"last_decisions": ["promoted"]}, False),
        # Inner fields are not checked on reading: render shows them as "?" instead.
        ({"job": {"job_id": "r1", "step": 3}}, True),  # no phase, no max_steps, no budget
        ({"gate": {"open": True, "reasons": "ok"}}, True),
    ],
)
def test_status_survives_a_malformed_status_file(tmp_path, capsys, damage, shape_ok):
    from daemon.config import load_config
    from daemon.status import read_status, render, status_command

    cfg, _ = load_config(None, root=str(tmp_path))
    snapshot = {
        "pid": os.getpid(),
        "updated_at": time.time(),
        "status_line": "idle: waiting",
        "gate": {"open": False, "reasons": ["mode manual_control"]},
        "ledger": None,
        "job": None,
        "current_release": None,
        "last_decisions": [],
        **damage,
    }
    cfg.status_path.parent.mkdir(parents=True)
    cfg.status_path.write_text(json.dumps(snapshot))
    for as_json in (False, True):
        assert status_command(type("Args", (), {"json": as_json})(), cfg) == 0
    assert "continuon-trainer:" in capsys.readouterr().out
    assert (read_status(cfg.status_path) is not None) == shape_ok
    if "job" in damage:
        assert "job        r1 ?: step 3/?, loss ?" in render(snapshot, running=True)
