"""``report --out DIR``: PNGs, one self-contained HTML page, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon_harness import REPO, cli, make_root, once, synth


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory, base_checkpoint) -> tuple[Path, Path]:
    """A root where one `once --force` promoted a release (teleop: the gate is closed)."""
    work = tmp_path_factory.mktemp("report")
    root, config = make_root(work, base=base_checkpoint, mode="manual_control")
    synth(
        root,
        root / "rlds" / "episodes",
        "--episodes",
        "12",
        "--steps",
        "100",
        "--seed",
        "8",
        "--steering-bias",
        "0.3",
    )
    done = once(root, config, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    return root, config


def test_report_writes_pngs_and_a_self_contained_page(trained_root, tmp_path):
    root, config = trained_root
    out = tmp_path / "report"
    done = cli(root, "--config", str(config), "report", "--out", str(out))
    assert "wrote" in done.stdout
    for name in ("loss.png", "releases.png", "decisions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    # Self-contained: every src is a data URI; no link to anything outside the file.
    assert re.findall(r'src="([^"]{0,5})', page) == ["data:"] * 3
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "(current)" in page and "base" in page
    assert "promoted" in page


def browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "headless_shell"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(browser() is None, reason="no Chromium installed (apt install chromium)")
def test_report_renders_in_headless_chromium(trained_root, tmp_path):
    root, config = trained_root
    out = tmp_path / "report"
    cli(root, "--config", str(config), "report", "--out", str(out))
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,2200",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), done.stderr
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(shot)
    # Rendered, not blank: the plots put many distinct colours on the page.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50
    keep = Path(REPO) / ".pytest-report-shot.png"
    shutil.copy(shot, keep)  # for a person to look at; ignored by git
