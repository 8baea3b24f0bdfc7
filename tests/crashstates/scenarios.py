"""The operations that must survive a power cut, and what must hold after each crash state.

Each :class:`Scenario` builds an initial tree (untraced, in this process), runs its operation in
a traced subprocess through the real code (``DRIVERS``), and checks one materialised crash state
after running the real recovery path: ``AdapterStore.recover()`` + ``adopt_legacy()`` as the
daemon's start does, ``Ledger.open``, ``load_checkpoint``, the status reader.

``BROKEN`` names deliberately broken variants of the atomic writer, patched into the traced
process only, so a test can show the checker finds them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.store import RELEASE_ID, AdapterStore, StoreError, read_manifest, sha256_file
from trainer_core.fsio import TEMP_PREFIX

REPO = Path(__file__).resolve().parents[2]

BROKEN = {
    # the store before the fix: releases/ made by a plain mkdir, its entry never fsynced
    "plain-mkdir": (
        "import daemon.store as S\n"
        "S.mkdirs_durable = lambda path: path.mkdir(parents=True, exist_ok=True)\n"
    ),
    # the directory fsync removed: renames and creates are never made durable
    "no-dir-fsync": (
        "import trainer_core.fsio as F, daemon.store as S\n"
        "F.fsync_dir = S.fsync_dir = lambda path: None\n"
    ),
    # rename before the data fsync: the new name can point at a file whose bytes never landed
    "rename-before-fsync": (
        "import os, tempfile, trainer_core.fsio as F\n"
        "def _w(path, data, mode=0o644):\n"
        "    fd, tmp = tempfile.mkstemp(prefix=F.TEMP_PREFIX + path.name + '.', dir=path.parent)\n"
        "    os.write(fd, data); os.replace(tmp, path); F.fsync_dir(path.parent)\n"
        "    os.fsync(fd); os.close(fd)\n"
        "F.atomic_write_bytes = _w\n"
    ),
}

PRELUDE = (
    "import json, os, sys\nsys.path.insert(0, sys.argv[1])\nroot = sys.argv[2]\n"
    "from pathlib import Path\nroot = Path(root)\n"
    "exec(os.environ.get('CRASH_BROKEN_CODE', ''))\n"
)
STORE = "from daemon.store import AdapterStore\nst = AdapterStore(root/'model'/'adapters', root/'model'/'manifest.json', model_name='gemma-3n')\n"  # noqa: E501
DRIVERS = {
    "promotion": STORE + "st.promote(root/'runs'/'c9'/'candidate', {'run_id': 'c9'})\n",
    "rollback": STORE + "st.rollback()\n",
    # what the health window does on a bad release (daemon/health.py): mark it bad, roll back
    "rollback-auto": STORE + "st.rollback(mark_bad='health window: e-stop during probation')\n",
    "prune": STORE + "st.prune(1)\n",
    "adoption": STORE + "st.adopt_legacy()\n",
    "status": (
        "from daemon.status import write_status\n"
        "for i in (1, 2): write_status(root/'state'/'status.json', {'n': i, 'pad': 'x' * 3000})\n"
    ),
    "ledger": (
        "from daemon.ledger import Ledger\n"
        "led = Ledger.open(root/'state'/'ledger.sqlite')\n"
        "for i in range(3, 6):\n"
        "    led.record(f'ep{i}', status='valid', signature=f's{i}', now=float(i),"
        " content_hash=f'h{i}', episode_id=f'e{i}', n_steps=i)\n"
        "led.record_job_start('run1', 9.0, ['h3'])\nled.close()\n"
    ),
    "checkpoint": (
        "import trainer_core.checkpoint as C\nfrom tests.crashstates.scenarios import ckpt_args\n"
        "C.save_checkpoint(root/'ckpt'/'latest', *ckpt_args(2), 'fp1')\n"
    ),
}


@dataclass
class Expect:
    """What the uncrashed run started from and ended with."""

    before: dict[str, Any]
    after: dict[str, Any]


Check = Callable[[Path, Expect], list[str]]


# ------------------------------------------------------------------------------- setup


def _candidate(root: Path, name: str) -> Path:
    from tests.test_store import make_candidate

    return make_candidate(root, name)


def _store(root: Path) -> AdapterStore:
    return AdapterStore(root / "model" / "adapters", root / "model" / "manifest.json", "gemma-3n")


def _sample_manifest(root: Path) -> None:
    from tests.test_store import sample_manifest

    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "manifest.json").write_text(json.dumps(sample_manifest(), indent=2))


def _episodes(root: Path) -> None:
    (root / "episodes").mkdir(parents=True, exist_ok=True)
    (root / "episodes" / "ep0.json").write_text('{"steps": [1, 2, 3]}')


def setup_store(root: Path, name: str) -> None:
    """Initial tree of a store scenario (``promotion-first`` starts with no manifest)."""
    _episodes(root)
    if name == "promotion-first":
        (root / "model").mkdir(parents=True)
        _candidate(root, "c9")
        return
    _sample_manifest(root)
    store = _store(root)
    if name == "adoption":
        from tests.test_store import write_legacy

        write_legacy(root / "model", "pickle")
        return
    for i in range(1, {"promotion": 2, "rollback": 3, "rollback-auto": 3, "prune": 5}[name]):
        store.promote(_candidate(root, f"c{i}"), {"run_id": f"c{i}"})
    if name == "promotion":
        _candidate(root, "c9")


def store_facts(root: Path) -> dict[str, Any]:
    """The current id, releases and their hashes, the episodes' hashes."""
    store = _store(root)
    manifest = read_manifest(store.manifest_path)
    releases = {r.id: r.sha256 for r in store.releases()}
    legacy = root / "model" / "adapters" / "current" / "lora_adapters.pt"
    return {
        "current": (manifest or {}).get("adapter_meta", {}).get("release_id"),
        "releases": releases,
        "legacy_sha": sha256_file(legacy) if legacy.is_file() and not legacy.is_symlink() else None,
        "episodes": _tree_hashes(root / "episodes"),
    }


