"""Episodes folder -> ledger: discovery, completeness, and the rescan.

Rules (architecture §4):

- An *entry* is a top-level item of the episodes folder that looks like an episode
  (:func:`trainer_core.rlds.kind_of`): a directory, a ``*.json`` file or a TFRecord. Hidden and
  temporary names are ignored. A symlink whose target lies outside the folder (or any symlink
  inside an episode directory that does) is refused and recorded as rejected.
- An entry is *complete* when it holds a ``COMPLETE`` marker file, or when nothing in it
  (files and directories, by mtime) changed for ``ingest.settle_s``. A producer that renames a
  finished episode into the folder is therefore complete once settle has elapsed since it last
  wrote it. Incomplete entries are left alone (``pending``) until a later scan.
- A rescan compares a cheap stat signature (size and mtime_ns of every file, names included) to
  the ledger and does not re-read unchanged entries. A changed entry is re-hashed; identical
  bytes keep their verdict, different bytes are re-read and re-validated. An entry that
  disappeared becomes ``gone`` (the row stays).
- An unchanged entry costs a stat walk and no database write: ``last_seen`` is when its
  verdict or signature was last recorded (new, changed, gone), not when a scan last saw it,
  so a rescan of a large idle folder writes nothing.
- A scan given a deadline stops reading new or changed entries once it passes; they are
  picked up by the next scan (``incomplete``). Unchanged entries are still checked.
- Bad input never raises out of :func:`scan` and nothing in the folder is ever modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any

from daemon.ledger import Ledger, split_for
from trainer_core.config import IngestConfig
from trainer_core.episode import Episode
from trainer_core.rlds import EpisodeError, kind_of, read_episode
from trainer_core.rlds.hashing import COMPLETE_MARKER, content_hash, special_file

# A directory episode with more files than this is refused rather than walked on every scan.
MAX_FILES_PER_ENTRY = 100_000


@dataclass
class EntryStat:
    """One stat walk over an entry: what a rescan compares, and what completeness needs."""

    signature: str
    newest_mtime: float
    has_marker: bool
    files: list[str]  # relative paths, sorted (directories); [] for a file entry
    problem: str | None = None


@dataclass
class ScanReport:
    """What one scan did. ``rejections`` lists this scan's new verdicts of ``rejected``."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    rejected: int = 0
    pending: int = 0
    gone: int = 0
    valid: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    incomplete: bool = False  # the deadline passed: some new/changed entries wait for a rescan

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready mapping."""
        return {
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "pending": self.pending,
            "gone": self.gone,
            "valid": self.valid,
            "rejections": [list(r) for r in self.rejections],
            "error": self.error,
            "incomplete": self.incomplete,
        }


# ---------------------------------------------------------------------------------------------
# Discovery


def discover(episodes_dir: Path) -> list[Path]:
    """Top-level entries of ``episodes_dir`` that are episodes, sorted by name. Symlinks are
    included (whatever their target): :func:`escapes` decides whether they are refused.
    Raises ``OSError`` when the folder cannot be listed."""
    out = []
    with os.scandir(episodes_dir) as it:
        for e in it:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if kind_of(e.name, is_dir) is not None:
                out.append(e.path)
    out.sort()  # as strings: sorting Path objects costs more than the whole stat walk
    return [Path(p) for p in out]


def named(episodes_dir: Path, names: set[str]) -> list[Path]:
    """The entries among ``names`` (top-level names the watcher saw change) that exist and look
    like episodes, sorted."""
    out = []
    for name in sorted(names):
        path = episodes_dir / name
        try:
            is_dir = path.is_dir()
        except OSError:
            is_dir = False
        if os.path.lexists(path) and kind_of(name, is_dir) is not None:
            out.append(path)
    return out


def escapes(path: Path, root: Path) -> str | None:
    """Why the symlink ``path`` is refused (its target leaves ``root``), or None."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return f"symlink to {os.readlink(path) if path.is_symlink() else '?'} is broken"
    if not target.is_relative_to(root):
        return f"symlink to {target} leaves the episodes folder (refused)"
    return None


