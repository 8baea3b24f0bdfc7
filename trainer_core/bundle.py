"""What travels off the robot and back: the training bundle and a sealed adapter (torch-free).

A **bundle** (``continuon-trainer export --out BUNDLE``, written by ``daemon/bundle.py``) is
self-describing::

    BUNDLE/bundle.json           format, created, config sections, base, release, splits, files
    BUNDLE/episodes/train/<rel>  the train split's episodes, copied as they are
    BUNDLE/episodes/eval/<rel>   the held-out split's episodes (for the cloud's own report only)
    BUNDLE/base/<name>           the base policy's weights and card
    BUNDLE/release/<id>/         the current release (the baseline), when there is one

``bundle.json["files"]`` maps every other file's relative path to its sha256; :func:`read_bundle`
checks them all (and that no train episode is in ``held_back``) before anything is trained.

A **sealed adapter** is a candidate directory (``adapter_config.json``,
``adapter_model.safetensors``, ``normalizer.json``, ``card.json``: exactly what the job child's
``save_candidate`` writes) whose card also holds ``checksums``, the sha256 of the three other
files. :func:`seal_adapter` writes them, :func:`check_sealed` verifies them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.fsio import atomic_write_json, sha256_file

BUNDLE_FORMAT = "continuon-trainer.bundle/1"
BUNDLE_FILE = "bundle.json"
ADAPTER_PARTS = ("adapter_config.json", "adapter_model.safetensors", "normalizer.json")
CARD_FILE = "card.json"


class BundleError(ValueError):
    """A bundle or a sealed adapter is incomplete, altered or inconsistent; the message says
    which file and why."""


def tree_files(root: Path) -> list[str]:
    """Every regular file under ``root`` as sorted relative POSIX paths (symlinks refused)."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                raise BundleError(f"{path}: a symlink (a bundle holds plain files only)")
            out.append(path.relative_to(root).as_posix())
    return sorted(out)


def checksums(root: Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of the named files under ``root``."""
    return {n: sha256_file(root / n) for n in names}


def verify_checksums(root: Path, expected: dict[str, str], what: str) -> None:
    """BundleError naming the first file that is missing or whose bytes differ."""
    for name, digest in sorted(expected.items()):
        path = root / name
        if not path.is_file():
            raise BundleError(f"{what}: {name} is missing")
        if sha256_file(path) != digest:
            raise BundleError(f"{what}: {name} has sha256 {sha256_file(path)}, expected {digest}")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and the parsed ``bundle.json``."""

    root: Path
    meta: dict[str, Any]

    def split(self, name: str) -> list[dict[str, Any]]:
        """Entries of ``train`` or ``eval``: ``{"path": rel, "hash": sha256, "episode_id"}``."""
        return list(self.meta["splits"][name])

    def paths(self, name: str) -> list[Path]:
        """Absolute paths of a split's episodes inside the bundle."""
        return [self.root / e["path"] for e in self.split(name)]

    @property
    def base_path(self) -> Path:
        """The bundled base weights."""
        return self.root / self.meta["base"]["weights"]

    @property
    def release_dir(self) -> Path | None:
        """The bundled current release (the baseline), or None when the robot had none."""
        rel = self.meta.get("release")
        return self.root / rel["dir"] if rel else None

    @property
    def release_id(self) -> str | None:
        """The id of the bundled release, or None."""
        rel = self.meta.get("release")
        return rel["id"] if rel else None


def read_bundle(root: Path) -> Bundle:
    """Parse and verify a bundle: format, every checksum, no file unaccounted for, and no train
    episode among the held-back (robot eval) hashes. Raises :class:`BundleError`."""
    root = Path(root).absolute()
    try:
        meta = json.loads((root / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{root / BUNDLE_FILE}: unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(f"{root / BUNDLE_FILE}: format {got!r}, expected {BUNDLE_FORMAT!r}")
    for key in ("files", "splits", "config", "base"):
        if not isinstance(meta.get(key), dict):
            raise BundleError(f"{root / BUNDLE_FILE}: {key!r} missing or not an object")
    files: dict[str, str] = meta["files"]
    verify_checksums(root, files, str(root))
    extra = sorted(set(tree_files(root)) - set(files) - {BUNDLE_FILE})
    if extra:
        raise BundleError(f"{root}: {extra[0]} is not listed in {BUNDLE_FILE} (altered bundle)")
    held = set(meta["splits"].get("held_back", []))
    for entry in meta["splits"].get("train", []):
        if entry["hash"] in held:
            raise BundleError(
                f"{root}: train episode {entry['path']} is held back (a robot eval episode)"
            )
    if not meta["splits"].get("train"):
        raise BundleError(f"{root}: no train episodes")
    return Bundle(root, meta)


def seal_adapter(adapter_dir: Path) -> dict[str, str]:
    """Record the sha256 of the adapter's files in its card (rewritten atomically)."""
    adapter_dir = Path(adapter_dir)
    card_path = adapter_dir / CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["checksums"] = checksums(adapter_dir, list(ADAPTER_PARTS))
    atomic_write_json(card_path, card)
    return card["checksums"]


def check_sealed(adapter_dir: Path) -> dict[str, Any]:
    """The card of a sealed adapter after checking its files and checksums; BundleError else."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise BundleError(f"{adapter_dir}: not a directory")
    for name in (*ADAPTER_PARTS, CARD_FILE):
        if not (adapter_dir / name).is_file():
            raise BundleError(f"{adapter_dir}: {name} is missing (not an adapter directory)")
    try:
        card = json.loads((adapter_dir / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{adapter_dir / CARD_FILE}: unreadable: {exc}") from None
    if not isinstance(card, dict) or card.get("kind") != "continuon-lora-adapter":
        raise BundleError(f"{adapter_dir / CARD_FILE}: not a continuon-lora-adapter card")
    sums = card.get("checksums")
    if not isinstance(sums, dict) or set(sums) != set(ADAPTER_PARTS):
        raise BundleError(
            f"{adapter_dir / CARD_FILE}: no checksums of {', '.join(ADAPTER_PARTS)} "
            "(seal it with trainer_core.bundle.seal_adapter)"
        )
    verify_checksums(adapter_dir, sums, str(adapter_dir))
    return card