def _tree_hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}


def check_store(root: Path, expect: Expect) -> list[str]:
    """Run the daemon's start-up recovery on a crash state and check the store invariants."""
    store = _store(root)
    bad: list[str] = []
    try:
        store.recover()
        store.adopt_legacy()
        again = store.recover()
    except (StoreError, OSError, ValueError) as exc:
        return [f"recovery failed: {exc}"]
    if again:
        bad.append(f"recover() not idempotent: {again}")
    manifest = read_manifest(store.manifest_path)
    rid = (manifest or {}).get("adapter_meta", {}).get("release_id")
    allowed = {expect.before["current"], expect.after["current"]}
    if expect.before["legacy_sha"] is not None and rid is not None:
        allowed.add(rid)  # adoption: the new id is checked by hash below
    if rid not in allowed:
        bad.append(
            f"manifest names {rid!r}, neither the old nor the new {sorted(map(str, allowed))}"
        )
    if rid is not None:
        rel = store.releases_dir / rid
        adapter = Path(manifest["paths"]["adapter"])
        if Path(manifest["paths"]["adapter_dir"]) != rel or adapter.parent != rel:
            bad.append(f"manifest paths do not point into {rel}")
        elif sha256_file(adapter) != manifest["adapter_meta"]["sha256"]:
            bad.append(f"{adapter} does not hash to the manifest's sha256")
        try:
            link = os.readlink(store.current_link)
        except OSError as exc:
            link = f"<{exc}>"
        if link != f"releases/{rid}":
            bad.append(f"current -> {link}, manifest names {rid}")
        legacy = expect.before["legacy_sha"]
        if legacy is not None and manifest["adapter_meta"]["sha256"] != legacy:
            bad.append("the adopted legacy adapter was lost")
    elif expect.before["current"] is not None or expect.before["legacy_sha"] is not None:
        bad.append("the manifest names no release any more")
    bad += _marks_invariants(store, rid)
    bad += _release_invariants(store, expect)
    bad += _leftover_invariants(root)
    if _tree_hashes(root / "episodes") != expect.before["episodes"]:
        bad.append("an episode changed")
    return bad


