"""The Prometheus textfile: exact exposition format, parsed by prometheus_client's parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import render, write_textfile


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


FACTS = {
    "updated_at": 1700000000.5,
    "gate": {"open": False, "reasons": ['mode manual_control (need "idle")', "battery 30%"]},
    "blocked": None,
    "episodes": {"settling": 1, "valid": 9, "trainable": 6, "held_out": 3, "rejected": 2},
    "job": {"phase": "training", "step": 40, "max_steps": 300, "loss": 0.125, "elapsed_s": 3.5},
    "jobs": {
        "status": {"done": 2, "preempted": 1},
        "decision": {"promoted": 1, "rejected": 1},
        "last_decided_at": 1699999000.0,
    },
    "release": {"id": "r-0002", "generation": 2, "metrics": {"mse": 0.01, "note": "text"}},
    "health": {"state": "watching"},
}


def test_every_family_parses_with_its_values():
    got = samples(render(FACTS))
    p = "continuon_trainer_"
    assert got[(p + "gate_open", ())] == 0
    assert got[(p + "gate_closed_reason", (("check", "mode"),))] == 1
    assert got[(p + "gate_closed_reason", (("check", "battery"),))] == 1
    assert got[(p + "episodes", (("state", "trainable"),))] == 6
    assert got[(p + "episodes", (("state", "settling"),))] == 1
    assert got[(p + "job_phase", (("phase", "training"),))] == 1
    assert got[(p + "job_phase", (("phase", "evaluating"),))] == 0
    assert got[(p + "job_step", ())] == 40 and got[(p + "job_loss", ())] == 0.125
    assert got[(p + "preemptions_total", ())] == 1
    assert got[(p + "decisions_total", (("verdict", "promoted"),))] == 1
    assert got[(p + "release_generation", (("release", "r-0002"),))] == 2
    assert got[(p + "release_metric", (("name", "mse"),))] == 0.01
    assert (p + "release_metric", (("name", "note"),)) not in got  # numbers only
    assert got[(p + "health_state", (("state", "watching"),))] == 1
    assert got[(p + "last_successful_cycle_timestamp_seconds", ())] == 1699999000.0


def test_idle_daemon_file_has_no_job_samples_and_parses():
    text = render({"gate": {"open": True, "reasons": []}, "episodes": {}, "updated_at": 1.0})
    got = samples(text)
    assert got[("continuon_trainer_job_running", ())] == 0
    assert ("continuon_trainer_job_step", ()) not in got
    assert text.endswith("\n") and "# TYPE continuon_trainer_decisions counter" in text


def test_labels_are_escaped():
    text = render({"release": {"id": 'a"b\\c\nd', "generation": 1}})
    got = samples(text)
    assert got[("continuon_trainer_release_generation", (("release", 'a"b\\c\nd'),))] == 1


def test_written_atomically_and_world_readable(tmp_path: Path):
    path = tmp_path / "continuon_trainer.prom"
    write_textfile(path, FACTS)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    assert samples(path.read_text())


def test_the_daemon_writes_the_file_and_it_changes_as_a_job_runs(tmp_path: Path):
    from tests.daemon_harness import cli, make_root, start_daemon, stop, synth, wait_until

    prom = tmp_path / "textfile" / "continuon_trainer.prom"
    prom.parent.mkdir()
    root, config = make_root(
        tmp_path,
        extra={
            "metrics": {"textfile": str(prom)},
            # Long enough to be seen running on a quiet machine (600 steps took 3.5 s).
            "job": {"max_steps": 20000, "max_wall_time_s": 15},
        },
        mode="idle",
    )
    cli(root, "--config", str(config), "base", "init")
    synth(root, root / "rlds" / "episodes", "--episodes", "8", "--steps", "60", "--seed", "3")
    log = root / "daemon.log"
    seen: list[dict] = []

    def read() -> dict:
        try:
            got = samples(prom.read_text())
        except (OSError, ValueError):
            return {}
        seen.append(got)
        return got

    proc = start_daemon(root, config)
    try:
        running = wait_until(
            lambda: (
                (g := read()).get(("continuon_trainer_job_running", ())) == 1
                and g.get(("continuon_trainer_job_step", ()), 0) > 0
                and g
            ),
            120,
            "a running job in the textfile",
            log,
        )
        assert running[("continuon_trainer_gate_open", ())] == 1
        assert running[("continuon_trainer_episodes", (("state", "trainable"),))] > 0
        done = wait_until(
            lambda: (
                (g := read()).get(("continuon_trainer_job_running", ())) == 0
                and any(k[0] == "continuon_trainer_decisions_total" for k in g)
                and g
            ),
            180,
            "a decision in the textfile",
            log,
        )
    finally:
        stop(proc)
    verdicts = {
        k[1][0][1]: v for k, v in done.items() if k[0] == "continuon_trainer_decisions_total"
    }
    assert sum(verdicts.values()) == 1
    steps = [g.get(("continuon_trainer_job_step", ())) for g in seen]
    assert len({s for s in steps if s}) >= 1  # the step moved while the job ran
    if verdicts.get("promoted"):
        assert done[("continuon_trainer_last_successful_cycle_timestamp_seconds", ())] > 0
