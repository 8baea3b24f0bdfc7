"""The simulated robot the VM suite installs against, prepared on the host at native speed.

What continuonos would have put on a robot before the trainer is installed: a base policy
pretrained on "factory" episodes, a manifest naming it, an idle mode file; plus batches of
episodes the robot records later (with a steering bias, so that an adapter can improve on the
base), which the in-VM checks drop into the episodes folder as another user.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon.demo import manifest_template

VM_ROOT = Path("/opt/continuonos/brain")
# batch1: 20 episodes, 6 of them held out by id hash: the promotion rule wants >= 3 held-out
# episodes of evidence. name: (episodes, seed)
BATCHES = {"batch1": (20, 2), "batch2": (4, 3)}


def cli(root: Path, *args: str) -> None:
    """A continuon-trainer verb on the host, in a child (torch stays out of pytest)."""
    cmd = [sys.executable, "-m", "daemon.cli", "--root", str(root), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


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
        cli(
            out,
            "synth",
            "--out",
            str(out / "batches" / name),
            "--episodes",
            str(count),
            "--seed",
            str(seed),
            "--steering-bias",
            "0.3",
        )
    return root
