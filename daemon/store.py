"""The adapter store: immutable releases, the ``current`` symlink, and the model manifest.

Layout (architecture §7)::

    <model>/adapters/releases/<id>/   immutable: the candidate's files + release.json + card.json
    <model>/adapters/current          symlink -> releases/<id>
    <model>/adapters/.lock            flock: one writer at a time (daemon vs CLI rollback)
    <model>/manifest.json             what continuonos reads; the truth about what is current

Every change goes in this order, each step durable before the next:

1. the release directory is staged under ``releases/.tmp-*``, fsynced and renamed into place
   (so a directory named like a release is always complete);
2. the manifest is rewritten atomically (trainer_core.fsio) to name it: ``paths.adapter_dir`` and
   ``paths.adapter`` point INTO the release directory (never through ``current``, which still
   names the old one at that moment), ``adapter_meta`` gets type/rank/alpha/release_id/sha256,
   top-level ``generation`` goes up by one and ``previous`` names the release it replaced;
3. ``current`` is replaced atomically (new symlink under a temp name, ``os.replace``, fsync dir).

A crash between any two steps leaves the manifest naming a complete release; :meth:`recover`
removes leftovers and points ``current`` where the manifest says. Every other manifest field
(the runtime's) is kept as it was, unknown ones included.

If no manifest exists yet, the first promotion creates one from a minimal continuonos-shaped
template: ``{model_name, runtime: {}, paths: {adapter_dir, adapter}, adapter_meta, generation,
previous}``, ``model_name`` taken from the card's ``model_name`` or the store's ``model_name``.

This module is imported by the daemon: no torch, no numpy, and nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer_core.fsio import (
    TEMP_PREFIX,
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    mkdirs_durable,
    sha256_file,
)

if TYPE_CHECKING:
    import argparse

    from daemon.config import TrainerConfig

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CARD_FILE = "card.json"
RELEASE_FILE = "release.json"
CANDIDATE_FILES = (ADAPTER_CONFIG, ADAPTER_FILE, "normalizer.json", CARD_FILE)
LEGACY_NAMES = ("lora_adapters.pt", ADAPTER_FILE)  # looked for in an old adapters/current/
LEGACY_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
MANIFEST_MAX_BYTES = 1 << 20
REQUIRED_FIELDS: dict[str, type] = {"model_name": str, "runtime": dict, "paths": dict}
RELEASE_ID = re.compile(r"^r(\d+)-[0-9A-Za-z-]+$")
LOCK_FILE = ".lock"
MARKS_FILE = "marks.json"  # {"bad": {id: {"reason", "at"}}, "forced": [id, ...]}


class StoreError(RuntimeError):
    """The store or the manifest cannot be used as they are; nothing was changed."""


@dataclass(frozen=True)
class Release:
    """One immutable release directory and what is known about it."""

    id: str
    path: Path
    created: str  # ISO 8601 UTC
    generation: int
    sha256: str  # of the adapter file
    adapter_file: str  # file name inside ``path``
    format: str  # safetensors | torch-zip | pickle | json
    rank: int | None = None
    alpha: float | None = None
    legacy: bool = False
    card: dict[str, Any] = field(default_factory=dict)
    is_current: bool = False
    is_previous: bool = False
    bad: str | None = None  # why it was marked bad (never made current again automatically)

    @property
    def adapter_path(self) -> Path:
        """The release's adapter file."""
        return self.path / self.adapter_file

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The shadow-evaluation metrics the card was promoted with, if any."""
        m = self.card.get("metrics")
        return m if isinstance(m, dict) else None


class AdapterStore:
    """Releases under ``adapters_dir`` and the manifest at ``manifest_path`` (see module doc)."""

    def __init__(
        self, adapters_dir: Path, manifest_path: Path, model_name: str | None = None
    ) -> None:
        self.dir = Path(adapters_dir).absolute()
        self.releases_dir = self.dir / "releases"
        self.current_link = self.dir / "current"
        self.manifest_path = Path(manifest_path).absolute()
        self.model_name = model_name

    # ----------------------------------------------------------------------------- reading

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, validated; None if there is none yet. StoreError if it is unusable."""
        return read_manifest(self.manifest_path)

    def manifest_safety(self) -> dict[str, Any] | None:
        """The manifest's ``safety`` block (for the safety head), or None when it has none."""
        manifest = self.read_manifest()
        return None if manifest is None else manifest.get("safety")

    def current(self) -> Release | None:
        """The release the manifest names, or None (no manifest, or not one of ours yet)."""
        manifest = self.read_manifest()
        rid = _current_id(manifest)
        return None if rid is None else self._release(rid, manifest)

    def releases(self) -> list[Release]:
        """Every intact release, oldest first (damaged ones: :meth:`inventory`)."""
        return self.inventory()[0]

    def inventory(self) -> tuple[list[Release], list[tuple[str, str]]]:
        """Intact releases oldest first, and ``(id, problem)`` for each damaged directory named
        like a release (e.g. no release.json). A damaged *current* release is a StoreError: that
        one is not skipped."""
        manifest = self.read_manifest()
        current = _current_id(manifest)
        out, damaged = [], []
        for p in self._release_dirs():
            try:
                out.append(self._release(p.name, manifest))
            except StoreError as exc:
                if not p.exists():
                    continue  # pruned by another process while we looked (readers take no lock)
                if p.name == current:
                    raise
                damaged.append((p.name, str(exc)))
        return sorted(out, key=lambda r: (r.generation, r.id)), sorted(damaged)

    def _release_dirs(self) -> list[Path]:
        """Directories under ``releases/`` named like a release (complete or not)."""
        try:
            entries = list(self.releases_dir.iterdir())
        except FileNotFoundError:
            return []
        return [p for p in entries if RELEASE_ID.match(p.name) and p.is_dir()]

    def verify(self, release: Release) -> None:
        """StoreError unless the release's adapter file still hashes to its recorded sha256."""
        try:
            digest = sha256_file(release.adapter_path)
        except OSError as exc:
            raise StoreError(f"release {release.id}: cannot read adapter: {exc}") from exc
        if digest != release.sha256:
            raise StoreError(
                f"release {release.id}: {release.adapter_file} sha256 {digest} does not match "
                f"the recorded {release.sha256}"
            )

    # ----------------------------------------------------------------------------- changing

    def recover(self) -> list[str]:
        """Undo what a crash left half-done; return what was done, one line each.

        Removes temp entries (staged releases, temp symlinks, temp manifests, a legacy directory
        moved aside) and points ``current`` at the release the manifest names. A manifest naming
        a missing or corrupt release is a StoreError: that is not something to guess about.
        """
        actions: list[str] = []
        if not self.dir.is_dir():
            return actions
        if not self._needs_recovery():
            # Nothing to change: check without the lock, so a reader creates no lock file.
            manifest = self.read_manifest()
            rid = _current_id(manifest)
            if rid is not None:
                self.verify(self._release(rid, manifest))
            return actions
        with self._locked():
            for entry in self._leftovers():
                _remove(entry)
                actions.append(f"removed leftover {entry}")
            manifest = self.read_manifest()
            rid = _current_id(manifest)
            if rid is None:
                return actions
            release = self._release(rid, manifest)
            self.verify(release)
            if self.current_link.is_dir() and not self.current_link.is_symlink():
                actions.append(
                    f"{self.current_link} is a real directory; adopt_legacy() takes it over"
                )
            elif self._link_target() != rid:
                self._point_current(rid)
                actions.append(f"pointed current at {rid} (the manifest's release)")
        if self._current_marked_bad(rid) and self.rollback_target(rid) is not None:
            back = self.rollback(mark_bad=self.marks()["bad"][rid]["reason"])
            actions.append(f"finished the interrupted rollback from {rid} (bad) to {back.id}")
        return actions

    def _leftovers(self) -> list[Path]:
        """Temp entries a crash left: staged releases, temp symlinks and manifests."""
        return [
            entry
            for parent, prefix in (
                (self.releases_dir, TEMP_PREFIX),
                (self.dir, TEMP_PREFIX),
                (self.manifest_path.parent, f"{TEMP_PREFIX}{self.manifest_path.name}."),
            )
            for entry in _entries(parent, prefix)
        ]

    def _needs_recovery(self) -> bool:
        """Whether :meth:`recover` has anything to change (leftovers, or a stray ``current``)."""
        rid = _current_id(self.read_manifest())
        return (
            bool(self._leftovers())
            or (rid is not None and self._link_target() != rid)
            or self._current_marked_bad(rid)
        )

    def _current_marked_bad(self, rid: str | None) -> bool:
        """A rollback that marked ``rid`` bad and was interrupted before the manifest moved."""
        marks = self.marks()
        return rid is not None and rid in marks["bad"] and rid not in marks["forced"]

    def adopt_legacy(self) -> Release | None:
        """Turn an old real ``adapters/current/`` directory into a release, so rollback to it works.

        The adapter file (the manifest's ``paths.adapter`` name if present there, else
        ``lora_adapters.pt`` / ``adapter_model.safetensors`` / the one file with an adapter
        suffix) is sniffed, not loaded: torch zip, pickle or JSON text (or safetensors); its
        directory is copied into a release and hashed. If the manifest names no release yet it
        is pointed at this one. Then ``current`` becomes the symlink. None if there is nothing
        to adopt. Adopting twice (after a crash) reuses the release with the same hash.
        """
        if not (self.current_link.is_dir() and not self.current_link.is_symlink()):
            return None
        with self._locked():
            return self._adopt_locked()

    def promote(self, candidate_dir: Path, card: dict[str, Any]) -> Release:
        """Make ``candidate_dir`` (written by the job) a release and the current adapter.

        ``card`` is merged over the candidate's own card.json (which the job wrote: base sha256,
        episodes, config) and stored as the release's card.json. Rank and alpha come from the
        candidate's adapter_config.json (peft ``r``, ``lora_alpha``).
        """
        candidate_dir = Path(candidate_dir)
        rank, alpha = check_candidate(candidate_dir)
        card = {**_read_candidate_card(candidate_dir), **card}
        with self._locked():
            self._adopt_locked()
            manifest = self.read_manifest()
            if manifest is None:
                manifest = self._template(card)
            self._check_model(manifest)
            generation = self._next_generation(manifest)
            rid = f"r{generation}-{utc_stamp()}"
            release = self._stage(
                rid,
                generation,
                sources=[p for p in sorted(candidate_dir.iterdir()) if p.name != CARD_FILE],
                adapter_file=ADAPTER_FILE,
                extra={"rank": rank, "alpha": alpha, "legacy": False, "source": str(candidate_dir)},
                card=card,
            )
            return self._make_current(release, manifest, generation)

    def rollback(
        self, to: str | None = None, *, force: bool = False, mark_bad: str | None = None
    ) -> Release:
        """Make an earlier release current again.

        Without ``to``: the newest release older (by generation) than the current one that is
        not marked bad, so repeated rollbacks walk down the history and never return to the one
        just left. ``to`` names the release; a release marked bad is refused unless ``force``
        (then the operator's choice is recorded as forced). ``mark_bad`` (a reason) marks the
        release being left bad first, durably, so a crash mid-way is finished by
        :meth:`recover` rather than undone.
        """
        if _current_id(self.read_manifest()) is None and not self._has_legacy_dir():
            # Refused before taking the lock: a refused rollback creates nothing.
            raise StoreError(f"{self.manifest_path}: names no release; nothing to roll back")
        with self._locked():
            self._adopt_locked()
            manifest = self.read_manifest()
            current = _current_id(manifest)
            if manifest is None or current is None:
                raise StoreError(f"{self.manifest_path}: names no release; nothing to roll back")
            target = to if to is not None else self._walk_target(current)
            if not (RELEASE_ID.match(target) and (self.releases_dir / target).is_dir()):
                known = ", ".join(r.id for r in self.releases()) or "none"
                raise StoreError(f"no release {target!r} (releases: {known})")
            marks = self.marks()
            if target in marks["bad"] and not force:
                raise StoreError(
                    f"release {target} is marked bad ({marks['bad'][target]['reason']}); "
                    "use --force to make it current anyway"
                )
            release = self._release(target, manifest)
            self.verify(release)
            if mark_bad is not None and target != current:
                self._write_marks(_marked(marks, current, mark_bad))
            if force and target in marks["bad"]:
                forced = self.marks()
                forced["forced"] = sorted({*forced["forced"], target})
                self._write_marks(forced)
            if target == current:
                if self._link_target() != current:
                    self._point_current(current)
                return release
            return self._make_current(release, manifest, self._next_generation(manifest))

    def _walk_target(self, current: str) -> str:
        """The newest release older than ``current`` not marked bad; StoreError if none."""
        target = self.rollback_target(current)
        if target is None:
            raise StoreError(
                f"release {current} has no earlier release that is not marked bad to roll back to"
            )
        return target

    def rollback_target(self, current: str | None = None) -> str | None:
        """Where a plain rollback from ``current`` (default: the manifest's) would go."""
        current = current or _current_id(self.read_manifest())
        gen = _generation_of(current)
        if gen is None:
            return None
        bad = self.marks()["bad"]
        older = [
            r for r in self.releases() if r.generation < gen and r.id not in bad and r.id != current
        ]
        return older[-1].id if older else None

    def marks(self) -> dict[str, Any]:
        """The durable marks: ``bad`` (id -> {reason, at}) and ``forced`` (ids an operator made
        current despite the mark). An unreadable file is a StoreError, never "nothing is bad"."""
        path = self.dir / MARKS_FILE
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"bad": {}, "forced": []}
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable release marks: {exc}") from exc
        if not (isinstance(obj, dict) and isinstance(obj.get("bad", {}), dict)):
            raise StoreError(f"{path}: release marks must be an object with a 'bad' object")
        return {"bad": dict(obj.get("bad", {})), "forced": list(obj.get("forced", []))}

    def mark_bad(self, rid: str, reason: str) -> None:
        """Mark release ``rid`` bad (durable, atomic). Marking the current release bad rolls
        back from it at once, so the manifest never names a bad release unless forced."""
        if not (RELEASE_ID.match(rid) and (self.releases_dir / rid).is_dir()):
            raise StoreError(f"no release {rid!r}")
        if rid == _current_id(self.read_manifest()):
            self.rollback(mark_bad=reason)
            return
        with self._locked():
            self._write_marks(_marked(self.marks(), rid, reason))

    def clear_bad(self, rid: str) -> None:
        """Remove the bad mark of ``rid`` (an operator's decision)."""
        with self._locked():
            marks = self.marks()
            marks["bad"].pop(rid, None)
            marks["forced"] = [f for f in marks["forced"] if f != rid]
            self._write_marks(marks)

    def _write_marks(self, marks: dict[str, Any]) -> None:
        atomic_write_json(self.dir / MARKS_FILE, marks)

    def prune(self, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` releases; never the current one, the one a
        rollback would go to, the previous one unless it is marked bad, nor an adopted legacy
        adapter."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0 (got {keep})")
        removed: list[str] = []
        with self._locked():
            manifest = self.read_manifest()
            bad = self.marks()["bad"]
            previous = (manifest or {}).get("previous")
            # current, and what the next rollback would go to (the chain walking needs); the
            # manifest's previous only when it is not marked bad
            protected = {
                _current_id(manifest),
                None if previous in bad else previous,
                self._link_target(),
                self.rollback_target(),
            }
            intact, damaged = self.inventory()
            newest_first = list(reversed(intact))
            # the adopted legacy adapter (the install's original) is the last resort: kept
            doomed_ids = [
                r.id for r in newest_first[keep:] if r.id not in protected and not r.legacy
            ]
            # A damaged directory older than the current release is a crash's or a person's
            # leftover; a newer one may be someone's work in progress: left alone.
            current_gen = _generation_of(_current_id(manifest))
            doomed_ids += [
                rid
                for rid, _ in damaged
                if rid not in protected
                and current_gen is not None
                and (_generation_of(rid) or 0) < current_gen
            ]
            for rid in doomed_ids:
                # rename first: a crash mid-delete leaves a temp entry, never half a release
                doomed = self.releases_dir / f"{TEMP_PREFIX}prune-{rid}"
                os.rename(self.releases_dir / rid, doomed)
                fsync_dir(self.releases_dir)
                shutil.rmtree(doomed)
                removed.append(rid)
        return removed

    # ----------------------------------------------------------------------------- internals

    def _has_legacy_dir(self) -> bool:
        return self.current_link.is_dir() and not self.current_link.is_symlink()

    def _check_model(self, manifest: dict[str, Any]) -> None:
        """StoreError when the manifest serves another model than this store's policy."""
        named = manifest.get("model_name")
        if self.model_name is not None and named != self.model_name:
            raise StoreError(
                f"manifest {self.manifest_path} is for model {named!r}; this trainer's policy "
                f"is {self.model_name!r}: set policy.model_name to {named!r} if this policy "
                "serves that model"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the writers' lock; only a verb that writes takes it (it creates the lock file)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = self.dir / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o664)
            os.fchmod(fd, 0o664)  # group-writable whatever the umask: daemon and operator share it
        except FileExistsError:
            fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _release(self, rid: str, manifest: dict[str, Any] | None) -> Release:
        path = self.releases_dir / rid
        meta_path = path / RELEASE_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            card_text = (path / CARD_FILE).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise StoreError(f"release {rid}: missing {Path(exc.filename).name} in {path}") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"release {rid}: unreadable {meta_path}: {exc}") from exc
        try:
            card = json.loads(card_text)
        except ValueError as exc:
            raise StoreError(f"release {rid}: card.json is not JSON: {exc}") from exc
        try:
            return Release(
                id=rid,
                path=path,
                created=str(meta["created"]),
                generation=int(meta["generation"]),
                sha256=str(meta["sha256"]),
                adapter_file=str(meta["adapter_file"]),
                format=str(meta["format"]),
                rank=meta.get("rank"),
                alpha=meta.get("alpha"),
                legacy=bool(meta.get("legacy", False)),
                card=card if isinstance(card, dict) else {},
                is_current=rid == _current_id(manifest),
                is_previous=manifest is not None and rid == manifest.get("previous"),
                bad=(self.marks()["bad"].get(rid) or {}).get("reason"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"release {rid}: {meta_path} lacks or mangles {exc}") from exc

    def _link_target(self) -> str | None:
        """The release id ``current`` points at, or None (absent, not a symlink, elsewhere)."""
        try:
            target = Path(os.readlink(self.current_link))
        except OSError:
            return None
        return target.name if target.parent == Path("releases") else None

    def _point_current(self, rid: str) -> None:
        """Replace the ``current`` symlink atomically: temp symlink, os.replace, fsync dir."""
        tmp = self.dir / f"{TEMP_PREFIX}current-{secrets.token_hex(4)}"
        os.symlink(f"releases/{rid}", tmp)
        try:
            os.replace(tmp, self.current_link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(self.dir)

    def _next_generation(self, manifest: dict[str, Any]) -> int:
        """One above everything seen: the manifest's generation and every release directory's
        ``r<N>-`` prefix (a crash can leave a complete release the manifest never named; its id
        must not be reused). Reads no release.json, so a damaged directory cannot block it."""
        seen = [int(manifest.get("generation", 0))]
        seen += [_generation_of(p.name) or 0 for p in self._release_dirs()]
        return max(seen) + 1

    def _template(self, card: dict[str, Any]) -> dict[str, Any]:
        name = card.get("model_name") or self.model_name
        if not isinstance(name, str) or not name:
            raise StoreError(
                f"no manifest at {self.manifest_path} and no model name to create one "
                "(give the card a model_name or the store one)"
            )
        return {"model_name": name, "runtime": {}, "paths": {}, "adapter_meta": {"type": "lora"}}

    def _stage(
        self,
        rid: str,
        generation: int,
        sources: list[Path],
        adapter_file: str,
        extra: dict[str, Any],
        card: dict[str, Any],
    ) -> Release:
        """Copy ``sources`` into a temp dir, write release.json and card.json, fsync, rename."""
        mkdirs_durable(self.releases_dir)  # a power cut must not lose releases/ itself
        staging = self.releases_dir / f"{TEMP_PREFIX}{rid}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            for src in sources:
                if src.is_dir():
                    shutil.copytree(src, staging / src.name)
                else:
                    shutil.copyfile(src, staging / src.name)
            adapter = staging / adapter_file
            meta = {
                "id": rid,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "generation": generation,
                "adapter_file": adapter_file,
                "format": sniff_format(adapter),
                "sha256": sha256_file(adapter),
                **extra,
            }
            _write_json(staging / RELEASE_FILE, meta)
            _write_json(staging / CARD_FILE, card)
            for f in staging.rglob("*"):
                if f.is_file():
                    f.chmod(0o444)  # a release is immutable; say so to anyone who looks
            fsync_tree(staging)
            os.rename(staging, self.releases_dir / rid)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.releases_dir)
        return self._release(rid, None)

    def _make_current(self, release: Release, manifest: dict[str, Any], generation: int) -> Release:
        """Manifest first (the truth), then the symlink."""
        updated = with_release(manifest, release, generation, _current_id(manifest))
        write_manifest(self.manifest_path, updated)
        self._point_current(release.id)
        return self._release(release.id, updated)

    def _adopt_locked(self) -> Release | None:
        legacy_dir = self.current_link
        if not (legacy_dir.is_dir() and not legacy_dir.is_symlink()):
            return None
        manifest = self.read_manifest()
        adapter = _legacy_adapter(legacy_dir, manifest)
        fmt = sniff_format(adapter)
        digest = sha256_file(adapter)
        generation = self._next_generation(manifest or {})
        same = [r for r in self.releases() if r.legacy and r.sha256 == digest]
        if same:
            release = same[0]
        else:
            meta = (manifest or {}).get("adapter_meta") or {}
            release = self._stage(
                f"r{generation}-legacy-{utc_stamp()}",
                generation,
                sources=sorted(legacy_dir.iterdir()),
                adapter_file=adapter.name,
                extra={
                    "rank": meta.get("rank"),
                    "alpha": meta.get("alpha"),
                    "legacy": True,
                    "source": str(legacy_dir),
                },
                card={"legacy": True, "format": fmt, "adopted_from": str(legacy_dir)},
            )
        if manifest is None:
            manifest = self._template({})
        if _current_id(manifest) is None:
            write_manifest(self.manifest_path, with_release(manifest, release, generation, None))
            manifest = self.read_manifest()
        # The manifest already names a complete release: move the directory aside (a crash
        # here leaves a temp entry recover() removes) and put the symlink in its place.
        aside = self.dir / f"{TEMP_PREFIX}legacy-current-{secrets.token_hex(4)}"
        os.rename(legacy_dir, aside)
        self._point_current(_current_id(manifest) or release.id)
        shutil.rmtree(aside)
        return self._release(release.id, manifest)


# --------------------------------------------------------------------------------- manifest


def read_manifest(path: Path) -> dict[str, Any] | None:
    """Parse and validate the manifest at ``path``; None if absent; StoreError if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open manifest: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        data = f.read(MANIFEST_MAX_BYTES + 1)
    if len(data) > MANIFEST_MAX_BYTES:
        raise StoreError(f"{path}: manifest larger than {MANIFEST_MAX_BYTES} bytes; not touched")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{path}: manifest is not valid JSON ({exc}); not touched") from exc
    validate_manifest(obj, path)
    return obj


def validate_manifest(obj: Any, path: Path) -> None:
    """StoreError naming the field unless ``obj`` is a manifest we may rewrite."""
    if not isinstance(obj, dict):
        raise StoreError(f"{path}: manifest must be a JSON object (got {type(obj).__name__})")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in obj:
            raise StoreError(f"{path}: manifest lacks required field {name!r}; not touched")
        if not isinstance(obj[name], kind) or (kind is str and not obj[name]):
            raise StoreError(f"{path}: manifest field {name!r} must be a {kind.__name__}")
    for name in ("adapter_meta", "safety"):
        if name in obj and not isinstance(obj[name], dict):
            raise StoreError(f"{path}: manifest field {name!r} must be an object")
    gen = obj.get("generation", 0)
    if isinstance(gen, bool) or not isinstance(gen, int) or gen < 0:
        raise StoreError(f"{path}: manifest field 'generation' must be an integer >= 0")
    for where, value in (
        ("previous", obj.get("previous")),
        ("adapter_meta.release_id", (obj.get("adapter_meta") or {}).get("release_id")),
    ):
        if value is not None and not (isinstance(value, str) and RELEASE_ID.match(value)):
            raise StoreError(f"{path}: manifest field {where!r} is not a release id: {value!r}")


def with_release(
    manifest: dict[str, Any], release: Release, generation: int, previous: str | None
) -> dict[str, Any]:
    """A copy of ``manifest`` naming ``release``; every other field is kept as it was."""
    out = copy.deepcopy(manifest)
    out["paths"] = {
        **out["paths"],
        "adapter_dir": str(release.path),
        "adapter": str(release.adapter_path),
    }
    meta = dict(out.get("adapter_meta") or {})
    meta.update({"type": "lora", "release_id": release.id, "sha256": release.sha256})
    for key in ("rank", "alpha"):
        value = getattr(release, key)
        if value is None:
            meta.pop(key, None)  # a legacy release of unknown rank: say nothing, not a stale one
        else:
            meta[key] = value
    out["adapter_meta"] = meta
    out["generation"] = generation
    out["previous"] = previous
    return out


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Validate and write the manifest atomically (temp, fsync, replace, fsync dir)."""
    validate_manifest(manifest, path)
    size = len(json.dumps(manifest, indent=2))
    if size > MANIFEST_MAX_BYTES:
        raise StoreError(f"{path}: manifest would be {size} bytes (limit {MANIFEST_MAX_BYTES})")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)


# --------------------------------------------------------------------------------- files


def sniff_format(path: Path) -> str:
    """What an adapter file holds, from its first bytes; never loads or unpickles it.

    ``torch-zip`` (PK header, torch.save's default), ``pickle`` (protocol byte 0x80, old
    torch.save), ``safetensors`` (8-byte little-endian header size, then a JSON object), ``json``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read adapter: {exc.strerror or exc}") from exc
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    # Before the pickle test: a safetensors header of 0x?80 bytes starts with 0x80 too.
    if len(head) >= 9 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")
        if 0 < size <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(path.read_text(encoding="utf-8"))
            return "json"
        except (UnicodeDecodeError, ValueError):
            pass
    raise StoreError(
        f"{path}: not a recognised adapter file (torch zip, pickle, safetensors or JSON)"
    )


def _read_candidate_card(candidate_dir: Path) -> dict[str, Any]:
    try:
        card = json.loads((candidate_dir / CARD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{candidate_dir / CARD_FILE}: unreadable: {exc}") from exc
    return card if isinstance(card, dict) else {}


def check_candidate(candidate_dir: Path) -> tuple[int, float]:
    """StoreError unless the job's candidate is complete; return its LoRA rank and alpha."""
    if not candidate_dir.is_dir():
        raise StoreError(f"candidate {candidate_dir} is not a directory")
    missing = [n for n in CANDIDATE_FILES if not (candidate_dir / n).is_file()]
    if missing:
        raise StoreError(f"candidate {candidate_dir} lacks {', '.join(missing)}")
    try:
        cfg = json.loads((candidate_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        rank, alpha = cfg["r"], cfg["lora_alpha"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"candidate {candidate_dir}: {ADAPTER_CONFIG} unreadable or lacks r/lora_alpha: {exc}"
        ) from exc
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise StoreError(f"candidate {candidate_dir}: {ADAPTER_CONFIG} r={rank!r} is not > 0")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise StoreError(f"candidate {candidate_dir}: {ADAPTER_CONFIG} lora_alpha={alpha!r}")
    if sniff_format(candidate_dir / ADAPTER_FILE) != "safetensors":
        raise StoreError(f"candidate {candidate_dir}: {ADAPTER_FILE} is not safetensors")
    return rank, alpha


def _legacy_adapter(legacy_dir: Path, manifest: dict[str, Any] | None) -> Path:
    named = Path(str(((manifest or {}).get("paths") or {}).get("adapter", ""))).name
    for name in (named, *LEGACY_NAMES):
        if name and (legacy_dir / name).is_file():
            return legacy_dir / name
    found = [p for p in legacy_dir.iterdir() if p.is_file() and p.suffix in LEGACY_SUFFIXES]
    if len(found) == 1:
        return found[0]
    raise StoreError(
        f"{legacy_dir} is an old adapter directory but holds "
        f"{'no' if not found else 'several'} adapter files ({[p.name for p in found]})"
    )


def _marked(marks: dict[str, Any], rid: str, reason: str) -> dict[str, Any]:
    """``marks`` with ``rid`` marked bad for ``reason`` (and no longer forced)."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "bad": {**marks["bad"], rid: {"reason": reason, "at": at}},
        "forced": [f for f in marks["forced"] if f != rid],
    }


def _generation_of(release_id: str | None) -> int | None:
    """The ``N`` of a release id ``r<N>-...``, or None."""
    match = RELEASE_ID.match(release_id or "")
    return int(match.group(1)) if match else None


def _current_id(manifest: dict[str, Any] | None) -> str | None:
    if manifest is None:
        return None
    return (manifest.get("adapter_meta") or {}).get("release_id")


def _entries(parent: Path, prefix: str) -> list[Path]:
    try:
        return sorted(p for p in parent.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any) -> None:
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path.name}: cannot be written as JSON: {exc}") from exc
    path.write_text(text + "\n", encoding="utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def utc_stamp(wall: float | None = None) -> str:
    """``20250101T000000Z`` for ``wall`` (``time.time()`` seconds; default now): release ids and
    run ids, sortable as text."""
    when = datetime.now(UTC) if wall is None else datetime.fromtimestamp(wall, UTC)
    return when.strftime("%Y%m%dT%H%M%SZ")


# --------------------------------------------------------------------------------- CLI


def _store(config: TrainerConfig) -> AdapterStore:
    return AdapterStore(config.adapters_dir, config.paths.manifest)


def releases_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """``continuon-trainer releases``: one line per release, the current one marked, with its
    health window state (on probation / confirmed / rolled back, and why) and bad mark."""
    from daemon.health import read_health_record  # health imports this module

    try:
        rows, damaged = _store(config).inventory()
    except (OSError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for rid, problem in damaged:
        print(f"warning: skipped damaged release directory {rid}: {problem}", file=sys.stderr)
    if not rows:
        print(f"no releases under {config.adapters_dir}")
        return 0
    print(
        f"  {'release':<32} {'created':<25} {'cand. error':>11} {'block rate':>10} "
        f"{'eval set':>11}  note"
    )
    eval_sets = set()
    for r in rows:
        m = r.metrics or {}
        eval_set = f"{_fmt(m.get('eval_episodes'), 'd')} ep/{_fmt(m.get('eval_steps'), 'd')}"
        if r.metrics:
            eval_sets.add(eval_set)
        cand = m.get("candidate") or {}
        err, block = cand.get("mse"), cand.get("block_rate")
        health = read_health_record(config, r.id) or {}
        flags = (
            ("current", r.is_current),
            ("previous", r.is_previous),
            (f"legacy {r.format}", r.legacy),
            (f"{health.get('state')}: {health.get('reason')}", bool(health.get("state"))),
            (f"BAD: {r.bad}", r.bad is not None),
        )
        note = ", ".join(name for name, on in flags if on)
        print(
            f"{'*' if r.is_current else ' '} {r.id:<32} {r.created:<25} "
            f"{_fmt(err, '.4g'):>11} {_fmt(block, '.2%'):>10} {eval_set:>11}  {note}"
        )
    if len(eval_sets) > 1:
        # Each error was measured on its own job's held-out set: the column does not compare.
        print(
            "note: these errors come from different held-out sets and do not compare; "
            "`continuon-trainer report --out DIR` re-scores every release on one set"
        )
    return 0


def rollback_command(args: argparse.Namespace, config: TrainerConfig) -> int:
    """``continuon-trainer rollback [--to ID] [--force] [--reason TEXT]``: back to the newest
    earlier release not marked bad (or the named one); the release left is marked bad."""
    store = _store(config)
    target = getattr(args, "release", None)
    force = bool(getattr(args, "force", False))
    reason = getattr(args, "reason", None) or "rolled back by the operator"
    try:
        for action in store.recover():
            print(f"recovered: {action}")
        before = store.current()
        bad = store.marks()["bad"]
        if target in bad:
            print(f"warning: {target} is marked bad: {bad[target]['reason']}", file=sys.stderr)
        older = before is not None and (_generation_of(target) or 0) < before.generation
        release = store.rollback(target, force=force, mark_bad=reason if older else None)
    except (OSError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if before is not None and before.id == release.id:
        print(f"{release.id} is already current; nothing changed")
    else:
        was = before.id if before else "none"
        print(f"rolled back: current is now {release.id} (was {was})")
    return 0


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"
