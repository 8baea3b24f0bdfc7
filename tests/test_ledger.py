"""The SQLite ledger: schema, verdicts, splits, jobs and what counts as new data, and a corrupt
database refused with a recovery hint."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from daemon.ledger import KEEP_ALL_ROWS_OF_JOBS, SCHEMA_VERSION, Ledger, LedgerError, split_for


def _valid(ledger: Ledger, path: str, eid: str, digest: str, now: float = 1.0) -> None:
    ledger.record(
        path,
        status="valid",
        signature="s",
        now=now,
        content_hash=digest,
        episode_id=eid,
        split=split_for(eid, 0.25),
        layout="A",
        n_steps=10,
    )


def test_open_creates_schema_wal_and_version(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "ledger.sqlite3"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with Ledger.open(path) as ledger:  # reopening an existing ledger is fine
        assert ledger.counts() == {
            "valid": 0,
            "rejected": 0,
            "gone": 0,
            "train": 0,
            "eval": 0,
            "new": 0,
            "excluded": 0,
            "train_excluded": 0,
            "unusable": 0,
        }


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
)
def test_corrupt_database_is_refused_with_recovery_hint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(content)
    with pytest.raises(LedgerError) as err:
        Ledger.open(path)
    msg = str(err.value)
    assert str(path) in msg and "corrupt" in msg
    assert "move it aside" in msg and "rebuilds it by rescanning" in msg
    assert path.read_bytes() == content  # never reset silently


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this trainer"):
        Ledger.open(path)


@pytest.mark.parametrize(
    ("episode_id", "fraction", "expected"),
    [
        ("pi5_follow_synthetic", 0.25, split_for("pi5_follow_synthetic", 0.25)),
        ("anything", 0.0, "train"),
        ("anything", 1.0, "eval"),
    ],
)
def test_split_for_is_deterministic(episode_id: str, fraction: float, expected: str) -> None:
    assert split_for(episode_id, fraction) == expected
    assert split_for(episode_id, fraction) == split_for(episode_id, fraction)


def test_split_for_shares_roughly_the_fraction() -> None:
    ids = [f"episode-{i}" for i in range(4000)]
    share = sum(split_for(i, 0.25) == "eval" for i in ids) / len(ids)
    assert 0.22 < share < 0.28
    # a larger fraction only moves episodes from train to eval, never back
    assert all(split_for(i, 0.5) == "eval" for i in ids if split_for(i, 0.25) == "eval")


def test_known_value_of_split() -> None:
    # sha256("episode-0")[:8] pins the rule; a change to it would reshuffle every install
    import hashlib

    frac = int.from_bytes(hashlib.sha256(b"episode-0").digest()[:8], "big") / 2**64
    assert split_for("episode-0", frac + 1e-9) == "eval"
    assert split_for("episode-0", max(frac - 1e-9, 0.0)) == "train"


def _train_ids(n: int) -> list[str]:
    return [e for e in (f"ep{i}" for i in range(1000)) if split_for(e, 0.25) == "train"][:n]


def test_new_valid_count_follows_finished_jobs(tmp_path: Path) -> None:
    ids = _train_ids(5)
    eval_id = next(e for e in (f"ev{i}" for i in range(100)) if split_for(e, 0.25) == "eval")
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        for i, eid in enumerate(ids):
            _valid(ledger, f"/e/{eid}", eid, f"h{i}", now=float(i))
        _valid(ledger, "/e/eval", eval_id, "heval")
        ledger.record("/e/bad", status="rejected", signature="s", now=1.0, reason="x: bad")
        assert ledger.new_valid_count() == 5
        ledger.record_job_start("run1", 10.0, ["h0", "h1"])
        assert ledger.new_valid_count() == 5  # a running job has not used them yet
        ledger.record_job_end("run1", "failed", None, None, 11.0)
        assert ledger.new_valid_count() == 5  # a failed job does not count
        ledger.record_job_start("run2", 12.0, ["h0", "h1", "heval"])
        ledger.record_job_end("run2", "done", "promoted", "rel-1", 13.0)
        assert ledger.new_valid_count() == 3
        ledger.record_job_start("run3", 14.0, ["h2"])
        ledger.record_job_end("run3", "budget", "rejected", None, 15.0)
        assert ledger.new_valid_count() == 2
        assert ledger.releases_for("h0") == ["rel-1"]
        assert ledger.releases_for("h2") == []
        counts = ledger.counts()
        assert counts == {
            "valid": 6,
            "rejected": 1,
            "gone": 0,
            "train": 5,
            "eval": 1,
            "new": 2,
            "excluded": 0,
            "train_excluded": 0,
            "unusable": 0,
        }
        jobs = ledger.last_jobs(2)
        assert [j.run_id for j in jobs] == ["run3", "run2"]
        assert (jobs[1].status, jobs[1].decision, jobs[1].release_id, jobs[1].n_episodes) == (
            "done",
            "promoted",
            "rel-1",
            3,
        )
        assert ledger.rejected(5) == [("/e/bad", "x: bad")]
        newest_first = [r.episode_id for r in ledger.valid_episodes("train")]
        assert newest_first == list(reversed(ids))
        with pytest.raises(LedgerError, match="unknown run_id"):
            ledger.record_job_end("nope", "done", None, None, 1.0)


def test_record_keeps_first_seen_and_mark_gone_keeps_row(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        _valid(ledger, "/e/a", "a", "h1", now=5.0)
        _valid(ledger, "/e/a", "a", "h2", now=9.0)
        (row,) = ledger.valid_episodes(split_for("a", 0.25))
        assert (row.first_seen, row.content_hash) == (5.0, "h2")
        ledger.mark_gone(["/e/a"], 10.0)
        assert ledger.counts()["gone"] == 1 and ledger.counts()["valid"] == 0
        assert ledger.known()["/e/a"].status == "gone"


def test_ensure_splits_follows_a_changed_fraction(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        for i in range(40):
            _valid(ledger, f"/e/{i}", f"id{i}", f"h{i}")
        ledger.ensure_splits(0.25)
        ledger.ensure_splits(1.0 - 1e-12)
        assert ledger.counts()["train"] == 0 and ledger.counts()["eval"] == 40


def test_unused_episodes_come_first_then_newest(tmp_path: Path) -> None:
    ids = _train_ids(4)
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        for i, eid in enumerate(ids):
            _valid(ledger, f"/e/{eid}", eid, f"h{i}", now=float(i))
        order = [r.content_hash for r in ledger.valid_episodes("train")]
        assert order == ["h3", "h2", "h1", "h0"]
        # The newest two were trained on: a job capped at two episodes must take the others.
        ledger.record_job_start("run1", 10.0, ["h3", "h2"])
        ledger.record_job_end("run1", "done", "rejected", None, 11.0)
        order = [r.content_hash for r in ledger.valid_episodes("train")]
        assert order == ["h1", "h0", "h3", "h2"]
        ledger.record_job_start("run2", 12.0, ["h1"])
        ledger.record_job_end("run2", "promotion_failed", "failed", None, 13.0)
        assert ledger.new_valid_count() == 2  # a failed promotion leaves its episodes new


def test_unusable_episodes_are_not_trainable_nor_new_until_they_change(tmp_path: Path) -> None:
    from daemon.status import episode_states

    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        ledger.ensure_splits(0.0)  # everything in train
        for i in range(3):
            _valid(ledger, f"/e/{i}", f"ep{i}", f"h{i}")
        assert ledger.mark_unusable({"/e/1": "step 0: action.steering is missing"}) == ["/e/1"]
        assert ledger.mark_unusable({"/e/1": "step 0: action.steering is missing"}) == []
        states = episode_states(ledger.counts())
        assert (states["valid"], states["trainable"], states["new"], states["unusable"]) == (
            3,
            2,
            2,
            1,
        )
        assert sorted(r.path for r in ledger.valid_episodes("train")) == ["/e/0", "/e/2"]
        assert ledger.features_config("fp1") == 1  # a new features config: judged afresh
        assert ledger.features_config("fp1") == 0
        assert episode_states(ledger.counts())["trainable"] == 3
        ledger.mark_unusable({"/e/1": "bad"})
        _valid(ledger, "/e/1", "ep1", "h1b", now=2.0)  # the episode changed: recorded afresh
        assert episode_states(ledger.counts())["unusable"] == 0


def _answers(ledger: Ledger, hashes: list[str]) -> tuple[object, ...]:
    """Everything the daemon asks the ledger about jobs and episodes' use."""
    return (
        ledger.new_valid_count(),
        ledger.counts(),
        ledger.released_hashes(),
        {h: ledger.releases_for(h) for h in hashes},
        [r.path for r in ledger.valid_episodes("train")],
        [r.path for r in ledger.valid_episodes("eval")],
        ledger.last_jobs(KEEP_ALL_ROWS_OF_JOBS),
        [(j.run_id, j.status, j.decision, j.release_id) for j in ledger.last_jobs(10_000)],
        ledger.job_tallies(),
    )


