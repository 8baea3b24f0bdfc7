"""Shared fixtures. ``../shared`` exists for developers and CI only: tests that need the
continuonos samples skip, saying so, when it is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO.parent / "shared" / "fixtures" / "continuonos-samples"


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A writable copy of the continuonos samples (the originals are never touched)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"continuonos samples not present at {SAMPLES} (only in a developer checkout)")
    dest = tmp_path / "samples"
    shutil.copytree(SAMPLES, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pretrained base per session for the end-to-end daemon tests (daemon_harness)."""
    from tests.daemon_harness import shared_base

    return shared_base(tmp_path_factory)
