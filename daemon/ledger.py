"""The episode ledger: every episode the trainer has seen, by path and content hash.

SQLite (stdlib), WAL journal, schema version in ``PRAGMA user_version``. One row per episode path:
its status (``valid`` | ``rejected`` | ``gone``), the reason when rejected, its split (``train``
| ``eval``, fixed by a hash of the episode id), its step count and the cheap stat signature that
lets a rescan skip unchanged episodes. Jobs and the content hashes each trained on are kept too,
so "new data" means valid train episodes that no finished job (``done`` or ``budget``) has used,
and ``releases_for`` says which releases trained on an episode.

A database that cannot be read is never reset silently: :class:`LedgerError` says how to
recover. Not for concurrent use from several threads at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
FINISHED_JOB_STATUSES = ("done", "budget")
# Whether episode ``e`` is quarantined (by an operator, or tagged as recorded under a release that
# was rolled back): it stays on disk, untouched, and never trains or evaluates.
_EXCLUDED = (
    "EXISTS (SELECT 1 FROM exclusions x WHERE x.active = 1 AND "
    "(x.path = e.path OR x.content_hash = e.content_hash))"
)
# A valid episode the job's feature extraction could not use (the child's ``skipped``): kept
# out of training and of the "new" count until it changes (a rescan records it afresh).
UNUSABLE_PREFIX = "features: "
_UNUSABLE = f"(COALESCE(e.reason, '') LIKE '{UNUSABLE_PREFIX}%')"  # NULL: usable
# Old jobs' job_episodes rows that no question needs any more are deleted (``record_job_end``,
# ``Ledger.compact``). A row ``je`` of job ``j`` is a candidate when ``j`` is old: not among the
# newest ``KEEP_ALL_ROWS_OF_JOBS`` (``last_jobs`` counts their rows), ended, and not a release's job
# (lineage: ``releases_for``, ``released_hashes``). A candidate goes when ``j`` did not finish, or a
# newer finished job also trained on the episode: per episode the newest finished job's row stays,
# so "used by a finished job" keeps its answer.
KEEP_ALL_ROWS_OF_JOBS = 10
_FINISHED = f"({','.join('?' * len(FINISHED_JOB_STATUSES))})"
_OLD_JOB = (
    "j.release_id IS NULL AND j.finished_at IS NOT NULL AND j.run_id NOT IN (SELECT run_id "
    f"FROM jobs ORDER BY started_at DESC, run_id DESC LIMIT {KEEP_ALL_ROWS_OF_JOBS})"
)
# After job ``?`` ended only two sets of rows can have become redundant: those of the job that
# just left the newest ones, and older rows of the episodes the ended job trained on. Each
# candidate is checked against the newer rows of its episode (few: the table is compact).
# Parameters: the run id, then the finished statuses twice.
_COMPACT_AFTER_JOB = f"""
DELETE FROM job_episodes WHERE rowid IN (
  SELECT je.rowid FROM job_episodes je JOIN jobs j USING (run_id)
  WHERE (je.run_id = (SELECT run_id FROM jobs ORDER BY started_at DESC, run_id DESC
                      LIMIT 1 OFFSET {KEEP_ALL_ROWS_OF_JOBS})
         OR je.content_hash IN (SELECT content_hash FROM job_episodes WHERE run_id = ?))
    AND {_OLD_JOB}
    AND (j.status NOT IN {_FINISHED} OR EXISTS (
      SELECT 1 FROM job_episodes ke JOIN jobs k USING (run_id)
      WHERE ke.content_hash = je.content_hash AND k.status IN {_FINISHED}
        AND (k.started_at, k.run_id) > (j.started_at, j.run_id))))