def _job_rows(ledger: Ledger) -> int:
    return ledger._db.execute("SELECT COUNT(*) FROM job_episodes").fetchone()[0]


@pytest.mark.parametrize("seed", range(4))
def test_old_job_rows_are_compacted_without_changing_an_answer(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ledgers fed the same 150 random jobs (trained on random windows of 60 episodes,
    every ending, some released, some reporting fewer episodes than planned): the one that
    compacts gives every answer the one that keeps every row gives, with far fewer rows."""
    rng = random.Random(seed)
    ids = [f"ep{i}" for i in range(60)]
    hashes = [f"h{i}" for i in range(60)]
    full_ledger = Ledger.open(tmp_path / "full.sqlite3")
    compact = Ledger.open(tmp_path / "compact.sqlite3")
    monkeypatch.setattr(full_ledger, "_compact", lambda *_: None)  # keeps every row
    statuses = ["done", "budget", "preempted", "failed", "invalid"]
    for i in range(150):
        run_id, now = f"run{i:03d}", 10.0 * i
        window = rng.sample(hashes, rng.randint(1, 12))
        status = rng.choice(statuses)
        # promotions are rare, as on a robot: most episodes' use is known only from rejected jobs
        decision = (
            rng.choice(["rejected"] * 8 + [None, "promoted"])
            if status in ("done", "budget")
            else None
        )
        release = f"rel-{i}" if decision == "promoted" else None
        reported = window[: max(1, len(window) - 2)] if rng.random() < 0.5 else None
        for ledger in (full_ledger, compact):
            if i < len(ids):
                _valid(ledger, f"/e/{ids[i]}", ids[i], hashes[i], now=now)
            ledger.record_job_start(run_id, now + 1, window)
            if reported is not None:  # the child reports what it actually trained on
                ledger.record_trained(run_id, reported)
            ledger.record_job_end(run_id, status, decision, release, now + 2)
        assert _answers(compact, hashes) == _answers(full_ledger, hashes), f"after job {i}"
    kept, total = _job_rows(compact), _job_rows(full_ledger)
    released = compact._db.execute(
        "SELECT COUNT(*) FROM job_episodes JOIN jobs USING (run_id) WHERE release_id IS NOT NULL"
    ).fetchone()[0]
    # per episode one row of a finished job, the releases' rows, the newest jobs' rows
    assert kept <= len(hashes) + released + KEEP_ALL_ROWS_OF_JOBS * 12
    assert kept < total / 2, (kept, total)
    # a ledger written before compaction existed: its first compaction changes no answer either
    before = _answers(full_ledger, hashes)
    monkeypatch.undo()
    assert full_ledger.compact() == total - kept
    assert _answers(full_ledger, hashes) == before
    assert _job_rows(full_ledger) == kept
    full_ledger.close()
    compact.close()
