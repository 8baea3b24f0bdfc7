"""deploy/install.sh --wheelhouse: the offline install refuses a damaged or incomplete wheelhouse.

The checks run in ``--dry-run`` too (they only read), so most cases need no root. The
missing-dependency case runs pip for real, offline, into a venv under a temporary prefix: it
stops at pip, before anything outside the prefix is touched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
PROJECT_WHEEL = "continuon_trainer-0.1.0-py3-none-any.whl"


def write_sums(folder: Path) -> None:
    """SHA256SUMS in sha256sum's own format, for every wheel in ``folder``."""
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(folder.glob("*.whl"))
    ]
    (folder / "SHA256SUMS").write_text("".join(lines))


def fake_wheelhouse(tmp_path: Path) -> Path:
    """A wheelhouse whose checks pass: two wheels (contents do not matter to the checks)."""
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    (wh / PROJECT_WHEEL).write_bytes(b"project wheel bytes")
    (wh / "dep-1.0-py3-none-any.whl").write_bytes(b"dependency wheel bytes")
    write_sums(wh)
    return wh


def install(*args: str | Path, dry_run: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(INSTALL), *(["--dry-run"] if dry_run else []), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_good_wheelhouse_installs_with_no_index(tmp_path: Path) -> None:
    wh = fake_wheelhouse(tmp_path)
    done = install("--wheelhouse", wh)
    assert done.returncode == 0, done.stderr
    pip_line = next(line for line in done.stdout.splitlines() if " pip install " in line)
    assert "--no-index" in pip_line and f"--find-links {wh}" in pip_line
    assert "PIP_CONFIG_FILE=/dev/null" in pip_line, "a pip config must not add other sources"
    assert pip_line.endswith(str(wh / PROJECT_WHEEL))


def test_reinstall_replaces_the_project_even_at_the_same_version(tmp_path: Path) -> None:
    """A rebuilt wheel with an unchanged version number must not leave the old code."""
    wh = fake_wheelhouse(tmp_path)
    done = install("--wheelhouse", wh)
    assert done.returncode == 0, done.stderr
    pips = [line for line in done.stdout.splitlines() if " pip install " in line]
    assert len(pips) == 2, pips
    assert "--no-deps --force-reinstall" in pips[1] and "--no-index" in pips[1]
    assert pips[1].endswith(str(wh / PROJECT_WHEEL))


def damage(wh: Path) -> None:
    (wh / "dep-1.0-py3-none-any.whl").write_bytes(b"dependency wheel bytes, changed")


def drop(wh: Path) -> None:
    (wh / "dep-1.0-py3-none-any.whl").unlink()


def add_unlisted(wh: Path) -> None:
    (wh / "stray-2.0-py3-none-any.whl").write_bytes(b"not in the list")


def drop_sums(wh: Path) -> None:
    (wh / "SHA256SUMS").unlink()


def drop_project(wh: Path) -> None:
    (wh / PROJECT_WHEEL).unlink()
    write_sums(wh)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (damage, "checksum mismatch for dep-1.0-py3-none-any.whl"),
        (drop, "dep-1.0-py3-none-any.whl is listed in SHA256SUMS but missing"),
        (add_unlisted, "stray-2.0-py3-none-any.whl is not listed in SHA256SUMS"),
        (drop_sums, "SHA256SUMS is missing"),
        (drop_project, "exactly one continuon_trainer wheel (found 0)"),
    ],
    ids=["checksum-mismatch", "missing-wheel", "unlisted-wheel", "no-sums", "no-project"],
)
def test_bad_wheelhouse_is_refused_before_pip(tmp_path: Path, breakage, message: str) -> None:
    wh = fake_wheelhouse(tmp_path)
    breakage(wh)
    done = install("--wheelhouse", wh)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert "pip install" not in done.stdout, "pip must not run on an unverified wheelhouse"


@pytest.mark.skipif(os.geteuid() != 0, reason="a real (non-dry) install.sh run needs root")
def test_missing_dependency_is_named(tmp_path: Path) -> None:
    """Only the project's wheel: pip --no-index cannot find a dependency, and install.sh says
    which one, instead of leaving the operator with pip's resolver output."""
    wh = tmp_path / "wheelhouse"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wh), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    write_sums(wh)
    prefix = tmp_path / "prefix"
    done = install(
        "--wheelhouse",
        wh,
        "--prefix",
        prefix,
        "--python",
        shutil.which("python3.11") or sys.executable,
        dry_run=False,
    )
    assert done.returncode != 0
    assert f"the wheelhouse {wh} has no wheel for" in done.stderr, done.stderr[-2000:]
    assert "rebuild it with deploy/wheelhouse.sh" in done.stderr


# ------------------------------------------------------------- deploy/wheelhouse_check.py


def load_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "wheelhouse_check", REPO / "deploy" / "wheelhouse_check.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    """A real wheel file (a zip with its METADATA) requiring ``requires``."""
    import zipfile

    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")


TORCH_291 = (
    'nvidia-cudnn-cu12==9.10; platform_system == "Linux" and platform_machine == "x86_64"',
)
TORCH_213 = ('nvidia-cudnn-cu13==9.20; platform_system == "Linux"',)
# (case, wheels as (name, version, requires...), machine, expected problems as substrings)
CHECK_CASES = [
    ("complete, one wheel to spare", [("torch", "2.9.1"), ("sympy", "1.14.0")], "aarch64", []),
    ("x86-only CUDA markers on a Pi", [("torch", "2.9.1", *TORCH_291)], "aarch64", []),
    (
        "the same torch on x86_64",
        [("torch", "2.9.1", *TORCH_291)],
        "x86_64",
        ["torch needs nvidia-cudnn-cu12==9.10", "a CUDA build"],
    ),
    ("a CUDA build for aarch64", [("torch", "2.13.0", *TORCH_213)], "aarch64", ["a CUDA build"]),
    ("missing dependency", [], "aarch64", ["continuon-trainer needs torch>=2.1: no wheel for it"]),
    (
        "version that does not fit",
        [("torch", "2.0.0")],
        "aarch64",
        ["continuon-trainer needs torch>=2.1: the wheelhouse has torch 2.0.0"],
    ),
    (
        "an extra's requirement is followed",
        [("torch", "2.9.1", 'sympy; extra == "opt"')],
        "aarch64",
        ["torch needs sympy", "no wheel for it"],
    ),
]
PROJECT_REQUIRES = ("torch>=2.1", "torch[opt]>=2.1", 'pytest; extra == "dev"')


@pytest.mark.parametrize(
    "case,wheels,machine,expected", CHECK_CASES, ids=[c[0] for c in CHECK_CASES]
)
def test_wheelhouse_check(tmp_path: Path, case, wheels, machine, expected) -> None:
    check = load_check()
    wheel(tmp_path, "continuon_trainer", "0.1.0", *PROJECT_REQUIRES)
    for name, version, *requires in wheels:
        wheel(tmp_path, name, version, *requires)
    found = check.problems(tmp_path, machine, "3.11")
    if not expected:
        assert found == [], found
    for want in expected:
        assert any(want in line for line in found), (want, found)
    # the project's dev extra (pytest) is never required on the robot
    assert not any("pytest" in line for line in found), found
