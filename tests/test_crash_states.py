"""Every crash state a power cut may leave, for each operation that must survive one.

The operation runs for real under strace; tests.crashstates builds the states allowed by the
``ordered`` (ext4 data=ordered-like) and ``strict`` (anything unsynced may vanish) persistence
models, materialises each as a real tree and runs the real recovery path on it (see
tests/crashstates/model.py for the models, scenarios.py for the invariants). This is the reduced
set (at most a few strict states per crash point); ``bench/bench_crash_states.py`` runs the full
one. The last tests show the checker can fail: a broken atomic writer is found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crashstates.runner import run_scenario
from tests.crashstates.scenarios import SCENARIOS
from tests.crashstates.trace import have_strace

pytestmark = pytest.mark.skipif(
    not have_strace(), reason="strace not installed (apt install strace)"
)
REDUCED_COMBOS = 6


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_crash_state_recovers(tmp_path: Path, name: str) -> None:
    report = run_scenario(name, tmp_path, max_combos=REDUCED_COMBOS)
    assert report.events > 0, "nothing recorded: the trace did not see the operation"
    assert all(n > 0 for n in report.states.values()), report.states
    assert report.violations == []


@pytest.mark.parametrize(
    ("broken", "name"),
    [("no-dir-fsync", "promotion"), ("rename-before-fsync", "promotion"),
     ("rename-before-fsync", "status"), ("plain-mkdir", "promotion-first")],
)  # fmt: skip
def test_checker_finds_a_broken_atomic_writer(tmp_path: Path, broken: str, name: str) -> None:
    report = run_scenario(name, tmp_path, models=("strict",), broken=broken, max_combos=40)
    assert report.violations, f"{broken}: the checker found nothing in {report.states}"


def test_sigkill_states_of_a_broken_writer_look_fine(tmp_path: Path) -> None:
    """Why a power-cut model is needed: in program-order prefixes (what SIGKILL leaves) the
    rename-before-fsync writer is never caught; only the strict model finds it."""
    report = run_scenario("status", tmp_path, models=("ordered",), broken="rename-before-fsync")
    assert report.violations == []