def _marks_invariants(store: AdapterStore, rid: str | None) -> list[str]:
    """A release marked bad (not forced) is never left current: recovery finishes the rollback."""
    try:
        marks = store.marks()
    except StoreError as exc:
        return [f"marks unreadable: {exc}"]
    if rid is not None and rid in marks["bad"] and rid not in marks["forced"]:
        return [f"current release {rid} is marked bad after recovery"]
    return []


def _release_invariants(store: AdapterStore, expect: Expect) -> list[str]:
    bad = []
    intact, damaged = store.inventory()
    if damaged:
        bad.append(f"damaged releases: {damaged}")
    have = {r.id: r.sha256 for r in intact}
    for rid, sha in expect.before["releases"].items():
        if rid in expect.after["releases"] and have.get(rid) != sha:
            bad.append(f"release {rid} lost or changed")
    for r in intact:
        try:
            store.verify(r)
        except StoreError as exc:
            bad.append(str(exc))
    return bad


def _leftover_invariants(root: Path) -> list[str]:
    dirs = [root / "model", root / "model" / "adapters", root / "model" / "adapters" / "releases"]
    left = [
        p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.name.startswith(TEMP_PREFIX)
    ]
    named = [
        p.name
        for p in (root / "model" / "adapters" / "releases").glob("*")
        if not RELEASE_ID.match(p.name)
    ]
    return [f"leftovers after recovery: {left + named}"] if left or named else []


# ------------------------------------------------------------------------------- status


def setup_status(root: Path, _name: str) -> None:
    (root / "state").mkdir(parents=True)
    (root / "state" / "status.json").write_text(json.dumps({"n": 0}))


def status_facts(root: Path) -> dict[str, Any]:
    return {"n": json.loads((root / "state" / "status.json").read_text())["n"]}


def check_status(root: Path, expect: Expect) -> list[str]:
    """A reader sees the old file or one of the new ones, whole."""
    try:
        n = json.loads((root / "state" / "status.json").read_text())["n"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"status.json unreadable: {exc!r}"]
    return [] if n in (0, 1, 2) else [f"status.json has n={n}"]


# ------------------------------------------------------------------------------- ledger


def setup_ledger(root: Path, name: str) -> None:
    """An existing ledger with three episodes; ``ledger-first``: none yet."""
    from daemon.ledger import Ledger

    _episodes(root)
    if name == "ledger-first":
        return
    led = Ledger.open(root / "state" / "ledger.sqlite")
    for i in range(3):
        led.record(
            f"ep{i}", status="valid", signature=f"s{i}", now=float(i), content_hash=f"h{i}",
            episode_id=f"e{i}", n_steps=i,
        )  # fmt: skip
    led.close()


def ledger_facts(root: Path) -> dict[str, Any]:
    if not (root / "state" / "ledger.sqlite").exists():
        return {"rows": {}, "episodes": _tree_hashes(root / "episodes")}
    db = sqlite3.connect(root / "state" / "ledger.sqlite")
    try:
        rows = db.execute("SELECT path, content_hash FROM episodes ORDER BY path").fetchall()
    finally:
        db.close()
    return {"rows": dict(rows), "episodes": _tree_hashes(root / "episodes")}


