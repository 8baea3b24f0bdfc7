"""``continuon-trainer demo``: the camera pilot end to end through the real daemon.

Runs the verb ``make demo`` runs, at a smaller frame size and fewer episodes (14 shifted: the
id hash holds 4 out) so it stays quick on two cores (the code path is the one of the default
60x80): a base from a first drive, a
shifted drive into the watched folder, the job preempted once by the mode file and resumed,
and a promoted adapter whose held-out steering error is at least halved. The outcome table
must show the rule's checks with their bounds.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.daemon_harness import CLI, REPO

pytestmark = pytest.mark.slow


def test_camera_demo_promotes_an_adapter_that_halves_steering_error(tmp_path: Path) -> None:
    root = tmp_path / "demo-root"
    args = ["demo", "--demo-root", str(root), "--frame-size", "30x40"]
    args += ["--first-episodes", "8", "--shifted-episodes", "14", "--pretrain-steps", "300"]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900, cwd=REPO)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "job preempted in" in out and "job resumed from its checkpoint" in out
    resumed = re.search(r"training steps \(resumed from\)\s+(\d+) \((\d+)\)", out)
    assert resumed and int(resumed.group(2)) > 0, out  # resumed mid-training, not restarted
    assert re.search(r"^\s+decision\s+promoted$", out, re.M), out
    cut = re.search(r"steering error, base -> adapter\s+([\d.]+) -> ([\d.]+) \((\d+)% cut\)", out)
    assert cut, out
    base, cand = float(cut.group(1)), float(cut.group(2))
    assert cand <= 0.5 * base, (base, cand)  # on held-out episodes the job never saw
    # The rule's table: every check with its estimate, bound, limit and verdict.
    table = out[out.index("promotion rule:") :]
    assert re.search(r"improvement\s+\+[\d.]+%\s+\+[\d.]+%\s+>= \+2\.0%\s+ok", table), table
    assert re.search(r"name:steering\s+-[\d.]+%\s+-[\d.]+%\s+<= \+5\.0%\s+ok", table), table
    assert "FAIL" not in table
    # The demo's root is self-contained: a second run starts afresh, a foreign folder is refused.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = subprocess.run(
        [*CLI, "demo", "--demo-root", str(tmp_path / "mine")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert refused.returncode == 1 and "is not a demo root" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
