"""Quarantine and lineage: excluded episodes never train or evaluate; `releases show`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon.ledger import Ledger, split_for
from tests.test_ledger import _valid
from tests.test_store import card, make_candidate, new_store, sample_manifest

REPO = Path(__file__).resolve().parent.parent


def _ids(split: str, n: int) -> list[str]:
    return [e for e in (f"ep{i}" for i in range(1000)) if split_for(e, 0.25) == split][:n]


def test_excluded_episodes_never_train_or_evaluate(tmp_path: Path) -> None:
    train, evals = _ids("train", 3), _ids("eval", 2)
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        for eid in train + evals:
            _valid(ledger, f"/e/{eid}", eid, f"h-{eid}")
        _valid(ledger, "/e/copy", train[0], f"h-{train[0]}")  # same bytes, other path
        ledger.exclude(f"/e/{train[0]}", f"h-{train[0]}", "drives into people", "operator", 2.0)
        ledger.exclude(f"/e/{evals[0]}", f"h-{evals[0]}", "bad labels", "operator", 2.0)
        got_train = {r.path for r in ledger.valid_episodes("train")}
        got_eval = {r.path for r in ledger.valid_episodes("eval")}
        assert f"/e/{train[0]}" not in got_train and "/e/copy" not in got_train
        assert got_eval == {f"/e/{evals[1]}"}
        assert ledger.counts()["excluded"] == 3 and ledger.new_valid_count() == 2
        ledger.exclude(f"/e/{train[1]}", f"h-{train[1]}", "tag only", "release:r2-x", 3.0, False)
        assert f"/e/{train[1]}" in {r.path for r in ledger.valid_episodes("train")}
        assert ledger.include(f"/e/{train[0]}")
        assert f"/e/{train[0]}" in {r.path for r in ledger.valid_episodes("train")}
        assert not ledger.include("/e/never-excluded")
        # the reason stays in the ledger as history
        history = ledger.exclusions(active_only=False)
        assert any(r[2] == "drives into people" for r in history)


def cli(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--root", str(root), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_episodes_and_releases_verbs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    model = root / "model"
    model.mkdir(parents=True)
    ep_dir = root / "episodes"
    ep_dir.mkdir()
    episode = ep_dir / "ep0.json"
    episode.write_text("{}")
    before = episode.read_bytes()
    eid = _ids("train", 1)[0]
    with Ledger.open(root / "state" / "ledger.sqlite3") as ledger:
        _valid(ledger, str(episode), eid, "hash-0")
        ledger.record_job_start("run1", 1.0, ["hash-0"])
    store = new_store(model, sample_manifest())
    cand = make_candidate(tmp_path, "a")
    (cand / "card.json").write_text(
        json.dumps({"episode_hashes": ["hash-0"], "base_path": "/b", "base_sha256": "bb"})
    )
    rel = store.promote(cand, {**card(), "decision": ["PASS all"]})
    with Ledger.open(root / "state" / "ledger.sqlite3") as ledger:
        ledger.record_job_end("run1", "done", "promoted", rel.id, 2.0)

    shown = cli(root, "releases", "show", rel.id)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["episodes"] == [{"episode_id": eid, "path": str(episode), "content_hash": "hash-0"}]
    assert info["base"] == {"path": "/b", "sha256": "bb"} and info["decision"] == ["PASS all"]

    shown = cli(root, "episodes", "show", eid)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["trained_releases"] == [rel.id]

    done = cli(root, "episodes", "exclude", str(episode), "--reason", "unsafe turns")
    assert done.returncode == 0, done.stderr
    listing = cli(root, "episodes", "list", "--status", "excluded")
    assert "unsafe turns" in listing.stdout and str(episode) in listing.stdout
    assert episode.read_bytes() == before  # left on disk untouched
    checked = cli(root, "validate", "--ledger", str(episode))
    assert "ledger: valid, EXCLUDED: unsafe turns [operator]" in checked.stdout, checked.stdout
    assert cli(root, "episodes", "list", "--status", "valid").stdout == ""
    assert cli(root, "episodes", "include", eid).returncode == 0
    assert str(episode) in cli(root, "episodes", "list", "--status", "valid").stdout
    missing = cli(root, "episodes", "exclude", "nope", "--reason", "x")
    assert missing.returncode == 1 and "knows no episode" in missing.stderr
