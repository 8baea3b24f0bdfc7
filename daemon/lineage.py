"""Quarantine and lineage verbs: which episodes trained which release, and keeping bad ones out.

``episodes list [--status S]``, ``episodes show PATH|ID``, ``episodes exclude PATH|ID --reason``,
``episodes include PATH|ID`` and ``releases show ID``. An excluded episode stays on disk,
untouched; the ledger records the reason and :meth:`daemon.ledger.Ledger.valid_episodes` never
returns it, so it neither trains nor evaluates. The ledger is opened per verb (SQLite WAL: safe
while the daemon runs). No torch here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from daemon.config import TrainerConfig
from daemon.ledger import Ledger, LedgerError
from daemon.store import AdapterStore, StoreError

STATUSES = ("valid", "rejected", "gone", "excluded")


def _open(config: TrainerConfig) -> Ledger:
    return Ledger.open(config.ledger_path)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


def episodes_list_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """One line per episode the ledger knows: status (``excluded`` wins), id, path, reason."""
    want = getattr(args, "status", None)
    try:
        with _open(config) as ledger:
            rows = ledger.all_episodes()
            reasons = {p: r for p, _h, r, _s, _a in ledger.exclusions()}
    except LedgerError as exc:
        return _fail(str(exc))
    for path, eid, _h, status, reason, excluded in rows:
        shown = "excluded" if excluded else status
        if want and shown != want:
            continue
        why = reasons.get(path, "quarantined (same content as an excluded episode)")
        note = why if excluded else (reason or "")
        print(f"{shown:<9} {eid or '-':<24} {path}" + (f"  ({note})" if note else ""))
    return 0


def _find(ledger: Ledger, key: str) -> tuple | None:
    return ledger.episode(key)


def episodes_exclude_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """Quarantine an episode by path or id: it never trains or evaluates again."""
    try:
        with _open(config) as ledger:
            row = _find(ledger, args.episode)
            if row is None:
                return _fail(f"the ledger knows no episode {args.episode!r} (path or id)")
            ledger.exclude(row[0], row[2], args.reason, "operator", time.time())
    except LedgerError as exc:
        return _fail(str(exc))
    print(f"excluded {row[0]}: {args.reason} (the file is left as it is)")
    return 0


def episodes_include_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """Lift an episode's quarantine."""
    try:
        with _open(config) as ledger:
            row = _find(ledger, args.episode)
            path = row[0] if row else args.episode
            if not ledger.include(path):
                return _fail(f"{path} is not excluded")
    except LedgerError as exc:
        return _fail(str(exc))
    print(f"included {path}: it trains and evaluates again")
    return 0


def episodes_show_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """One episode: its verdict, split, quarantine and the releases that trained on it."""
    try:
        with _open(config) as ledger:
            row = _find(ledger, args.episode)
            if row is None:
                return _fail(f"the ledger knows no episode {args.episode!r} (path or id)")
            path, eid, digest, status, reason, split, n_steps = row
            releases = ledger.releases_for(digest) if digest else []
            quarantine = [x for x in ledger.exclusions() if x[0] == path or x[1] == digest]
    except LedgerError as exc:
        return _fail(str(exc))
    info: dict[str, Any] = {
        "path": path,
        "episode_id": eid,
        "content_hash": digest,
        "status": status,
        "reason": reason,
        "split": split,
        "steps": n_steps,
        "excluded": [{"reason": x[2], "source": x[3], "at": x[4]} for x in quarantine],
        "trained_releases": releases,
    }
    print(json.dumps(info, indent=2))
    return 0


def release_lineage(config: TrainerConfig, release_id: str) -> dict[str, Any]:
    """What ``releases show`` prints: the card's base, config, metrics and decision, the
    episodes (ids and paths) it trained on, its bad mark and its health record."""
    from daemon.health import read_health_record  # the health window's own file

    store = AdapterStore(config.adapters_dir, config.paths.manifest)
    release = next((r for r in store.releases() if r.id == release_id), None)
    if release is None:
        raise StoreError(f"no release {release_id!r}")
    card = release.card
    hashes = [h for h in card.get("episode_hashes") or [] if isinstance(h, str)]
    episodes: list[dict[str, Any]] = []
    if config.ledger_path.exists() and hashes:
        with _open(config) as ledger:
            found = ledger.episodes_by_hash(hashes)
        episodes = [{"episode_id": e, "path": p, "content_hash": h} for p, e, h in found]
    known = {e["content_hash"] for e in episodes}
    missing = [h for h in hashes if h not in known]  # the ledger lost them (rebuilt)
    episodes += [{"episode_id": None, "path": None, "content_hash": h} for h in missing]
    return {
        "id": release.id,
        "created": release.created,
        "current": release.is_current,
        "legacy": release.legacy,
        "sha256": release.sha256,
        "base": {"path": card.get("base_path"), "sha256": card.get("base_sha256")},
        "config": {k: card.get(k) for k in ("policy", "features", "lora", "job")},
        "metrics": card.get("metrics"),
        "decision": card.get("decision"),
        "bad": release.bad,
        "health": read_health_record(config, release.id),
        "episodes": episodes,
    }


def releases_show_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """``releases show ID``: the release's lineage as JSON."""
    try:
        info = release_lineage(config, args.release)
    except (OSError, StoreError, LedgerError) as exc:
        return _fail(str(exc))
    print(json.dumps(info, indent=2, default=str))
    return 0


def risk_reason(risky: list[dict[str, Any]]) -> list[str]:
    """The decision's line naming the episodes to look at (empty when none stands out)."""
    if not risky:
        return []
    names = ", ".join(
        f"{r['path']} ({r['out_of_bounds']:.0%} out of bounds, "
        f"{r['acting_near_person']:.0%} acting near a person)"
        for r in risky
    )
    return [f"NOTE episodes: the training episodes most toward the safety checks: {names}"]


def add_ledger_view(config: TrainerConfig, results: list[dict[str, Any]]) -> None:
    """``validate --ledger``: each result gets ``ledger``, the ledger's word on that path
    (status, reason, quarantine), or why there is none."""
    if not config.ledger_path.exists():
        for r in results:
            r["ledger"] = f"no ledger at {config.ledger_path}"
        return
    try:
        with _open(config) as ledger:
            quarantined = {x[0]: x for x in ledger.exclusions()}
            hashes = {x[1]: x for x in ledger.exclusions() if x[1]}
            for r in results:
                row = ledger.episode(str(Path(r["path"]).absolute()))
                if row is None:
                    r["ledger"] = "not in the ledger"
                    continue
                path, _eid, digest, status, reason = row[:5]
                text = status + (f" ({reason})" if reason else "")
                excluded = quarantined.get(path) or hashes.get(digest)
                if excluded:
                    text += f", EXCLUDED: {excluded[2]} [{excluded[3]}]"
                r["ledger"] = text
    except LedgerError as exc:
        for r in results:
            r["ledger"] = f"ledger unusable: {exc}"