def entry_stat(path: Path, root: Path) -> EntryStat:
    """Walk ``path`` once: signature, newest mtime, marker, file list; a ``problem`` when an
    inner symlink leaves ``root``, something in it is neither a regular file nor a directory
    (a FIFO would block the reader forever), or the entry cannot be walked. Opens no file."""
    try:
        st = path.stat()
    except OSError as exc:
        return EntryStat("", 0.0, False, [], f"cannot stat ({exc.strerror or exc})")
    special = special_file(st.st_mode)
    if special is not None:
        return EntryStat("", st.st_mtime, False, [], special)
    if S_ISREG(st.st_mode):
        return EntryStat(f"f:{st.st_size}:{st.st_mtime_ns}", st.st_mtime, False, [])
    parts: list[str] = []
    files: list[str] = []
    newest = st.st_mtime
    has_marker = False
    stack = [(path, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            return EntryStat("", newest, False, [], f"{rel or '.'}: cannot list ({exc.strerror})")
        for e in entries:
            name = rel + e.name
            try:
                if e.is_symlink():
                    why = escapes(Path(e.path), root)
                    if why:
                        return EntryStat("", newest, False, [], f"{name}: {why}")
                est = e.stat()
            except OSError as exc:
                return EntryStat("", newest, False, [], f"{name}: cannot stat ({exc.strerror})")
            newest = max(newest, est.st_mtime)
            special = special_file(est.st_mode)
            if special is not None:
                return EntryStat("", newest, False, [], f"{name}: {special}")
            if S_ISDIR(est.st_mode):
                if name.count("/") >= 16:
                    return EntryStat("", newest, False, [], f"{name}: directories nest too deep")
                stack.append((Path(e.path), name + "/"))
                continue
            parts.append(f"{name}\0{est.st_size}\0{est.st_mtime_ns}")
            files.append(name)
            if rel == "" and e.name == COMPLETE_MARKER:
                has_marker = True
            if len(files) > MAX_FILES_PER_ENTRY:
                return EntryStat(
                    "", newest, False, [], f"more than {MAX_FILES_PER_ENTRY} files in one episode"
                )
    parts.sort()
    digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
    return EntryStat(f"d:{digest}", newest, has_marker, sorted(files))


def is_complete(stat: EntryStat, settle_s: float, now: float) -> bool:
    """The completeness rule: a ``COMPLETE`` marker, or nothing changed for ``settle_s``."""
    return stat.has_marker or now - stat.newest_mtime >= settle_s


# ---------------------------------------------------------------------------------------------
# Scan


Accept = Callable[[Episode], "str | None"]


def bounds_check(config: Any) -> Accept:
    """The ``features.out_of_bounds: skip`` policy as a scan/validate check: an episode with
    a recorded action outside its bounds is rejected with a reason naming step and name."""
    from trainer_core.features import bounds_problem

    features, clamp_bounds = config.features, config.safety.clamp_bounds
    return lambda episode: bounds_problem(episode, features, clamp_bounds)


def _reject(ledger: Ledger, report: ScanReport, key: str, reason: str, **fields: Any) -> None:
    ledger.record(key, status="rejected", reason=reason, **fields)
    report.rejected += 1
    report.rejections.append((key, reason))


def _process(
    path: Path,
    key: str,
    stat: EntryStat,
    ledger: Ledger,
    limits: IngestConfig,
    eval_fraction: float,
    now: float,
    present: set[str],
    report: ScanReport,
    accept: Accept | None = None,
) -> None:
    """Hash, read and record one new or changed complete entry."""
    known_hash = ledger.known_hash(key)
    try:
        digest = content_hash(path, stat.files or None)
    except OSError as exc:
        # The card's fault (EIO), not the episode's: no signature is recorded, so the next scan
        # reads it again and it is recorded as soon as the card reads again.
        _reject(ledger, report, key, f"cannot read ({exc})", signature=None, now=now)
        return
    if known_hash is not None and known_hash == digest:
        ledger.update_signature(key, stat.signature, now)
        report.unchanged += 1
        return
    try:
        episode = read_episode(path, limits)
    except EpisodeError as exc:
        _reject(
            ledger, report, key, str(exc), signature=stat.signature, now=now, content_hash=digest
        )
        return
    except Exception as exc:  # a reader bug must not stop the daemon; the reason says so
        _reject(
            ledger,
            report,
            key,
            f"unexpected reader error: {type(exc).__name__}: {exc}",
            signature=stat.signature,
            now=now,
            content_hash=digest,
        )
        return
    refusal = accept(episode) if accept is not None else None
    if refusal is not None:
        _reject(
            ledger,
            report,
            key,
            refusal,
            signature=stat.signature,
            now=now,
            content_hash=digest,
            episode_id=episode.episode_id,
        )
        return
    twin = ledger.valid_path_with_hash(digest, key)
    # A twin counts only as a live entry of this folder: the copy an operator pointed
    # paths.episodes at must not lose to the old folder it came from, which still exists on
    # disk but is no longer scanned (validate judges a folder the same way).
    live = twin in present or (
        twin is not None and os.path.dirname(twin) == os.path.dirname(key) and os.path.lexists(twin)
    )
    if twin is not None and live:
        _reject(
            ledger,
            report,
            key,
            f"same content as {twin} (duplicate)",
            signature=stat.signature,
            now=now,
            content_hash=digest,
            episode_id=episode.episode_id,
        )
        return
    ledger.record(
        key,
        status="valid",
        signature=stat.signature,
        now=now,
        content_hash=digest,
        episode_id=episode.episode_id,
        split=split_for(episode.episode_id, eval_fraction),
        layout=episode.layout,
        n_steps=len(episode.steps),
    )
    report.valid += 1


def scan(
    episodes_dir: Path,
    ledger: Ledger,
    limits: IngestConfig,
    eval_fraction: float,
    now: float,
    deadline: float | None = None,
    only: set[str] | None = None,
    accept: Accept | None = None,
) -> ScanReport:
    """Bring the ledger in line with ``episodes_dir`` (see the module docstring for the rules).
    ``now`` is the wall clock (``time.time()``), injectable for tests. Past ``deadline`` (a
    ``time.monotonic()`` value) no further new or changed entry is read: they stay as they are
    in the ledger for the next scan, and ``report.incomplete`` says to rescan soon. ``only``:
    look at these top-level names alone (what the watcher saw change), not the whole folder;
    entries of the ledger outside them are left as they are. ``accept``: a further check on
    each parsed episode, returning why it is rejected (e.g. actions out of bounds) or None."""
    report = ScanReport()
    ledger.ensure_splits(eval_fraction)
    episodes_dir = Path(episodes_dir)
    try:
        root = episodes_dir.resolve(strict=True)
        entries = discover(episodes_dir) if only is None else named(episodes_dir, only)
    except OSError as exc:
        # Never mark everything gone because the folder is briefly unreadable.
        report.error = f"{episodes_dir}: cannot list the episodes folder ({exc.strerror or exc})"
        return report
    known = ledger.known(None if only is None else [str(episodes_dir / n) for n in only])
    present = {str(p) for p in entries}

    def out_of_time() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            report.incomplete = True
        return report.incomplete

    for path in entries:
        key = str(path)
        row = known.get(key)
        is_new = row is None or row.status == "gone"
        if path.is_symlink():
            why = escapes(path, root)
            if why:
                signature = "link:" + os.readlink(path)
                if row is not None and row.signature == signature and not is_new:
                    report.unchanged += 1
                    continue
                if out_of_time():
                    continue
                report.new += is_new
                report.changed += not is_new
                _reject(ledger, report, key, why, signature=signature, now=now)
                continue
        stat = entry_stat(path, root)
        if stat.problem is not None:
            stat.signature = "problem:" + stat.problem
        if row is not None and not is_new and stat.signature and row.signature == stat.signature:
            report.unchanged += 1
            continue
        if stat.problem is None and not is_complete(stat, limits.settle_s, now):
            report.pending += 1
            continue
        if out_of_time():
            continue
        report.new += is_new
        report.changed += not is_new
        if stat.problem is not None:
            _reject(ledger, report, key, stat.problem, signature=stat.signature, now=now)
            continue
        _process(path, key, stat, ledger, limits, eval_fraction, now, present, report, accept)
    # Only entries missing from the listing are gone: one skipped for the deadline is listed.
    vanished = [k for k, r in known.items() if k not in present and r.status != "gone"]
    ledger.mark_gone(vanished, now)
    report.gone = len(vanished)
    return report


# ---------------------------------------------------------------------------------------------
# `continuon-trainer validate PATH... [--json]`


def _is_episode_dir(path: Path) -> bool:
    return any((path / n).exists() for n in ("metadata.json", "episode.json", "steps"))


def _targets(path: Path) -> list[tuple[Path, str | None]]:
    """``(episode path, refusal)`` pairs for one command-line PATH."""
    if not path.exists() and not path.is_symlink():
        return [(path, "does not exist")]
    if path.is_dir() and not _is_episode_dir(path):
        root = path.resolve()
        out: list[tuple[Path, str | None]] = []
        for entry in discover(path):
            why = escapes(entry, root) if entry.is_symlink() else None
            if why is None:
                why = entry_stat(entry, root).problem
            out.append((entry, why))
        return out
    # Judged as the scan would judge it in its folder (a FIFO must not block the reader).
    return [(path, entry_stat(path, path.absolute().parent.resolve()).problem)]


def check_one(
    path: Path, refusal: str | None, limits: IngestConfig, accept: Accept | None = None
) -> dict[str, Any]:
    """The verdict on one episode, as a JSON-ready mapping."""
    result: dict[str, Any] = {"path": str(path), "ok": False}
    if refusal is not None:
        result["reason"] = refusal
        return result
    try:
        episode = read_episode(path, limits)
    except EpisodeError as exc:
        result["reason"] = str(exc)
        return result
    except Exception as exc:  # report, never a traceback, for an operator's command
        result["reason"] = f"unexpected reader error: {type(exc).__name__}: {exc}"
        return result
    refused = accept(episode) if accept is not None else None
    if refused is not None:
        result["reason"] = refused
        return result
    result.update(
        ok=True, episode_id=episode.episode_id, steps=len(episode.steps), layout=episode.layout
    )
    return result


# What the layout letters of FORMATS §1 mean, for the operator reading ``validate``.
LAYOUTS = {
    "A": "folder of JSONL shards",
    "B": "one JSON file",
    "C": "task-library JSON",
    "D": "TFRecord",
    "E": "camelCase JSONL",
}


def describe(steps: int, layout: str) -> str:
    """``1 step, layout A (folder of JSONL shards)``."""
    name = LAYOUTS.get(layout)
    return f"{steps} step{'' if steps == 1 else 's'}, layout {layout}" + (
        f" ({name})" if name else ""
    )


def validate_command(args: Any, config: Any) -> int:
    """``continuon-trainer validate PATH... [--json]``: one line per episode (``OK <path> (<n>
    steps, layout X)`` or ``REJECTED <path>: <reason>``), or a JSON list with ``--json``.
    A PATH is an episode or a folder of episodes. Exit 1 when anything was rejected or no
    episode was found, else 0. Never modifies anything."""
    limits: IngestConfig = config.ingest
    accept = bounds_check(config)
    results = []
    for raw in args.paths:
        try:
            targets = _targets(Path(raw))
        except OSError as exc:
            targets = [(Path(raw), f"cannot list ({exc.strerror or exc})")]
        if not targets:
            print(f"no episodes in {raw}", file=sys.stderr)
        results.extend(check_one(p, why, limits, accept) for p, why in targets)
    if config.features.images:  # frames are read, not just referenced
        from trainer_core.frames import frames_problem

        for r in results:
            problem = frames_problem(Path(r["path"]), config.features, limits) if r["ok"] else None
            if problem:
                r["ok"], r["reason"] = False, problem
    if getattr(args, "ledger", False):
        from daemon.lineage import add_ledger_view

        add_ledger_view(config, results)
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["ok"]:
                print(f"OK {r['path']} ({describe(r['steps'], r['layout'])})")
            else:
                print(f"REJECTED {r['path']}: {r['reason']}")
            if r.get("ledger"):
                print(f"  ledger: {r['ledger']}")
    return 0 if results and all(r["ok"] for r in results) else 1
