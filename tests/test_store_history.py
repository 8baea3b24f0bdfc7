"""Rollback walks history; prune keeps the chain; the manifest keeps its mode and group.

The invariant every table row checks after every step: the manifest never names a release
marked bad unless an operator forced it (``rollback --to BAD --force``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from daemon.store import AdapterStore, StoreError
from tests.test_store import card, make_candidate, new_store, sample_manifest


@pytest.fixture
def model(tmp_path: Path) -> Path:
    m = tmp_path / "model"
    m.mkdir()
    return m


def assert_invariant(store: AdapterStore) -> None:
    """The manifest names a release; a bad one only when forced."""
    current = store.current()
    assert current is not None
    marks = store.marks()
    if current.id in marks["bad"]:
        assert current.id in marks["forced"], f"{current.id} is bad and nobody forced it"
    store.verify(current)


def run_ops(tmp_path: Path, store: AdapterStore, ops: list[str]) -> dict[str, str]:
    """Apply ``ops``: ``promote:NAME``, ``bad:NAME``, ``rollback``, ``to:NAME``,
    ``force:NAME``, ``prune:N``; a refused op (StoreError) is allowed and changes nothing."""
    ids: dict[str, str] = {}
    for op in ops:
        verb, _, arg = op.partition(":")
        before = store.manifest_path.read_bytes() if store.manifest_path.exists() else b""
        try:
            if verb == "promote":
                ids[arg] = store.promote(make_candidate(tmp_path, f"{arg}-{len(ids)}"), card()).id
            elif verb == "bad":
                store.mark_bad(ids[arg], "test says so")
            elif verb == "rollback":
                store.rollback(mark_bad="operator")  # what the CLI verb does
            elif verb == "to":
                store.rollback(ids[arg])
            elif verb == "force":
                store.rollback(ids[arg], force=True)
            elif verb == "prune":
                store.prune(int(arg))
        except StoreError:
            assert store.manifest_path.read_bytes() == before, f"refused {op} changed the manifest"
        assert_invariant(store)
    return ids


TABLE = [
    # (ops, expected current name)
    (["promote:g1", "promote:g2", "promote:B3", "rollback", "rollback"], "g1"),
    (["promote:g1", "promote:g2", "promote:B3", "bad:B3", "rollback"], "g1"),
    (["promote:g1", "promote:g2", "promote:B3", "bad:B3", "to:B3"], "g2"),
    (["promote:g1", "promote:g2", "promote:B3", "bad:B3", "force:B3"], "B3"),
    (["promote:g1", "promote:B2", "promote:g3", "bad:B2", "rollback"], "g1"),
    (["promote:g1", "promote:g2", "promote:B3", "bad:B3", "prune:0", "rollback"], "g1"),
    (["promote:g1", "promote:g2", "promote:g3", "promote:g4", "prune:1", "rollback"], "g3"),
    (["promote:g1", "promote:B2", "bad:B2", "promote:g3", "prune:0", "rollback"], "g1"),
    (["promote:g1", "rollback", "rollback"], "g1"),
    (["promote:g1", "promote:g2", "rollback", "promote:g3", "rollback"], "g1"),
    (["promote:g1", "promote:g2", "bad:g1", "rollback"], "g2"),
]


@pytest.mark.parametrize(("ops", "expected"), TABLE, ids=[" ".join(t[0]) for t in TABLE])
def test_rollback_prune_sequences_hold_the_invariant(
    tmp_path: Path, model: Path, ops: list[str], expected: str
) -> None:
    store = new_store(model, sample_manifest())
    ids = run_ops(tmp_path, store, ops)
    current = store.current()
    assert current is not None and current.id == ids[expected]


def test_rollback_twice_after_good_good_bad_ends_on_good_1(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    g1, g2, b3 = (store.promote(make_candidate(tmp_path, n), card()).id for n in ("a", "b", "c"))
    assert store.rollback(mark_bad="operator").id == g2
    assert store.rollback(mark_bad="operator").id == g1
    assert b3 in store.marks()["bad"] and g2 in store.marks()["bad"]
    assert store.prune(0) == [b3] or b3 not in {r.id for r in store.releases()}


def test_recover_finishes_a_rollback_interrupted_after_the_mark(tmp_path: Path, model: Path):
    store = new_store(model, sample_manifest())
    g1 = store.promote(make_candidate(tmp_path, "a"), card()).id
    b2 = store.promote(make_candidate(tmp_path, "b"), card()).id
    # what a SIGKILL right after the mark was written leaves: the mark, the manifest unchanged
    marks = {"bad": {b2: {"reason": "health", "at": "x"}}, "forced": []}
    (model / "adapters" / "marks.json").write_text(json.dumps(marks))
    actions = store.recover()
    assert any("interrupted rollback" in a for a in actions)
    assert store.current().id == g1


def test_unreadable_marks_fail_closed(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    store.promote(make_candidate(tmp_path, "a"), card())
    store.promote(make_candidate(tmp_path, "b"), card())
    (model / "adapters" / "marks.json").write_text("{torn")
    with pytest.raises(StoreError, match="marks"):
        store.rollback()


def test_manifest_keeps_mode_and_group_across_rewrites(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    manifest = model / "manifest.json"
    os.chmod(manifest, 0o664)
    groups = os.getgroups()
    gid = next((g for g in groups if g != os.getgid()), os.getgid())
    if os.geteuid() == 0:
        gid = 12345  # root may give any group; a runtime's group the trainer is not in
    os.chown(manifest, -1, gid)
    store.promote(make_candidate(tmp_path, "a"), card())
    store.promote(make_candidate(tmp_path, "b"), card())
    store.rollback()
    st = manifest.stat()
    assert stat.S_IMODE(st.st_mode) == 0o664
    assert st.st_gid == gid
    os.chmod(manifest, 0o640)
    store.promote(make_candidate(tmp_path, "c"), card())
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o640