"""
# The same rule over the whole table in one sort (a ledger written before compaction can hold
# a million rows): every candidate but the newest finished row of its episode. Parameters: the
# finished statuses.
_COMPACT_ALL = f"""
DELETE FROM job_episodes WHERE rowid IN (
  SELECT je.rowid FROM job_episodes je JOIN jobs j USING (run_id)
  WHERE {_OLD_JOB} AND je.rowid NOT IN (
    SELECT newest FROM (
      SELECT je.rowid AS newest, ROW_NUMBER() OVER (
        PARTITION BY je.content_hash ORDER BY j.started_at DESC, j.run_id DESC) AS n
      FROM job_episodes je JOIN jobs j USING (run_id) WHERE j.status IN {_FINISHED})
    WHERE n = 1))
"""
# Whether episode ``e`` was trained on by a job that ran to the end (parameters: the statuses).
_USED_BY_A_FINISHED_JOB = (
    "EXISTS (SELECT 1 FROM job_episodes je JOIN jobs j ON j.run_id = je.run_id "
    f"WHERE je.content_hash = e.content_hash AND j.status IN {_FINISHED})"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    path         TEXT PRIMARY KEY,
    episode_id   TEXT,
    content_hash TEXT,
    status       TEXT NOT NULL CHECK (status IN ('valid', 'rejected', 'gone')),
    reason       TEXT,
    split        TEXT CHECK (split IN ('train', 'eval')),
    layout       TEXT,
    n_steps      INTEGER,
    signature    TEXT,
    first_seen   REAL NOT NULL,
    last_seen    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS episodes_hash ON episodes (content_hash);
CREATE INDEX IF NOT EXISTS episodes_status ON episodes (status, split);
CREATE TABLE IF NOT EXISTS jobs (
    run_id      TEXT PRIMARY KEY,
    started_at  REAL NOT NULL,
    finished_at REAL,
    status      TEXT,
    decision    TEXT,
    release_id  TEXT
);
CREATE TABLE IF NOT EXISTS job_episodes (
    run_id       TEXT NOT NULL REFERENCES jobs (run_id),
    content_hash TEXT NOT NULL,
    PRIMARY KEY (run_id, content_hash)
);
CREATE INDEX IF NOT EXISTS job_episodes_hash ON job_episodes (content_hash);
CREATE TABLE IF NOT EXISTS exclusions (
    path         TEXT PRIMARY KEY,
    content_hash TEXT,
    reason       TEXT NOT NULL,
    source       TEXT NOT NULL,
    active       INTEGER NOT NULL DEFAULT 1,
    at           REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class LedgerError(RuntimeError):
    """The ledger database cannot be used; the message says how to recover."""


def split_for(episode_id: str, eval_fraction: float) -> str:
    """``"eval"`` for a fixed, deterministic share of episode ids, ``"train"`` for the rest.

    The first 8 bytes of sha256(episode_id) as a fraction of 2**64, compared with
    ``eval_fraction``: the same id always lands in the same split, on every machine."""
    digest = hashlib.sha256(episode_id.encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


@dataclass(frozen=True)
class EpisodeRow:
    """A valid episode as the job child needs it."""

    path: str
    episode_id: str
    content_hash: str
    n_steps: int
    first_seen: float


@dataclass(frozen=True)
class KnownEntry:
    """What a rescan compares against: the stored signature and status of a path."""

    path: str
    signature: str | None
    content_hash: str | None
    status: str


@dataclass(frozen=True)
class JobRow:
    """One job as the ledger recorded it (start, end, status, decision, release)."""

    run_id: str
    started_at: float
    finished_at: float | None
    status: str | None
    decision: str | None
    release_id: str | None
    n_episodes: int


def _recover_hint(path: Path) -> str:
    return (
        f"move it aside (mv {path} {path}.broken); the next start rebuilds it by rescanning "
        "the episodes folder (which releases trained on which episodes is lost)"
    )


class Ledger:
    """Open with :meth:`Ledger.open`; every write method commits before it returns."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._db = conn
        self.path = path

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Ledger:
        """Open (creating folders and schema) the ledger at ``path``; raise :class:`LedgerError`
        when the file is not a usable ledger."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc}") from None
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{path}: ledger schema version {version} is newer than this trainer "
                    f"understands ({SCHEMA_VERSION}); upgrade the trainer or {_recover_hint(path)}"
                )
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:  # locked, unreadable, disk I/O: not corruption
            conn.close()
            raise LedgerError(f"{path}: cannot use the ledger: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(
                f"{path}: the ledger database is corrupt ({exc}); {_recover_hint(path)}"
            ) from None
        except LedgerError:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- episodes (written by daemon.ingest.scan) -------------------------------------------

    def known(self, paths: list[str] | None = None) -> dict[str, KnownEntry]:
        """Every recorded path (or those of ``paths``) with signature, content hash and status."""
        query = "SELECT path, signature, content_hash, status FROM episodes"
        if paths is not None and len(paths) <= 500:  # SQLite caps the number of parameters
            rows = self._db.execute(f"{query} WHERE path IN ({','.join('?' * len(paths))})", paths)
            return {r[0]: KnownEntry(*r) for r in rows}
        wanted = None if paths is None else set(paths)
        rows = self._db.execute(query)
        return {r[0]: KnownEntry(*r) for r in rows if wanted is None or r[0] in wanted}

    def known_hash(self, path: str) -> str | None:
        """The stored content hash of a non-gone path."""
        row = self._db.execute(
            "SELECT content_hash FROM episodes WHERE path = ? AND status != 'gone'", (path,)
        ).fetchone()
        return row[0] if row else None

    def update_signature(self, path: str, signature: str, now: float) -> None:
        """A touched but byte-identical episode: keep its verdict, remember the new stat."""
        with self._db:
            self._db.execute(
                "UPDATE episodes SET signature = ?, last_seen = ? WHERE path = ?",
                (signature, now, path),
            )

    def record(
        self,
        path: str,
        *,
        status: str,
        signature: str | None,
        now: float,
        content_hash: str | None = None,
        episode_id: str | None = None,
        split: str | None = None,
        layout: str | None = None,
        n_steps: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Insert or replace the verdict for ``path`` (``first_seen`` is kept)."""
        with self._db:
            self._db.execute(
                """INSERT INTO episodes (path, episode_id, content_hash, status, reason, split,
                       layout, n_steps, signature, first_seen, last_seen)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (path) DO UPDATE SET episode_id = excluded.episode_id,
                       content_hash = excluded.content_hash, status = excluded.status,
                       reason = excluded.reason, split = excluded.split,
                       layout = excluded.layout, n_steps = excluded.n_steps,
                       signature = excluded.signature, last_seen = excluded.last_seen""",
                (
                    path,
                    episode_id,
                    content_hash,
                    status,
                    reason,
                    split,
                    layout,
                    n_steps,
                    signature,
                    now,
                    now,
                ),
            )

    def mark_gone(self, paths: Iterable[str], now: float) -> None:
        """Episodes no longer in the folder: the rows stay, as ``gone``."""
        with self._db:
            self._db.executemany(
                "UPDATE episodes SET status = 'gone', signature = NULL, last_seen = ? "
                "WHERE path = ?",
                ((now, p) for p in paths),
            )

    def valid_path_with_hash(self, content_hash: str, exclude_path: str) -> str | None:
        """Another path already holding these exact bytes as a valid episode (a copy)."""
        row = self._db.execute(
            "SELECT path FROM episodes WHERE content_hash = ? AND status = 'valid' AND path != ?",
            (content_hash, exclude_path),
        ).fetchone()
        return row[0] if row else None

    def ensure_splits(self, eval_fraction: float) -> None:
        """Re-derive every split when ``eval_fraction`` differs from the one last used."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'eval_fraction'").fetchone()
        if row is not None and float(row[0]) == eval_fraction:
            return
        rows = self._db.execute(
            "SELECT path, episode_id FROM episodes WHERE episode_id IS NOT NULL"
        ).fetchall()
        with self._db:
            self._db.executemany(
                "UPDATE episodes SET split = ? WHERE path = ?",
                ((split_for(eid, eval_fraction), p) for p, eid in rows),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('eval_fraction', ?)",
                (repr(eval_fraction),),
            )

    # -- queries ----------------------------------------------------------------------------

    def valid_episodes(self, split: str) -> list[EpisodeRow]:
        """Valid episodes of ``split`` (``train``/``eval``): those no finished job trained on
        first (so a job capped at ``max_episodes`` always takes the new data), then newest
        first."""
        rows = self._db.execute(
            "SELECT path, episode_id, content_hash, n_steps, first_seen FROM episodes e "
            f"WHERE status = 'valid' AND split = ? AND NOT {_EXCLUDED} AND NOT {_UNUSABLE} "
            f"ORDER BY {_USED_BY_A_FINISHED_JOB}, "
            "first_seen DESC, path",
            (split, *FINISHED_JOB_STATUSES),
        )
        return [EpisodeRow(*r) for r in rows]

    def new_valid_count(self) -> int:
        """Valid train episodes that no finished job (``done``/``budget``) trained on."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM episodes e WHERE e.status = 'valid' AND e.split = 'train' "
            f"AND NOT {_EXCLUDED} AND NOT {_UNUSABLE} AND NOT {_USED_BY_A_FINISHED_JOB}",
            FINISHED_JOB_STATUSES,
        ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """``valid``, ``rejected``, ``gone``, ``train``/``eval`` (valid only) and ``new``."""
        out = {"valid": 0, "rejected": 0, "gone": 0, "train": 0, "eval": 0}
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM episodes GROUP BY 1"):
            out[status] = n
        for split, n in self._db.execute(
            "SELECT split, COUNT(*) FROM episodes WHERE status = 'valid' GROUP BY 1"
        ):
            if split in out:
                out[split] = n
        out["new"] = self.new_valid_count()
        out["excluded"] = self._db.execute(
            f"SELECT COUNT(*) FROM episodes e WHERE status != 'gone' AND {_EXCLUDED}"
        ).fetchone()[0]
        out["unusable"] = self._db.execute(
            f"SELECT COUNT(*) FROM episodes e WHERE status = 'valid' AND split = 'train' "
            f"AND {_UNUSABLE} AND NOT {_EXCLUDED}"
        ).fetchone()[0]
        # Valid train episodes under quarantine: not trainable (daemon.status.episode_states).
        out["train_excluded"] = self._db.execute(
            "SELECT COUNT(*) FROM episodes e WHERE status = 'valid' AND split = 'train' "
            f"AND {_EXCLUDED}"
        ).fetchone()[0]
        return out

    def mark_unusable(self, reasons: dict[str, str]) -> list[str]:
        """Record why the features could not use these valid episodes (path -> reason, from a
        job's result); returns the paths newly marked. The verdict stays ``valid``."""
        marked = []
        with self._db:
            for path, reason in reasons.items():
                cur = self._db.execute(
                    "UPDATE episodes SET reason = ? WHERE path = ? AND status = 'valid' "
                    "AND (reason IS NULL OR reason != ?)",
                    (UNUSABLE_PREFIX + reason, path, UNUSABLE_PREFIX + reason),
                )
                if cur.rowcount:
                    marked.append(path)
        return marked

    def features_config(self, fingerprint: str) -> int:
        """Forget every features verdict when the features config is not the one they were made
        under (``fingerprint``); returns how many were forgotten."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'features'").fetchone()
        if row is not None and row[0] == fingerprint:
            return 0
        with self._db:
            cur = self._db.execute(
                f"UPDATE episodes SET reason = NULL WHERE reason LIKE '{UNUSABLE_PREFIX}%'"
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('features', ?)", (fingerprint,)
            )
        return cur.rowcount

    def job_tallies(self) -> dict[str, Any]:
        """Ended jobs by ``status`` and by ``decision`` (verdict), and the last time a job
        ended with a decision (the metrics file's "last successful cycle")."""
        out: dict[str, Any] = {"status": {}, "decision": {}, "last_decided_at": None}
        for column in ("status", "decision"):
            for value, n in self._db.execute(
                f"SELECT {column}, COUNT(*) FROM jobs WHERE {column} IS NOT NULL GROUP BY 1"
            ):
                out[column][value] = n
        row = self._db.execute(
            "SELECT MAX(finished_at) FROM jobs WHERE decision IN ('promoted', 'rejected')"
        ).fetchone()
        out["last_decided_at"] = row[0] if row else None
        return out

    # -- quarantine (daemon.quarantine) -----------------------------------------------------

    def exclude(
        self,
        path: str,
        content_hash: str | None,
        reason: str,
        source: str,
        now: float,
        active: bool = True,
    ) -> None:
        """Quarantine an episode: never trained or evaluated on again until :meth:`include`.
        ``active=False`` only tags it (the reason is kept; it still trains)."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO exclusions "
                "(path, content_hash, reason, source, active, at) VALUES (?, ?, ?, ?, ?, ?)",
                (path, content_hash, reason, source, int(active), now),
            )

    def include(self, path: str) -> bool:
        """Lift the quarantine of ``path`` (the row stays, inactive, as history)."""
        with self._db:
            cur = self._db.execute("UPDATE exclusions SET active = 0 WHERE path = ?", (path,))
        return cur.rowcount > 0

    def exclusions(self, active_only: bool = True) -> list[tuple[str, str | None, str, str, float]]:
        """``(path, content_hash, reason, source, at)`` of quarantined episodes."""
        rows = self._db.execute(
            "SELECT path, content_hash, reason, source, at FROM exclusions "
            + ("WHERE active = 1 " if active_only else "")
            + "ORDER BY at, path"
        )
        return [tuple(r) for r in rows]

    def episodes_seen_between(self, start: float, end: float) -> list[tuple[str, str | None]]:
        """``(path, content_hash)`` of valid episodes first seen in ``[start, end]``."""
        rows = self._db.execute(
            "SELECT path, content_hash FROM episodes WHERE status = 'valid' "
            "AND first_seen BETWEEN ? AND ? ORDER BY path",
            (start, end),
        )
        return [tuple(r) for r in rows]

    def episode(self, key: str) -> tuple | None:
        """``(path, episode_id, content_hash, status, reason, split, n_steps)`` by path or id."""
        return self._db.execute(
            "SELECT path, episode_id, content_hash, status, reason, split, n_steps FROM episodes "
            "WHERE path = ? OR episode_id = ? OR content_hash = ? ORDER BY last_seen DESC",
            (key, key, key),
        ).fetchone()

    def episodes_by_hash(self, hashes: list[str]) -> list[tuple[str, str | None, str]]:
        """``(path, episode_id, content_hash)`` of recorded episodes holding these hashes."""
        rows = self._db.execute(
            "SELECT path, episode_id, content_hash FROM episodes ORDER BY path"
        ).fetchall()
        wanted = set(hashes)
        return [tuple(r) for r in rows if r[2] in wanted]

    def all_episodes(self) -> list[tuple[str, str | None, str | None, str, str | None, bool]]:
        """``(path, episode_id, content_hash, status, reason, excluded)`` for every episode."""
        rows = self._db.execute(
            f"SELECT path, episode_id, content_hash, status, reason, {_EXCLUDED} FROM episodes e "
            "ORDER BY path"
        )
        return [(*r[:5], bool(r[5])) for r in rows]

    def rejected(self, limit: int = 20) -> list[tuple[str, str]]:
        """``(path, reason)`` of the most recently seen rejected episodes."""
        rows = self._db.execute(
            "SELECT path, reason FROM episodes WHERE status = 'rejected' "
            "ORDER BY last_seen DESC, path LIMIT ?",
            (limit,),
        )
        return [(p, r or "") for p, r in rows]

    def releases_for(self, content_hash: str) -> list[str]:
        """Releases whose training job used this episode."""
        rows = self._db.execute(
            "SELECT DISTINCT j.release_id FROM jobs j JOIN job_episodes je USING (run_id) "
            "WHERE je.content_hash = ? AND j.release_id IS NOT NULL ORDER BY 1",
            (content_hash,),
        )
        return [r[0] for r in rows]

    # -- jobs -------------------------------------------------------------------------------

    def record_job_start(self, run_id: str, started_at: float, episode_hashes: list[str]) -> None:
        """A job started, training on these content hashes."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (run_id, started_at) VALUES (?, ?)",
                (run_id, started_at),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO job_episodes (run_id, content_hash) VALUES (?, ?)",
                ((run_id, h) for h in episode_hashes),
            )

    def record_job_end(
        self,
        run_id: str,
        status: str,
        decision: str | None,
        release_id: str | None,
        finished_at: float,
    ) -> None:
        """A job ended. Its episodes stop counting as new when ``status`` is ``done`` or
        ``budget``; a non-None ``release_id`` records that release as trained on them (this is
        the ledger's "mark trained": there is no separate call).

        In the same transaction, older jobs' episode rows that no question needs any more are
        deleted (``_OLD_JOB`` says which), so the table grows with the episodes and the
        releases, not with every job. A job writes up to ``job.max_episodes`` rows: kept for
        good, 10 jobs a day would add over 200 MB a year (``bench/bench_ledger.py``)."""
        with self._db:
            cur = self._db.execute(
                "UPDATE jobs SET status = ?, decision = ?, release_id = ?, finished_at = ? "
                "WHERE run_id = ?",
                (status, decision, release_id, finished_at, run_id),
            )
            if cur.rowcount == 0:
                raise LedgerError(f"record_job_end: unknown run_id {run_id!r}")
            self._compact(_COMPACT_AFTER_JOB, (run_id, *FINISHED_JOB_STATUSES * 2))

    def compact(self) -> int:
        """Delete every job_episodes row no question needs any more (see ``record_job_end``)
        and return how many: the daemon does it once at start, so a ledger written before
        compaction catches up."""
        with self._db:
            return self._compact(_COMPACT_ALL, FINISHED_JOB_STATUSES)

    def _compact(self, sql: str, params: tuple[str, ...]) -> int:
        return self._db.execute(sql, params).rowcount

    def record_trained(self, run_id: str, episode_hashes: list[str]) -> None:
        """What the job child actually trained on (its ``result.json`` hashes), in place of the
        plan recorded at the start: an episode it skipped, or one whose bytes changed before it
        read them, is not counted as used under the planned hash."""
        with self._db:
            self._db.execute("DELETE FROM job_episodes WHERE run_id = ?", (run_id,))
            self._db.executemany(
                "INSERT OR IGNORE INTO job_episodes (run_id, content_hash) VALUES (?, ?)",
                ((run_id, h) for h in episode_hashes),
            )

    def released_hashes(self) -> set[str]:
        """Content hashes some release trained on: these never enter a candidate's eval set,
        whatever the split settings do later (held out for good)."""
        rows = self._db.execute(
            "SELECT DISTINCT je.content_hash FROM job_episodes je JOIN jobs j USING (run_id) "
            "WHERE j.release_id IS NOT NULL"
        )
        return {r[0] for r in rows}

    def last_jobs(self, limit: int = 10) -> list[JobRow]:
        """The most recent jobs, newest first. ``n_episodes`` is exact for the newest
        ``KEEP_ALL_ROWS_OF_JOBS`` jobs and for releases; for an older job it counts the rows the
        ledger kept (the episodes no newer finished job trained on)."""
        rows = self._db.execute(
            """SELECT j.run_id, j.started_at, j.finished_at, j.status, j.decision, j.release_id,
                      (SELECT COUNT(*) FROM job_episodes je WHERE je.run_id = j.run_id)
               FROM jobs j ORDER BY j.started_at DESC LIMIT ?""",
            (limit,),
        )
        return [JobRow(*r) for r in rows]
