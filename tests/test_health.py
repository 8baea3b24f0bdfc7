"""The health window: the pure verdict (table), the rate test, and the watcher on real files
(mode file and runtime health file written by the test; a real store and ledger)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.health import (
    HealthConfig,
    HealthWatch,
    judge,
    legacy_baseline_note,
    minutes_to_detect_doubling,
    upper_tail_p,
)
from daemon.ledger import Ledger
from daemon.logs import get_logger
from daemon.store import AdapterStore
from tests.test_store import card, make_candidate, sample_manifest, write_legacy

CFG = HealthConfig(confirm_after_autonomous_s=600)


def rec(t: float, i: int = 0, e: int = 0, s: int = 0) -> dict[str, float]:
    return {"autonomous_s": t, "interventions": i, "estops": e, "safety_events": s}


@pytest.mark.parametrize(
    ("new", "old", "state"),
    [
        (rec(60, 0), rec(3600, 2), "probation"),
        (rec(600, 1), rec(3600, 6), "confirmed"),  # same rate, enough time
        (rec(600, 1), None, "confirmed"),  # no predecessor record
        (rec(60, 0, e=1), rec(3600, 0), "rollback"),  # e-stop: at once
        (rec(300, 8), rec(3600, 6), "rollback"),  # 8 in 5 min vs 6 an hour
        (rec(300, 2), rec(3600, 6), "probation"),  # worse but not significant yet
        (rec(300, 0, s=20), rec(3600, 0, s=10), "rollback"),  # safety events
        (rec(3600, 12), rec(3600, 6), "confirmed"),  # a doubling of 6/h: an hour is too short
        (rec(3600, 20), rec(3600, 6), "rollback"),  # more than tripled over an hour
        (rec(900, 3), rec(3600, 6), "confirmed"),  # doubled but too few events to tell
    ],
)
def test_verdicts(new, old, state) -> None:
    assert judge(new, old, CFG).state == state


def test_estop_rollback_is_configurable() -> None:
    cfg = HealthConfig(confirm_after_autonomous_s=600, rollback_on_estop=False)
    assert judge(rec(60, 0, e=1), rec(3600, 1, e=60), cfg).state == "probation"  # same rate


def test_rate_test_is_calibrated() -> None:
    # equal exposure, 10 vs 2 events: clearly worse; 3 vs 2: not
    assert upper_tail_p(10, 1.0, 2, 1.0) < 0.05
    assert upper_tail_p(3, 1.0, 2, 1.0) > 0.3
    assert upper_tail_p(0, 1.0, 5, 1.0) == 1.0
    assert minutes_to_detect_doubling(6.0, 10.0, CFG) is not None


def write(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj))


@pytest.fixture
def robot(tmp_path: Path):
    root = tmp_path / "robot"
    (root / "model").mkdir(parents=True)
    write(root / "model" / "manifest.json", sample_manifest())
    (root / "trainer.yaml").write_text(
        "health:\n  confirm_after_autonomous_s: 100\n  runtime_file: runtime_health.json\n"
        "  max_gap_s: 100\n"
    )
    cfg, _ = load_config(root / "trainer.yaml", str(root))
    cfg.state_dir.mkdir(parents=True)
    store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest)
    ledger = Ledger.open(cfg.ledger_path)
    clock = [1000.0]
    watch = HealthWatch(cfg, store, ledger, get_logger(), wall=lambda: clock[0])
    yield root, cfg, store, ledger, watch, clock
    ledger.close()


def drive(root: Path, watch: HealthWatch, clock: list[float], modes: list[tuple[str, float]]):
    """Hold each mode for its seconds, polling every second."""
    for mode, seconds in modes:
        write(root / ".robot_mode", {"mode": mode, "timestamp": clock[0]})
        for _ in range(int(seconds)):
            watch.poll()
            clock[0] += 1.0
    watch.poll()


def test_watcher_rolls_back_a_worse_release_and_tags_its_episodes(robot, tmp_path) -> None:
    root, cfg, store, ledger, watch, clock = robot
    r1 = store.promote(make_candidate(tmp_path, "a"), card()).id
    drive(root, watch, clock, [("autonomous", 50), ("manual_control", 2), ("autonomous", 50)])
    assert watch.state["releases"][r1]["interventions"] == 1
    assert watch.state["releases"][r1]["state"] == "observing"
    r2 = store.promote(make_candidate(tmp_path, "b"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    assert watch.snapshot()["state"] == "probation"
    ledger.record("/e/while-r2", status="valid", signature="s", now=clock[0], content_hash="h2")
    for _ in range(6):
        drive(root, watch, clock, [("autonomous", 3), ("manual_training", 1)])
    assert store.current().id == r1
    assert r2 in store.marks()["bad"]
    rec2 = watch.state["releases"][r2]
    assert rec2["state"] == "rolled_back" and "interventions" in rec2["reason"]
    assert ledger.counts()["excluded"] == 1
    assert any("recorded while" in r[2] for r in ledger.exclusions())
    # the state survives a restart of the watcher (the daemon's)
    again = HealthWatch(cfg, store, ledger, get_logger(), wall=lambda: clock[0])
    assert again.state["releases"][r2]["state"] == "rolled_back"


def test_watcher_confirms_a_same_rate_release_and_counts_runtime_events(robot, tmp_path):
    root, _cfg, store, _ledger, watch, clock = robot
    store.promote(make_candidate(tmp_path, "a"), card())
    runtime = root / "runtime_health.json"
    write(runtime, {"safety_clamps": 5, "safety_blocks": 0, "errors": 0})  # the reference
    drive(root, watch, clock, [("autonomous", 60), ("manual_control", 2)])
    write(runtime, {"safety_clamps": 6, "safety_blocks": 0, "errors": 0})
    drive(root, watch, clock, [("autonomous", 60)])
    r2 = store.promote(make_candidate(tmp_path, "b"), card()).id
    drive(root, watch, clock, [("autonomous", 60), ("manual_control", 2)])
    write(runtime, {"safety_clamps": 6, "safety_blocks": 1, "errors": 0})
    drive(root, watch, clock, [("autonomous", 45)])
    rec2 = watch.state["releases"][r2]
    assert rec2["state"] == "confirmed", rec2
    assert rec2["safety_events"] == 1 and rec2["interventions"] == 1
    # a runtime restart (counters go down) counts the new values, not a negative increase
    write(root / "runtime_health.json", {"safety_clamps": 1, "safety_blocks": 0, "errors": 0})
    drive(root, watch, clock, [("autonomous", 2)])
    assert watch.state["releases"][r2]["safety_events"] == 2
    assert store.current().id == r2


def test_watcher_rolls_back_on_an_emergency_stop(robot, tmp_path) -> None:
    root, _cfg, store, _ledger, watch, clock = robot
    r1 = store.promote(make_candidate(tmp_path, "a"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    r2 = store.promote(make_candidate(tmp_path, "b"), card()).id
    drive(root, watch, clock, [("autonomous", 5), ("emergency_stop", 1)])
    assert store.current().id == r1
    assert store.marks()["bad"][r2]["reason"].startswith("health window: emergency stop")


def test_a_rollback_killed_before_the_state_was_saved_is_recorded_on_restart(robot, tmp_path):
    root, cfg, store, ledger, watch, clock = robot
    r1 = store.promote(make_candidate(tmp_path, "a"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    r2 = store.promote(make_candidate(tmp_path, "b"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    assert watch.snapshot()["state"] == "probation"
    watch._saved_key = None
    watch._save()
    # the store's rollback happened, then SIGKILL before health.json was rewritten
    store.rollback(mark_bad="health window: interventions worse")
    again = HealthWatch(cfg, store, ledger, get_logger(), wall=lambda: clock[0])
    again.poll()
    assert again.state["releases"][r2]["state"] == "rolled_back"
    assert again.state["releases"][r2]["rolled_back_to"] == r1


def test_the_first_release_after_a_legacy_adapter_has_a_mandatory_window(robot, tmp_path):
    root, cfg, store, ledger, _watch, clock = robot
    off = cfg.model_copy(update={"health": cfg.health.model_copy(update={"enabled": False})})
    watch = HealthWatch(off, store, ledger, get_logger(), wall=lambda: clock[0])
    write_legacy(root / "model", "torch-zip")
    legacy = store.adopt_legacy()
    assert legacy is not None and legacy.legacy
    drive(root, watch, clock, [("idle", 1)])
    r2 = store.promote(make_candidate(tmp_path, "a"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    rec = watch.state["releases"][r2]
    assert rec["state"] == "probation" and rec["mandatory"], rec
    r3 = store.promote(make_candidate(tmp_path, "b"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    assert watch.state["releases"][r3]["state"] == "observing"  # window off, not after legacy
    note = legacy_baseline_note(legacy)
    assert note and note[0].startswith("NOTE baseline") and "mandatory" in note[0]
    assert legacy_baseline_note(store.current()) == []


@pytest.mark.parametrize(
    "damage",
    [b'{"releases": {"r2-', b'{"releases": ["not", "records"]}', b"\xff\xfe garbage"],
    ids=["torn", "wrong-shape", "not-utf8"],
)
def test_a_damaged_health_state_keeps_the_release_on_probation(robot, tmp_path, damage):
    """Fail closed: an unreadable state/health.json is never a fresh start (which would make
    the release on probation "observing", beyond any automatic verdict)."""
    root, cfg, store, ledger, watch, clock = robot
    r1 = store.promote(make_candidate(tmp_path, "a"), card()).id
    drive(root, watch, clock, [("idle", 1)])
    r2 = store.promote(make_candidate(tmp_path, "b"), card()).id
    drive(root, watch, clock, [("autonomous", 3)])
    assert watch.snapshot()["state"] == "probation"
    path = cfg.state_dir / "health.json"
    path.write_bytes(damage)  # by hand, or a card that returned garbage
    again = HealthWatch(cfg, store, ledger, get_logger(), wall=lambda: clock[0])
    drive(root, again, clock, [("autonomous", 3)])
    snap = again.snapshot()
    assert snap["release"] == r2 and snap["state"] == "probation", snap
    assert "health state unreadable" in snap["reason"] and "unreadable" in snap["error"]
    assert (cfg.state_dir / "health.json.damaged").read_bytes() == damage  # evidence kept
    # the verdicts still work: an e-stop rolls it back
    drive(root, again, clock, [("emergency_stop", 1)])
    assert store.current().id == r1 and r2 in store.marks()["bad"]
    # and the rewritten state is whole again: a third start reads it as it is
    third = HealthWatch(cfg, store, ledger, get_logger(), wall=lambda: clock[0])
    assert third.damaged is None and third.state["releases"][r2]["state"] == "rolled_back"


def test_a_missing_health_state_is_a_fresh_start(robot, tmp_path) -> None:
    root, cfg, store, ledger, _watch, clock = robot
    store.promote(make_candidate(tmp_path, "a"), card())
    store.promote(make_candidate(tmp_path, "b"), card())
    fresh = HealthWatch(cfg, store, ledger, get_logger(), wall=lambda: clock[0])
    assert fresh.damaged is None
    drive(root, fresh, clock, [("idle", 1)])
    assert fresh.snapshot()["state"] == "observing"
