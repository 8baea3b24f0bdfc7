"""``export --out BUNDLE``: a self-describing bundle, verified on read, originals untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from daemon.bundle import ExportError, export_bundle
from daemon.config import load_config
from daemon.instance import take_instance_lock
from daemon.ledger import Ledger
from tests.daemon_harness import cli, make_root, synth
from trainer_core.bundle import BUNDLE_FILE, BundleError, read_bundle
from trainer_core.rlds.hashing import content_hash


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    """A root with a fresh base and a dozen synthetic episodes (no daemon ever ran)."""
    work = tmp_path_factory.mktemp("bundle")
    root, config = make_root(work)
    cli(root, "--config", str(config), "base", "init")
    synth(root, root / "rlds" / "episodes", "--episodes", "12", "--steps", "20", "--seed", "3")
    cfg, _ = load_config(config, str(root))
    return root, cfg


@pytest.fixture(scope="module")
def bundle(robot, tmp_path_factory):
    root, cfg = robot
    before = tree_digest(root / "rlds" / "episodes")
    out = tmp_path_factory.mktemp("out") / "b1"
    report = export_bundle(cfg, out)
    assert tree_digest(root / "rlds" / "episodes") == before  # originals only read
    return out, report


def test_bundle_holds_splits_config_base_and_checksums(robot, bundle):
    _, cfg = robot
    out, report = bundle
    b = read_bundle(out)
    train, evals = b.split("train"), b.split("eval")
    assert report.train == len(train) > 0 and report.eval == len(evals) > 0
    assert len(train) + len(evals) == 12
    held = set(b.meta["splits"]["held_back"])
    assert held == {e["hash"] for e in evals} and held.isdisjoint(e["hash"] for e in train)
    with Ledger.open(cfg.ledger_path) as ledger:  # the ledger's own splits, by content hash
        rows = ledger.valid_episodes("train")
    assert {e["hash"] for e in train} == {r.content_hash for r in rows}
    for entry in train + evals:  # copied as they are: the same content hash
        assert content_hash(out / entry["path"]) == entry["hash"]
    assert b.meta["config"]["features"] == cfg.features.model_dump(mode="json")
    assert b.meta["config"]["lora"] == cfg.lora.model_dump(mode="json")
    assert b.base_path.is_file() and b.release_dir is None
    assert hashlib.sha256(b.base_path.read_bytes()).hexdigest() == b.meta["base"]["sha256"]


def test_altered_or_added_files_are_refused_by_name(bundle, tmp_path):
    out, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = copy / read_bundle(copy).split("train")[0]["path"]
    victim = first / "metadata.json" if first.is_dir() else first
    original = victim.read_bytes()
    victim.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(copy)
    victim.write_bytes(original)
    read_bundle(copy)  # restored: fine again
    (copy / "episodes" / "train" / "sneaked.json").write_text("{}")
    with pytest.raises(BundleError, match=r"sneaked\.json is not listed"):
        read_bundle(copy)


def test_train_episode_among_held_back_is_refused(bundle, tmp_path):
    out, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta = json.loads((copy / BUNDLE_FILE).read_text())
    meta["splits"]["held_back"].append(meta["splits"]["train"][0]["hash"])
    (copy / BUNDLE_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="held back"):
        read_bundle(copy)


def test_export_refuses_an_existing_folder_and_writes_nothing_half(robot, bundle):
    _, cfg = robot
    out, _ = bundle
    with pytest.raises(ExportError, match="exists"):
        export_bundle(cfg, out)
    assert not list(out.parent.glob(".*"))  # no staging left behind


def test_export_beside_a_running_daemon_reads_the_ledger_only(robot, tmp_path):
    _, cfg = robot
    lock = take_instance_lock(cfg.state_dir, 4242)
    try:
        report = export_bundle(cfg, tmp_path / "b2")
    finally:
        lock.close()
    meta = read_bundle(tmp_path / "b2").meta
    assert meta["robot"]["scanned_before_export"] is False and report.train > 0


def test_cli_verb(robot, tmp_path):
    root, _ = robot
    done = cli(root, "--config", str(root / "trainer.yaml"), "export", "--out", str(tmp_path / "b"))
    assert "wrote bundle" in done.stdout and "trainer_core.distributed" in done.stdout
    read_bundle(tmp_path / "b")
