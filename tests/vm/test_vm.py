"""The real systemd suite: one boot of a Debian 12 VM runs every check of checks/vm_checks.py
against the real install path, and each check becomes one test here.

The image (tests/vm/image.sh: mmdebstrap + the dependencies baked in) is cached outside the
repo; `.ci/run` builds it before `make test`. Per run only the project's own wheel goes in,
through deploy/install.sh --wheelhouse. Skips, saying why, when the image cannot be had.

CONTINUON_VMTEST_UNIT=simple|mdwe|no-rwpaths installs a deliberately broken unit instead of the
shipped one, to show that a named check fails (see UNIT_VARIANTS).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vm.robot import VM_ROOT, build_robot

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VM_TIMEOUT_S = 4800  # the guest's limit for all checks; TCG on a loaded 2-core host is slow


def load_checks() -> list[str]:
    spec = importlib.util.spec_from_file_location("vm_checks", HERE / "checks" / "vm_checks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CHECKS


CHECKS = load_checks()

# Broken units, each expected to fail the check named beside it.
UNIT_VARIANTS = {
    "simple": (("Type=notify", "Type=simple"), "enable --now: active only after READY=1"),
    "mdwe": (
        (
            "SystemCallArchitectures=native",
            "MemoryDenyWriteExecute=yes\nSystemCallArchitectures=native",
        ),
        "a job trains on episodes dropped by another continuon user and promotes",
    ),
    "no-rwpaths": (
        ("ReadWritePaths=-/opt/continuonos/brain/model", ""),
        "a job trains on episodes dropped by another continuon user and promotes",
    ),
}


def ensure_image() -> Path:
    """The cached image folder, built if missing; skip with image.sh's reason if it cannot be."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86 mmdebstrap)")
    env = {**os.environ, "VMTEST_NO_APT": os.environ.get("VMTEST_NO_APT", "1")}
    done = subprocess.run(
        [str(HERE / "image.sh")], capture_output=True, text=True, env=env, timeout=1800
    )
    reason = (done.stderr.strip().splitlines() or ["image.sh failed"])[-1]
    if done.returncode == 3:  # this machine cannot build it (not root, tools missing)
        pytest.skip(f"no VM image: {reason}")
    if done.returncode != 0:  # qemu is here and the image should be: a failure, not a skip
        pytest.fail(f"tests/vm/image.sh failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def project_wheelhouse(dest: Path) -> None:
    """Only the project's wheel (the image has every dependency) and its SHA256SUMS."""
    subprocess.run(
        [str(REPO / "deploy" / "wheelhouse.sh"), "--out", str(dest), "--project-only"],
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )


def stage_share(share: Path) -> None:
    src = share / "src"
    src.mkdir(parents=True)
    for name in ("deploy", "configs"):
        shutil.copytree(REPO / name, src / name)
    for name in ("README.md", "constraints.txt"):
        shutil.copy(REPO / name, src / name)
    variant = os.environ.get("CONTINUON_VMTEST_UNIT")
    if variant:
        (old, new), expected = UNIT_VARIANTS[variant]
        (share / "stop_after").write_text(expected)  # no need to run past the check that fails
        unit = src / "deploy" / "systemd" / "continuon-trainer.service"
        text = unit.read_text()
        assert old in text, f"variant {variant}: {old!r} not in the unit"
        unit.write_text(text.replace(old, new, 1))
    project_wheelhouse(share / "wheelhouse")
    build_robot(share)
    shutil.copy(HERE / "trainer-vm.yaml", share / "trainer-vm.yaml")
    shutil.copy(HERE / "checks" / "vm_checks.py", share / "vm_checks.py")
    shutil.copy(HERE / "checks" / "run.sh", share / "run.sh")


def native_decision(share: Path, work: Path) -> str:
    """The in-VM training scenario, natively first (seconds): batch1 on a copy of the robot,
    one cycle with the VM's config. A candidate the rule refuses here would be refused in the
    VM after many minutes; fail at once with the rule's reasons instead."""
    root = work / "robot"
    shutil.copytree(share / "robot", root, symlinks=True)
    (root / "model" / "adapters").mkdir(parents=True, exist_ok=True)
    (root / ".robot_mode").write_text(json.dumps({"mode": "idle", "timestamp": time.time()}))
    for ep in (share / "batches" / "batch1").iterdir():
        shutil.copytree(ep, root / "rlds" / "episodes" / ep.name)
    text = (share / "trainer-vm.yaml").read_text()
    text = text.replace(str(VM_ROOT), str(root)).replace("/var/lib/continuon-trainer", str(work))
    (work / "trainer.yaml").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--config", str(work / "trainer.yaml"), "once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTINUON_TRAINER")},
    )
    return done.stdout


@pytest.fixture(scope="session")
def vm_results(tmp_path_factory) -> dict[str, dict]:
    image = ensure_image()
    share = tmp_path_factory.mktemp("vmshare")
    stage_share(share)
    log = native_decision(share, tmp_path_factory.mktemp("native"))
    if '"candidate_promoted"' not in log:
        pytest.fail(f"the VM scenario's candidate is not promoted even natively:\n{log[-4000:]}")
    t0 = time.monotonic()
    done = subprocess.run(
        [str(HERE / "run-vm.sh"), str(image), str(share), str(VM_TIMEOUT_S)],
        capture_output=True,
        text=True,
        timeout=VM_TIMEOUT_S + 600,
    )
    out = share / "out"
    keep = os.environ.get("CONTINUON_VMTEST_KEEP")
    if keep:
        shutil.copytree(out, keep, dirs_exist_ok=True)
    print(f"\nVM run: rc {done.returncode} in {time.monotonic() - t0:.0f}s; results in {out}")
    results = out / "results.json"
    if not results.exists():
        console = out / "console.log"
        tail = console.read_text(errors="replace")[-4000:] if console.exists() else ""
        pytest.fail(f"the VM gave no results (rc {done.returncode}): {done.stderr[-2000:]}\n{tail}")
    return {r["name"]: r for r in json.loads(results.read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKS)
def test_in_vm(vm_results: dict[str, dict], name: str) -> None:
    variant = os.environ.get("CONTINUON_VMTEST_UNIT")
    r = vm_results.get(name)
    if variant:
        expected = UNIT_VARIANTS[variant][1]
        if name != expected:
            pytest.skip(f"broken unit {variant!r}: only {expected!r} is expected to catch it")
        assert r is not None, f"{name!r} did not run"
        assert not r["ok"], f"the broken unit {variant!r} was NOT caught: {r['detail']}"
        return
    assert r is not None, f"{name!r} did not run (an earlier step failed; see run.log)"
    assert r["ok"], r["detail"]