def check_ledger(root: Path, expect: Expect) -> list[str]:
    """The ledger opens; rows from before are intact; the new ones are a prefix of the commits
    (synchronous=NORMAL: the newest commits may roll back, never tear)."""
    from daemon.ledger import Ledger, LedgerError

    try:
        led = Ledger.open(root / "state" / "ledger.sqlite")
    except LedgerError as exc:
        return [f"ledger does not open: {exc}"]
    try:
        rows = {p: e.content_hash for p, e in led.known().items()}
    finally:
        led.close()
    bad = []
    for path, h in expect.before["rows"].items():
        if rows.get(path) != h:
            bad.append(f"row {path} lost or changed")
    new = [p for p in sorted(expect.after["rows"]) if p not in expect.before["rows"]]
    present = [p in rows for p in new]
    if present != sorted(present, reverse=True):
        bad.append(
            f"new rows are not a prefix of the commits: {dict(zip(new, present, strict=True))}"
        )
    for p in new:
        if p in rows and rows[p] != expect.after["rows"][p]:
            bad.append(f"row {p} torn")
    if _tree_hashes(root / "episodes") != expect.before["episodes"]:
        bad.append("an episode changed")
    return bad


# ------------------------------------------------------------------------------- checkpoint


def ckpt_args(step: int) -> tuple:
    """lora tensors, an optimizer that has stepped, and a loop state at ``step``."""
    import torch

    from trainer_core.train import LoopState

    torch.manual_seed(step)
    w = torch.nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.sum().backward()
    opt.step()
    return {"w": w.detach().clone()}, opt, LoopState(step=step, epoch=0, batch=step, losses=[1.0])


def setup_checkpoint(root: Path, name: str) -> None:
    """A checkpoint at step 1 that the traced run replaces; ``checkpoint-first``: none yet."""
    from trainer_core.checkpoint import save_checkpoint

    (root / "ckpt").mkdir(parents=True)
    if name == "checkpoint-first":
        return
    save_checkpoint(root / "ckpt" / "latest", *ckpt_args(1), "fp1")


def ckpt_facts(root: Path) -> dict[str, Any]:
    from trainer_core.checkpoint import load_checkpoint

    if not (root / "ckpt" / "latest").exists():
        return {"step": None}
    return {"step": load_checkpoint(root / "ckpt" / "latest", "fp1").state.step}


def check_checkpoint(root: Path, expect: Expect) -> list[str]:
    """Resumable (the old or the new step, tensors whole) or refused with CheckpointError."""
    from trainer_core.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(root / "ckpt" / "latest", "fp1")
    except CheckpointError:
        return []
    except Exception as exc:  # anything else is a crash of the resume path
        return [f"load_checkpoint raised {exc!r}, not CheckpointError"]
    step = ckpt.state.step
    if step not in (expect.before["step"], expect.after["step"]):
        return [f"checkpoint at step {step}"]
    if ckpt.lora["w"].shape != (4, 4):
        return ["checkpoint tensors torn"]
    return []


@dataclass(frozen=True)
class Scenario:
    """One operation: how to set it up, which driver runs it, how to learn and check facts."""

    name: str
    driver: str
    setup: Callable[[Path, str], None]
    facts: Callable[[Path], dict[str, Any]]
    check: Check
    needs_torch: bool = False


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("promotion", "promotion", setup_store, store_facts, check_store),
        Scenario("promotion-first", "promotion", setup_store, store_facts, check_store),
        Scenario("rollback", "rollback", setup_store, store_facts, check_store),
        Scenario("rollback-auto", "rollback-auto", setup_store, store_facts, check_store),
        Scenario("prune", "prune", setup_store, store_facts, check_store),
        Scenario("adoption", "adoption", setup_store, store_facts, check_store),
        Scenario("status", "status", setup_status, status_facts, check_status),
        Scenario("ledger", "ledger", setup_ledger, ledger_facts, check_ledger),
        Scenario("ledger-first", "ledger", setup_ledger, ledger_facts, check_ledger),
        Scenario("checkpoint", "checkpoint", setup_checkpoint, ckpt_facts, check_checkpoint, True),
        Scenario(
            "checkpoint-first", "checkpoint", setup_checkpoint, ckpt_facts, check_checkpoint, True
        ),
    )
}
