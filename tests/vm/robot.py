"""The simulated robot the VM suite installs against, prepared on the host at native speed.

What continuonos would have put on a robot before the trainer is installed: a base policy
pretrained on "factory" episodes, a manifest naming it, an idle mode file; plus batches of
episodes the robot records later, which the in-VM checks drop into the episodes folder as
another user.

The later batches carry a shift an adapter can learn on BOTH action names, well inside their
bounds: the steering servo was recalibrated (recorded steering x0.7) and the car drives slower
(throttle x0.8). The promotion rule (safety/rule.py) judges every name and the clamp rate
separately, so a shift that leaves one name untouched (its error is then within noise) or pushes
steering to its bound (the candidate then clamps more often than the base) is refused on the
few held-out episodes a short job under emulation can afford. With this one, 300 steps give a
candidate ~95 % better on both names, clamping nowhere (checked natively by test_vm.py before
the boot).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon.demo import manifest_template
from daemon.ledger import split_for
from trainer_core.synth import write_synthetic_episodes

VM_ROOT = Path("/opt/continuonos/brain")
# name: (episodes, seed). batch1 is judged: its seed gives 6 of 20 held out at the default
# eval_fraction (the rule wants >= 3); batch2 only has to start the job the kill checks use.
BATCHES = {"batch1": (20, 5), "batch2": (4, 3)}
SHIFT = {"steering_scale": 0.7, "speed": 0.8}
EVAL_FRACTION = 0.25  # configs/default.yaml's job.eval_fraction; trainer-vm.yaml keeps it
MIN_HELD_OUT = 5


def cli(root: Path, *args: str) -> None:
    """A continuon-trainer verb on the host, in a child (torch stays out of pytest)."""
    cmd = [sys.executable, "-m", "daemon.cli", "--root", str(root), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


def held_out(paths: list[Path]) -> int:
    """How many of these episodes the daemon will hold out (the split is a hash of the id)."""
    return sum(split_for(p.name, EVAL_FRACTION) == "eval" for p in paths)


def build_robot(out: Path) -> Path:
    """``out/robot`` (the future /opt/continuonos/brain) and ``out/batches/<name>``."""
    root = out / "robot"
    (root / "rlds" / "episodes").mkdir(parents=True)
    cli(out, "synth", "--out", str(out / "factory"), "--episodes", "16", "--seed", "1")
    cli(root, "base", "pretrain", "--episodes", str(out / "factory"), "--steps", "1500")
    manifest = manifest_template(VM_ROOT)
    manifest["notes"] = "Written by the VM suite's simulated robot."
    (root / "model" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, (count, seed) in BATCHES.items():
        paths = write_synthetic_episodes(out / "batches" / name, count, 100, seed, **SHIFT)
        if name == "batch1" and held_out(paths) < MIN_HELD_OUT:
            raise AssertionError(f"batch1 holds out {held_out(paths)} episodes, want >= 5")
    return root
