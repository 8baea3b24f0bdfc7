"""Acceptance: a simulated robot runs promoted releases through the real daemon.

The test is the robot: it writes the continuonos mode file (autonomous, teleop takeovers,
emergency stop) at the file-system boundary while the daemon's health window watches. The first
release comes from a real training cycle; the ones judged later are copies of its real adapter,
promoted through the store (the daemon's own lock), so each scenario is the health window's
decision alone and not the promotion rule's. Then more real cycles run, and the releases marked
bad are never made current again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.daemon_harness import (
    cli,
    make_root,
    next_decision,
    promote_copy,
    start_daemon,
    status,
    stop,
    synth,
    wait_until,
    write_mode,
)

pytestmark = pytest.mark.slow

HEALTH = {
    "health": {"confirm_after_autonomous_s": 8, "confidence": 0.95, "max_gap_s": 5},
    "promotion": {"min_eval_steps": 20},
}


def hold(root: Path, mode: str, seconds: float) -> None:
    write_mode(root, mode)
    time.sleep(seconds)


def current_id(root: Path) -> str:
    return json.loads((root / "model" / "manifest.json").read_text())["adapter_meta"]["release_id"]


def health(root: Path) -> dict:
    return status(root).get("health") or {}


def record(root: Path, rid: str) -> dict:
    return json.loads((root / "state" / "health.json").read_text())["releases"].get(rid) or {}


def test_health_window_rolls_back_confirms_and_stops(tmp_path, base_checkpoint):
    root, config = make_root(tmp_path, HEALTH, base=base_checkpoint, mode="manual_control")
    log = root / "daemon.log"
    proc = start_daemon(root, config)
    seen_current: set[str] = set()
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
        r1 = first["release"]
        r1_dir = root / "model" / "adapters" / "releases" / r1
        # r1's own record: 1 takeover in about 6 autonomous seconds
        hold(root, "autonomous", 3)
        hold(root, "manual_control", 0.8)
        hold(root, "autonomous", 3)
        hold(root, "idle", 0.8)
        assert record(root, r1)["interventions"] == 1, record(root, r1)

        # (a) markedly more takeovers than the predecessor: rolled back within the window
        r2 = promote_copy(root, tmp_path, r1_dir, "r2")
        wait_until(lambda: health(root).get("release") == r2, 10, "r2 on probation", log)
        assert health(root)["state"] == "probation"
        for _ in range(12):
            hold(root, "autonomous", 0.6)
            hold(root, "manual_control", 0.6)
            if current_id(root) == r1:
                break
        wait_until(lambda: current_id(root) == r1, 10, "the rollback to r1", log)
        assert record(root, r2)["state"] == "rolled_back", record(root, r2)
        assert record(root, r2)["autonomous_s"] < HEALTH["health"]["confirm_after_autonomous_s"]
        listing = cli(root, "releases").stdout
        assert "rolled_back" in listing and "BAD" in listing, listing

        # (b) the same rate as the predecessor: confirmed
        hold(root, "idle", 0.5)
        r3 = promote_copy(root, tmp_path, r1_dir, "r3")
        wait_until(lambda: health(root).get("release") == r3, 10, "r3 on probation", log)
        hold(root, "autonomous", 5)
        hold(root, "manual_control", 0.8)
        hold(root, "autonomous", 5)
        wait_until(lambda: record(root, r3).get("state") == "confirmed", 10, "r3 confirmed", log)
        assert current_id(root) == r3

        # (c) an emergency stop during probation: rolled back at once
        r4 = promote_copy(root, tmp_path, r1_dir, "r4")
        wait_until(lambda: health(root).get("release") == r4, 10, "r4 on probation", log)
        hold(root, "autonomous", 1)
        hold(root, "emergency_stop", 1)
        wait_until(lambda: current_id(root) == r3, 10, "the rollback to r3", log)
        assert "emergency stop" in record(root, r4)["reason"]
        seen_current.add(current_id(root))

        # later cycles never make a bad release current again
        hold(root, "manual_control", 0.3)
        synth(
            root,
            staging,
            "--episodes",
            "6",
            "--steps",
            "100",
            "--seed",
            "8",
            "--steering-bias",
            "0.3",
        )
        next_decision(root, staging, 18, exclude=(first["job_id"],))
        for _ in range(20):
            seen_current.add(current_id(root))
            time.sleep(0.1)
        assert r2 not in seen_current and r4 not in seen_current, seen_current
        bad = json.loads((root / "model" / "adapters" / "marks.json").read_text())["bad"]
        assert set(bad) == {r2, r4}
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_excluding_unsafe_episodes_lets_a_safe_batch_promote(tmp_path, base_checkpoint):
    # clip: the reckless driver's out-of-bounds commands reach the job (as in test_daemon)
    extra = {"features": {"out_of_bounds": "clip"}}
    root, config = make_root(tmp_path, extra, base=base_checkpoint, mode="manual_control")
    log = root / "daemon.log"
    proc = start_daemon(root, config)
    try:
        wait_until(lambda: status(root).get("pid"), 30, "the daemon's status file", log)
        staging = tmp_path / "staging"
        synth(root, staging, "--episodes", "10", "--steps", "100", "--seed", "6", "--unsafe")
        unsafe = sorted(p.name for p in staging.iterdir())
        first = next_decision(root, staging, 10)
        assert first["verdict"] == "rejected", first
        named = [r for r in first["reasons"] if r.startswith("NOTE episodes")]
        assert named and any(n in named[0] for n in unsafe), first["reasons"]
        write_mode(root, "manual_control")
        for name in unsafe:
            cli(
                root,
                "episodes",
                "exclude",
                str(root / "rlds" / "episodes" / name),
                "--reason",
                "drives into people",
            )
        listing = cli(root, "episodes", "list", "--status", "excluded").stdout
        assert listing.count("drives into people") == len(unsafe)
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
        second = next_decision(root, staging, 22, exclude=(first["job_id"],))
        assert second["verdict"] == "promoted", second
        shown = json.loads(cli(root, "releases", "show", second["release"]).stdout)
        trained = {Path(e["path"]).name for e in shown["episodes"] if e["path"]}
        assert trained and not trained & set(unsafe)
        assert all((root / "rlds" / "episodes" / n).exists() for n in unsafe)  # left on disk
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
