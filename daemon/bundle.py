"""``continuon-trainer export --out BUNDLE``: what trains off the robot, in one folder.

The bundle (format in :mod:`trainer_core.bundle`) holds the ledger's valid episodes copied as
they are (each copy's content hash checked against the ledger's; the originals are only read),
the splits by content hash with the held-back set (every eval episode: the cloud must never
train on what this robot judges with), the features/policy/LoRA/job/safety/promotion config,
the base policy, the current (or a named) release as the baseline, and the sha256 of every
file. It is staged beside ``--out`` and renamed into place, so a bundle that exists is whole.

Safe beside a running daemon: the ledger is only read (SQLite WAL). When no daemon holds the
state folder the episodes folder is scanned first, so a never-run root exports its episodes.
No torch here.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.instance import AlreadyRunning, take_instance_lock
from daemon.ledger import EpisodeRow, Ledger
from daemon.store import AdapterStore, StoreError
from safety.config import merge_manifest_safety
from trainer_core.basefile import base_weights_file
from trainer_core.bundle import BUNDLE_FILE, BUNDLE_FORMAT, checksums, tree_files
from trainer_core.fsio import atomic_write_json, sha256_file, staged_dir
from trainer_core.rlds.hashing import content_hash

if TYPE_CHECKING:
    from daemon.config import TrainerConfig


class ExportError(RuntimeError):
    """The robot's state cannot make a bundle; nothing was written."""


@dataclass
class ExportReport:
    """What went into a bundle, and what was left out and why."""

    path: Path
    train: int = 0
    eval: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    release_id: str | None = None


def _entry_name(row: EpisodeRow, episodes_dir: Path, taken: set[str]) -> str:
    """The episode's path relative to the episodes folder (unique inside the bundle)."""
    try:
        rel = Path(row.path).resolve().relative_to(episodes_dir.resolve()).as_posix()
    except ValueError:
        rel = Path(row.path).name
    name, n = rel, 1
    while name in taken:
        n += 1
        name = f"{rel}.{n}"
    taken.add(name)
    return name


def _copy_episode(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=False)
    else:
        shutil.copyfile(src, dest)


