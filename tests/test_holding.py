"""Why the daemon is not training: each reason reaches the log once, at its level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.holding import HoldLog, ProgressLog, blocked_hold, gate_hold, trigger_hold
from tests.daemon_harness import cli, make_root, start_daemon, stop, synth, wait_until


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


@pytest.mark.parametrize(
    ("hold", "kind", "level"),
    [
        (
            blocked_hold("no base policy at /x: run `continuon-trainer base init`"),
            "no_base",
            "warning",
        ),
        (
            blocked_hold("the manifest names model 'gemma-3n' but policy.model_name is 'p'"),
            "manifest_model",
            "warning",
        ),
        (
            blocked_hold("adapter store needs attention: manifest.json: bad"),
            "store_unusable",
            "error",
        ),
        (
            blocked_hold("no usable train episodes (4 given; a: no observation.speed)"),
            "episodes_unusable",
            "warning",
        ),
        (trigger_hold("3 trainable episodes (need 8)"), "too_few_episodes", "info"),
        (trigger_hold("3 trainable episodes (need 8)", settling=2), "settling", "info"),
        (trigger_hold("0 new episodes (need 4)"), "waiting_for_new_episodes", "info"),
        (trigger_hold("backing off after 2 failed job(s): 50 s left"), "backing_off", "warning"),
        (trigger_hold("cooldown: 30 s left"), "cooldown", "info"),
        (gate_hold("closed: teleop (manual_control)"), "gate_closed", "info"),
    ],
)
def test_each_reason_has_a_kind_and_a_fitting_level(hold, kind, level):
    assert (hold.kind, hold.level) == (kind, level)


def test_a_reason_is_said_once_and_again_when_it_changes():
    rec = Recorder()
    holds = HoldLog(rec)
    for left in (30, 29, 28):  # a countdown is not a change
        holds.update(trigger_hold(f"cooldown: {left} s left"))
    holds.update(gate_hold("closed: teleop"))
    holds.update(gate_hold("closed: teleop; battery 30 %"))  # the gate logs its own changes
    holds.update(trigger_hold("3 trainable episodes (need 8)"))
    holds.update(trigger_hold("3 trainable episodes (need 8)"))
    holds.update(trigger_hold("4 trainable episodes (need 8)"))
    holds.update(None)  # a job started
    holds.update(trigger_hold("4 trainable episodes (need 8)"))
    assert [(lvl, kw["kind"]) for lvl, _e, kw in rec.lines] == [
        ("info", "cooldown"),
        ("info", "gate_closed"),
        ("info", "too_few_episodes"),
        ("info", "too_few_episodes"),
        ("info", "too_few_episodes"),
    ]
    assert {e for _l, e, _k in rec.lines} == {"not_training"}


def test_progress_line_every_n_seconds_with_rate_and_eta():
    rec = Recorder()
    prog = ProgressLog(every_s=10)
    assert not prog.maybe_log(rec, "r1", 0, 100, None, "train", 0.0, 32)
    assert not prog.maybe_log(rec, "r1", 5, 100, 0.5, "train", 5.0, 32)
    assert prog.maybe_log(rec, "r1", 20, 100, 0.25, "train", 10.0, 32)
    _level, event, kw = rec.lines[0]
    assert event == "job_progress" and kw["step"] == 20 and kw["loss"] == 0.25
    assert kw["samples_per_s"] == 64.0 and kw["eta_s"] == 40


def journal_lines(log: Path) -> list[tuple[int, dict]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("<") and ">" in line[:4]:
            prio, _, rest = line[1:].partition(">")
            try:
                out.append((int(prio), json.loads(rest)))
            except ValueError:
                continue
    return out


def holds_in(log: Path, kind: str) -> list[int]:
    return [
        p for p, e in journal_lines(log) if e.get("event") == "not_training" and e["kind"] == kind
    ]


def run_until(root: Path, config: Path, kind: str, seconds: float = 3.0) -> Path:
    """The daemon until ``kind`` was said, and a little longer (it must not repeat)."""
    log = root / "daemon.log"
    log.unlink(missing_ok=True)
    proc = start_daemon(root, config)
    try:
        wait_until(lambda: holds_in(log, kind), 60, f"not_training {kind}", log)
        import time

        time.sleep(seconds)
    finally:
        stop(proc)
    return log


def test_why_not_training_reaches_the_journal_once_at_its_level(tmp_path):
    root, config = make_root(tmp_path, base=None, mode="idle")
    synth(root, root / "rlds" / "episodes", "--episodes", "4", "--steps", "20", "--seed", "9")
    log = run_until(root, config, "no_base")
    assert holds_in(log, "no_base") == [4]  # once, a warning: an operator must act

    cli(root, "--config", str(config), "base", "init")
    manifest = root / "model" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model_name": "gemma-3n"}))
    log = run_until(root, config, "manifest_model")
    assert holds_in(log, "manifest_model") == [4]
    assert not [e for _p, e in journal_lines(log) if e.get("event") == "job_started"]

    from daemon.demo import manifest_template

    manifest.write_text(json.dumps(manifest_template(root)))
    (root / ".robot_mode").write_text(json.dumps({"mode": "manual_control", "timestamp": 1.0}))
    log = run_until(root, config, "gate_closed")
    assert holds_in(log, "gate_closed") == [6]  # teleop is normal operation: info
    gate = [p for p, e in journal_lines(log) if e.get("event") == "gate_closed"]
    assert gate and set(gate) == {6}
    assert not [e for p, e in journal_lines(log) if p <= 4], "no warnings in normal operation"
