"""Folder discovery, completeness, the rescan into the ledger, and `continuon-trainer validate`
as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.ingest import EntryStat, discover, is_complete, scan
from daemon.ledger import Ledger, split_for
from tests.conftest import REPO
from tests.rlds_writers import step, write_a, write_b, write_tfrecord
from trainer_core.config import IngestConfig

LIMITS = IngestConfig(settle_s=5.0)
LATER = 2_000_000_000.0  # far after every mtime


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(tmp_path / "state" / "ledger.sqlite3") as led:
        yield led


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "episodes"
    folder.mkdir()
    return folder


def _status(ledger: Ledger) -> dict[str, str]:
    return {Path(p).name: e.status for p, e in ledger.known().items()}


@pytest.mark.parametrize(
    ("has_marker", "age_s", "settle_s", "complete"),
    [
        (False, 10.0, 5.0, True),
        (False, 5.0, 5.0, True),
        (False, 4.9, 5.0, False),
        (True, 0.0, 5.0, True),
        (False, 0.0, 0.0, True),
        (False, -3.0, 5.0, False),  # mtime in the future: not settled
    ],
)
def test_completeness_rule(has_marker: bool, age_s: float, settle_s: float, complete: bool) -> None:
    stat = EntryStat("sig", newest_mtime=100.0, has_marker=has_marker, files=[])
    assert is_complete(stat, settle_s, now=100.0 + age_s) is complete


def test_discover_picks_episodes_and_ignores_the_rest(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "a1", [step(0)])
    write_b(folder, "b1.json", {"metadata": {}, "steps": [step(0)]})
    write_tfrecord(folder, "t1.tfrecord")
    (folder / "t2.tfrecord.gz").write_bytes(b"")
    (folder / "shard.tfrecord-00000-of-00002").write_bytes(b"")
    for ignored in (
        ".hidden",
        ".x.json",
        "b2.json.tmp",
        "b3.json~",
        "README.md",
        "features.json",
        "notes.txt",
    ):
        (folder / ignored).write_text("x")
    (folder / ".staging").mkdir()
    names = [p.name for p in discover(folder)]
    assert names == [
        "a1",
        "b1.json",
        "shard.tfrecord-00000-of-00002",
        "t1.tfrecord",
        "t2.tfrecord.gz",
    ]


def test_scan_is_idempotent_and_does_not_reread_unchanged(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    for i in range(3):
        write_a(folder, f"ep{i}", [step(0), step(1)])
    write_tfrecord(folder, "tf.tfrecord")
    first = scan(folder, ledger, LIMITS, 0.25, LATER)
    assert (first.new, first.valid, first.rejected, first.unchanged) == (4, 4, 0, 0)
    before = ledger.known()
    second = scan(folder, ledger, LIMITS, 0.25, LATER + 1)
    assert (second.new, second.changed, second.unchanged, second.valid) == (0, 0, 4, 0)
    assert ledger.known() == before
    # Same size and mtime but different bytes: the signature matches, so it is not re-read
    # (proof that unchanged episodes cost a stat, not a parse).
    shard = folder / "ep0" / "steps" / "000000.jsonl"
    st = shard.stat()
    shard.write_bytes(b"X" * st.st_size)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = scan(folder, ledger, LIMITS, 0.25, LATER + 2)
    assert third.unchanged == 4 and _status(ledger)["ep0"] == "valid"


def test_changed_episode_is_revalidated(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "ep", [step(0), step(1)])
    scan(folder, ledger, LIMITS, 0.25, LATER)
    hash_before = ledger.known()[str(folder / "ep")].content_hash
    shard = folder / "ep" / "steps" / "000000.jsonl"
    # Only the mtime changes: re-hashed, same bytes, verdict kept.
    os.utime(shard, (1_000, 1_000))
    report = scan(folder, ledger, LIMITS, 0.25, LATER)
    assert (report.changed, report.unchanged, report.valid) == (1, 1, 0)
    # Different bytes: re-read and now rejected, with the reason.
    with shard.open("a") as f:
        f.write(json.dumps(step(2, [1.0, 2.0, 3.0])) + "\n")
    report = scan(folder, ledger, LIMITS, 0.25, LATER)
    assert (report.changed, report.rejected) == (1, 1)
    assert "line 3: action.command: has 3 values" in report.rejections[0][1]
    row = ledger.known()[str(folder / "ep")]
    assert row.status == "rejected" and row.content_hash != hash_before
    # Fixed again: valid again.
    write_a(folder, "ep", [step(0), step(1), step(2)])
    assert scan(folder, ledger, LIMITS, 0.25, LATER).valid == 1
    assert _status(ledger)["ep"] == "valid"


def test_gone_keeps_the_row_and_a_return_is_new(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "stay", [step(0)])
    write_b(folder, "leave.json", {"metadata": {}, "steps": [step(0)]})
    scan(folder, ledger, LIMITS, 0.25, LATER)
    moved = tmp_path / "leave.json"
    shutil.move(folder / "leave.json", moved)
    report = scan(folder, ledger, LIMITS, 0.25, LATER)
    assert report.gone == 1
    assert _status(ledger) == {"stay": "valid", "leave.json": "gone"}
    assert ledger.counts()["gone"] == 1
    shutil.move(moved, folder / "leave.json")
    report = scan(folder, ledger, LIMITS, 0.25, LATER)
    assert (report.new, report.valid) == (1, 1)
    assert _status(ledger)["leave.json"] == "valid"


def test_incomplete_entries_wait_for_settle_or_marker(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    d = write_a(folder, "fresh", [step(0)])
    newest = max(p.stat().st_mtime for p in [d, *d.rglob("*")])
    report = scan(folder, ledger, LIMITS, 0.25, now=newest + 1.0)
    assert (report.pending, report.new) == (1, 0)
    assert ledger.known() == {}
    (d / "COMPLETE").write_text("")
    report = scan(folder, ledger, LIMITS, 0.25, now=newest + 1.0)
    assert (report.pending, report.valid) == (0, 1)
    # A file episode has no marker: it is read once it settled.
    write_b(folder, "b.json", {"metadata": {}, "steps": [step(0)]})
    mtime = (folder / "b.json").stat().st_mtime
    assert scan(folder, ledger, LIMITS, 0.25, now=mtime + 1.0).pending == 1
    assert scan(folder, ledger, LIMITS, 0.25, now=mtime + 5.0).valid == 1


def test_splits_are_stable_across_rescans_and_reopen(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    for i in range(12):
        write_a(folder, f"ep{i:02d}", [step(0)])
    db = tmp_path / "l.sqlite3"
    with Ledger.open(db) as ledger:
        scan(folder, ledger, LIMITS, 0.25, LATER)
        first = {r.episode_id: "train" for r in ledger.valid_episodes("train")}
        first |= {r.episode_id: "eval" for r in ledger.valid_episodes("eval")}
    assert first == {f"ep{i:02d}": split_for(f"ep{i:02d}", 0.25) for i in range(12)}
    with Ledger.open(db) as ledger:
        scan(folder, ledger, LIMITS, 0.25, LATER + 10)
        again = {r.episode_id: "eval" for r in ledger.valid_episodes("eval")}
    assert again == {k: v for k, v in first.items() if v == "eval"}


def test_copies_and_inside_symlinks(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "orig", [step(0)], metadata={"episode_id": "same"})
    shutil.copytree(folder / "orig", folder / "x_copy")
    (folder / "sub").mkdir()  # not an episode: rejected with a reason, never ignored silently
    write_a(folder / ".store", "kept", [step(0), step(1)])  # hidden: not scanned itself
    os.symlink(folder / ".store" / "kept", folder / "linked")
    report = scan(folder, ledger, LIMITS, 0.25, LATER)
    reasons = dict(report.rejections)
    assert reasons[str(folder / "x_copy")] == f"same content as {folder / 'orig'} (duplicate)"
    assert reasons[str(folder / "sub")] == "metadata.json: missing"
    assert _status(ledger) == {
        "linked": "valid",
        "orig": "valid",
        "sub": "rejected",
        "x_copy": "rejected",
    }


def test_unlistable_folder_reports_and_marks_nothing_gone(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "ep", [step(0)])
    scan(folder, ledger, LIMITS, 0.25, LATER)
    folder.rename(tmp_path / "elsewhere")
    report = scan(folder, ledger, LIMITS, 0.25, LATER)
    assert report.error is not None and "cannot list the episodes folder" in report.error
    assert _status(ledger) == {"ep": "valid"}


def _scan_with_timeout(folder: Path, ledger_path: Path, fifos: list[Path], timeout_s: float):
    """Scan in a thread; a scan stuck in open() on a FIFO fails the test instead of hanging it."""
    out: dict[str, Any] = {}

    def work() -> None:
        with Ledger.open(ledger_path) as led:
            out["report"] = scan(folder, led, LIMITS, 0.25, LATER)
            out["status"] = _status(led)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        for fifo in fifos:  # a writer's open releases the reader blocked in open()
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("scan blocked on a FIFO in the episodes folder")
    return out["report"], out["status"]


def test_fifos_are_refused_without_being_opened(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "good", [step(0)])
    os.mkfifo(folder / "pipe.json")
    inner = write_a(folder, "inner", [step(0)])
    os.mkfifo(inner / "steps" / "000001.jsonl")
    fifos = [folder / "pipe.json", inner / "steps" / "000001.jsonl"]
    report, status = _scan_with_timeout(folder, tmp_path / "l.sqlite3", fifos, timeout_s=20)
    reasons = {Path(k).name: why for k, why in report.rejections}
    assert reasons == {
        "pipe.json": "not a regular file (fifo)",
        "inner": "steps/000001.jsonl: not a regular file (fifo)",
    }
    assert status == {"good": "valid", "pipe.json": "rejected", "inner": "rejected"}


def test_content_hash_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    from trainer_core.rlds import content_hash

    d = write_a(tmp_path, "ep", [step(0)])
    os.mkfifo(d / "steps" / "000001.jsonl")
    os.mkfifo(tmp_path / "pipe.json")
    for target in (d, tmp_path / "pipe.json"):
        with pytest.raises(OSError, match=r"not a regular file \(fifo\)"):
            content_hash(target)


def test_content_hash_skips_what_discovery_ignores(tmp_path: Path) -> None:
    from trainer_core.rlds import content_hash, is_ignored_name

    d = write_a(tmp_path, "ep", [step(0)])
    base = content_hash(d)
    for name in ("000001.jsonl.part", "000001.jsonl.partial", ".x.swp", "~lock", "a~"):
        assert is_ignored_name(name)
        (d / "steps" / name).write_text("a producer's unfinished write")
    (d / "~scratch").mkdir()
    (d / "~scratch" / "frame.jpg").write_bytes(b"\xff\xd8")
    assert content_hash(d) == base


def test_scan_past_its_deadline_defers_new_entries(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "old", [step(0)])
    assert scan(folder, ledger, LIMITS, 0.25, LATER).valid == 1
    write_a(folder, "new", [step(0)])
    write_b(folder, "b.json", {"metadata": {}, "steps": [step(0)]})
    late = scan(folder, ledger, LIMITS, 0.25, LATER, deadline=time.monotonic() - 1.0)
    assert late.incomplete and late.as_dict()["incomplete"] is True
    assert (late.new, late.valid, late.rejected, late.gone, late.unchanged) == (0, 0, 0, 0, 1)
    assert _status(ledger) == {"old": "valid"}  # nothing new recorded, nothing marked gone
    done = scan(folder, ledger, LIMITS, 0.25, LATER, deadline=time.monotonic() + 600)
    assert not done.incomplete and (done.new, done.valid) == (2, 2)
    assert _status(ledger) == {"old": "valid", "new": "valid", "b.json": "valid"}


def test_rescan_of_unchanged_episodes_writes_nothing(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "ep", [step(0)])
    scan(folder, ledger, LIMITS, 0.25, LATER)
    db = tmp_path / "state" / "ledger.sqlite3"

    def last_seen() -> list[tuple[str, float]]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute("SELECT path, last_seen FROM episodes").fetchall()

    before = last_seen()
    assert scan(folder, ledger, LIMITS, 0.25, LATER + 100).unchanged == 1
    assert last_seen() == before


# -- continuon-trainer validate -------------------------------------------------------------------

CLI = REPO / ".venv" / "bin" / "continuon-trainer"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CONTINUON_TRAINER_ROOT"}
    return subprocess.run(
        [str(CLI), "validate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(not CLI.exists(), reason="console script not installed in .venv")
def test_validate_cli_exit_codes_and_lines(samples: Path, tmp_path: Path) -> None:
    ok = _run(
        str(samples / "episodes"),
        str(samples / "tfrecord_raw" / "sample_pi5_mock.tfrecord"),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    b_file = samples / "episodes" / "pi5_follow_synthetic.json"
    assert f"OK {b_file} (5 steps, layout B (one JSON file))" in lines
    assert (
        f"OK {samples / 'episodes' / 'stack_boxes_vr'} (1 step, layout C (task-library JSON))"
        in lines
    )
    raw = samples / "tfrecord_raw" / "sample_pi5_mock.tfrecord"
    assert lines[-1] == f"OK {raw} (2 steps, layout D (TFRecord))"
    assert len(lines) == 6
    bad = _run(str(samples / "tfrecord"), cwd=tmp_path)
    assert bad.returncode == 1
    assert len(bad.stdout.splitlines()) == 3
    assert all(
        line.startswith("REJECTED ") and "corrupt gzip file" in line
        for line in bad.stdout.splitlines()
    )
    assert "Traceback" not in bad.stderr


@pytest.mark.skipif(not CLI.exists(), reason="console script not installed in .venv")
def test_validate_cli_json(samples: Path, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "good", [step(0), step(1)])
    write_a(folder, "bad", [step(0), step(1, [0.1, "NaN"])])
    res = _run("--json", str(folder), str(tmp_path / "missing.json"), cwd=tmp_path)
    assert res.returncode == 1
    out = {Path(r["path"]).name: r for r in json.loads(res.stdout)}
    assert out["good"] == {
        "path": str(folder / "good"),
        "ok": True,
        "episode_id": "good",
        "steps": 2,
        "layout": "A",
    }
    assert out["bad"]["reason"] == (
        'steps/000000.jsonl: line 2: action.command[1]: not a finite number (got "NaN")'
    )
    assert out["missing.json"] == {
        "path": str(tmp_path / "missing.json"),
        "ok": False,
        "reason": "does not exist",
    }
    assert sys.executable  # the CLI ran in its own interpreter, not this one


def test_content_hash_names_the_content(tmp_path: Path) -> None:
    from trainer_core.rlds import content_hash

    d = write_a(tmp_path, "ep", [step(0), step(1)])
    base = content_hash(d)
    shutil.copytree(d, tmp_path / "copy")
    assert content_hash(tmp_path / "copy") == base
    (d / "COMPLETE").write_text("")
    (d / "steps" / ".000001.jsonl.tmp").write_text("partial")
    assert content_hash(d) == base
    (d / "blobs").mkdir()
    (d / "blobs" / "frame.jpg").write_bytes(b"\xff\xd8")
    assert content_hash(d) != base
    f = write_b(tmp_path, "a.json", {"metadata": {}, "steps": [step(0)]})
    shutil.copy(f, tmp_path / "b.json")
    assert content_hash(f) == content_hash(tmp_path / "b.json")


def test_scan_of_named_entries_looks_at_nothing_else(tmp_path: Path, ledger: Ledger) -> None:
    folder = _folder(tmp_path)
    write_a(folder, "old", [step(0)])
    write_b(folder, "leave.json", {"metadata": {}, "steps": [step(0)]})
    scan(folder, ledger, LIMITS, 0.25, LATER)
    (folder / "leave.json").unlink()  # not named below: stays as the ledger knows it
    write_a(folder, "new", [step(0), step(1)])
    report = scan(folder, ledger, LIMITS, 0.25, LATER, only={"new", "vanished", ".tmp-x"})
    assert (report.new, report.valid, report.unchanged, report.gone) == (1, 1, 0, 0)
    assert _status(ledger) == {"old": "valid", "leave.json": "valid", "new": "valid"}
    # The next full scan catches up with what the watcher did not report.
    assert scan(folder, ledger, LIMITS, 0.25, LATER).gone == 1


def test_out_of_bounds_episodes_are_rejected_by_the_scan_and_validate(tmp_path: Path) -> None:
    """``features.out_of_bounds: skip`` (the default): the ledger and `validate` say which step
    and name left its bounds; ``clip`` accepts the episode."""
    from daemon.config import load_config
    from daemon.ingest import bounds_check

    folder = _folder(tmp_path)
    write_a(folder, "inside", [step(0), step(1, [1.0, -1.0])])
    write_a(folder, "outside", [step(0), step(1), step(2, [0.3, 1.6])])
    cfg, _ = load_config(None, str(tmp_path))
    with Ledger.open(tmp_path / "state" / "ledger.sqlite3") as led:
        scan(folder, led, LIMITS, 0.25, now=LATER, accept=bounds_check(cfg))
        rows = {Path(p).name: e for p, e in led.known().items()}
        reasons = {Path(p).name: r for p, r in led.rejected()}
    assert rows["inside"].status == "valid"
    assert rows["outside"].status == "rejected"
    assert "step 2: action.command throttle=1.6 outside its bounds [-1, 1]" in reasons["outside"]
    if CLI.exists():
        res = _run("--json", str(folder), cwd=tmp_path)
        out = {Path(r["path"]).name: r for r in json.loads(res.stdout)}
        assert res.returncode == 1 and out["inside"]["ok"] and not out["outside"]["ok"]
        assert "throttle=1.6 outside its bounds" in out["outside"]["reason"]
    clip = cfg.model_copy(
        update={"features": cfg.features.model_copy(update={"out_of_bounds": "clip"})}
    )
    with Ledger.open(tmp_path / "state2" / "ledger.sqlite3") as led:
        scan(folder, led, LIMITS, 0.25, now=LATER, accept=bounds_check(clip))
        assert {e.status for e in led.known().values()} == {"valid"}


def test_a_copied_episodes_folder_is_not_a_folder_of_duplicates(tmp_path: Path) -> None:
    """paths.episodes pointed at a copy while the old folder still exists (issue 15)."""
    old = _folder(tmp_path)
    for i in range(3):
        write_a(old, f"ep{i}", [step(0)])
    new = tmp_path / "copy"
    shutil.copytree(old, new)
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        scan(old, ledger, LIMITS, 0.25, LATER)
        report = scan(new, ledger, LIMITS, 0.25, LATER + 1)
        assert report.rejections == [] and report.valid == 3
        again = scan(new, ledger, LIMITS, 0.25, LATER + 2)  # and it stays so
        assert again.rejections == [] and ledger.counts()["valid"] == 3