def _copy_split(
    rows: list[EpisodeRow], split: str, staging: Path, episodes_dir: Path, report: ExportReport
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    for row in rows:
        rel = f"episodes/{split}/{_entry_name(row, episodes_dir, taken)}"
        try:
            _copy_episode(Path(row.path), staging / rel)
            digest = content_hash(staging / rel)
        except OSError as exc:
            report.skipped[row.path] = f"unreadable: {exc}"
            shutil.rmtree(staging / rel, ignore_errors=True)
            continue
        if digest != row.content_hash:  # changed since the ledger saw it: not the same episode
            report.skipped[row.path] = "changed since the ledger recorded it (rescan first)"
            _remove(staging / rel)
            continue
        entries.append({"path": rel, "hash": digest, "episode_id": row.episode_id})
    return entries


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def rescan(cfg: TrainerConfig, ledger: Ledger) -> None:
    """One whole scan of the episodes folder into ``ledger``, as the daemon's would be."""
    import time

    from daemon.ingest import bounds_check, scan

    scan(
        cfg.paths.episodes,
        ledger,
        cfg.ingest,
        cfg.job.eval_fraction,
        time.time(),
        accept=bounds_check(cfg),
    )


def _scan_if_idle(cfg: TrainerConfig, ledger: Ledger) -> bool:
    """Scan the episodes folder unless a daemon holds the state folder (it keeps the ledger)."""
    try:
        lock = take_instance_lock(cfg.state_dir, os.getpid())
    except AlreadyRunning:
        return False
    try:
        rescan(cfg, ledger)
    finally:
        lock.close()
    return True


def export_bundle(cfg: TrainerConfig, out: Path, release: str | None = None) -> ExportReport:
    """Write the bundle at ``out`` (which must not exist); raises :class:`ExportError`."""
    out = Path(out).absolute()
    if out.exists():
        raise ExportError(f"{out} exists: choose a new folder")
    if cfg.policy.family == "hf-causal-lm":
        raise ExportError("bundles of hf-causal-lm policies are not supported yet")
    weights = base_weights_file(cfg.policy)
    card = weights.with_suffix(".json")
    if not weights.is_file() or not card.is_file():
        raise ExportError(f"no base policy at {weights} (and its card {card.name})")
    store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest, model_name=cfg.policy.model_name)
    try:
        chosen = store.current() if release is None else _release(store, release)
        safety = cfg.safety
        if cfg.safety.from_manifest:
            safety = merge_manifest_safety(cfg.safety, store.manifest_safety(), [])
    except (OSError, StoreError, ValueError) as exc:
        raise ExportError(f"adapter store: {exc}") from None
    if chosen is not None and chosen.legacy:
        chosen = None  # an adopted legacy adapter cannot be a baseline (as on the robot)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out, release_id=chosen.id if chosen else None)
    with staged_dir(out) as staging:
        with Ledger.open(cfg.ledger_path) as ledger:
            scanned = _scan_if_idle(cfg, ledger)
            evals = ledger.valid_episodes("eval")
            held_back = sorted({r.content_hash for r in evals})
            train = [r for r in ledger.valid_episodes("train") if r.content_hash not in held_back]
            released = sorted(ledger.released_hashes())
        if not train:
            raise ExportError("no valid train episodes in the ledger (is the daemon scanning?)")
        episodes_dir = cfg.paths.episodes
        splits = {
            "train": _copy_split(train, "train", staging, episodes_dir, report),
            "eval": _copy_split(evals, "eval", staging, episodes_dir, report),
            "held_back": held_back,
            "released": released,  # trained on by some release (for the record)
        }
        report.train, report.eval = len(splits["train"]), len(splits["eval"])
        if not splits["train"]:
            raise ExportError(f"no train episode could be copied: {report.skipped}")
        (staging / "base").mkdir()
        shutil.copyfile(weights, staging / "base" / weights.name)
        shutil.copyfile(card, staging / "base" / card.name)
        release_meta = None
        if chosen is not None:
            rel_dir = staging / "release" / chosen.id
            rel_dir.mkdir(parents=True)
            for f in sorted(chosen.path.iterdir()):
                if f.is_file():
                    shutil.copyfile(f, rel_dir / f.name)
            release_meta = {"id": chosen.id, "dir": f"release/{chosen.id}"}
        files = tree_files(staging)
        meta = {
            "format": BUNDLE_FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "robot": {"root": str(cfg.root), "scanned_before_export": scanned},
            "config": {
                "features": cfg.features.model_dump(mode="json"),
                "policy": cfg.policy.model_dump(mode="json"),
                "lora": cfg.lora.model_dump(mode="json"),
                "job": cfg.job.model_dump(mode="json"),
                "ingest": cfg.ingest.model_dump(mode="json"),
                "safety": safety.model_dump(mode="json"),
                "promotion": cfg.promotion.model_dump(mode="json"),
            },
            "base": {
                "weights": f"base/{weights.name}",
                "card": f"base/{card.name}",
                "sha256": sha256_file(weights),
            },
            "release": release_meta,
            "splits": splits,
            "skipped": report.skipped,
            "files": checksums(staging, files),
        }
        atomic_write_json(staging / BUNDLE_FILE, meta)
    return report


def _release(store: AdapterStore, rid: str) -> Any:
    for r in store.releases():
        if r.id == rid:
            return r
    raise StoreError(f"no release {rid!r} (see `continuon-trainer releases`)")


def export_command(args: Any, config: TrainerConfig) -> int:
    """``continuon-trainer export --out PATH [--format bundle] [--release ID]``."""
    try:
        report = export_bundle(config, args.out, args.release)
    except ExportError as exc:
        print(f"continuon-trainer export: {exc}", file=sys.stderr)
        return 1
    for path, why in report.skipped.items():
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(
        f"wrote bundle {report.path}: {report.train} train / {report.eval} held-out episodes, "
        f"baseline {report.release_id or 'base'}; train it with\n"
        f"  torchrun --nproc_per_node=N -m trainer_core.distributed {report.path} --out ADAPTER"
    )
    return 0
