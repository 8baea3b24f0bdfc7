"""Run one scenario end to end: set up, trace, enumerate crash states, check each."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.crashstates.model import MAX_COMBOS, Recording, materialise
from tests.crashstates.scenarios import BROKEN, DRIVERS, PRELUDE, REPO, SCENARIOS, Expect
from tests.crashstates.trace import parse_log, run_traced

MODELS = ("ordered", "strict")


@dataclass
class Report:
    """Distinct crash states checked per model, the events recorded, and every violation."""

    scenario: str
    events: int = 0
    states: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_scenario(
    name: str,
    workdir: Path,
    models: tuple[str, ...] = MODELS,
    broken: str | None = None,
    max_combos: int = MAX_COMBOS,
) -> Report:
    """Check every crash state of scenario ``name`` (``max_combos``: see Recording.states)."""
    t0 = time.monotonic()
    scenario = SCENARIOS[name]
    root = Path(workdir).absolute() / "root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    scenario.setup(root, name)
    before = scenario.facts(root)
    recording = Recording(root)
    env = {**os.environ, "CRASH_BROKEN_CODE": BROKEN[broken] if broken else ""}
    log = Path(workdir) / f"{name}.strace"
    run_traced(PRELUDE + DRIVERS[scenario.driver], [str(REPO), str(root)], log, env)
    after = scenario.facts(root)
    recording.replay(parse_log(log))
    report = Report(name, events=len(recording.events))
    expect = Expect(before, after)
    for model in models:
        count = 0
        for k, nodes in recording.states(model, max_combos=max_combos):
            materialise(nodes, recording.root_ino, root)
            count += 1
            for problem in scenario.check(root, expect):
                report.violations.append(f"{name}/{model} after event {k}: {problem}")
        report.states[model] = count
    report.seconds = time.monotonic() - t0
    return report
