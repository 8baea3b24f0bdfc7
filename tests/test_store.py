"""The adapter store on real folders: releases, manifest, current symlink, rollback, prune,
legacy adoption, recovery, bad manifests, and the two CLI verbs."""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from daemon.config import PathsConfig, TrainerConfig
from daemon.store import (
    MANIFEST_MAX_BYTES,
    AdapterStore,
    StoreError,
    releases_command,
    rollback_command,
    sha256_file,
)

REPO = Path(__file__).resolve().parent.parent
OURS = {"adapter_dir", "adapter", "release_id", "sha256", "rank", "alpha", "generation", "previous"}


def safetensors_bytes(payload: bytes) -> bytes:
    """A minimal valid safetensors file holding ``payload`` as one U8 tensor."""
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + payload


def make_candidate(root: Path, name: str, rank: int = 4, alpha: float = 8.0) -> Path:
    """A candidate directory as the job writes it, with small files."""
    d = root / "runs" / name / "candidate"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["x"]})
    )
    (d / "adapter_model.safetensors").write_bytes(safetensors_bytes(name.encode() * 16))
    (d / "normalizer.json").write_text(json.dumps({"mean": [0.0], "std": [1.0]}))
    (d / "card.json").write_text(json.dumps({"from": "job"}))
    return d


def card(err: float = 0.01, block: float = 0.0) -> dict[str, Any]:
    return {"run_id": "x", "metrics": {"candidate": {"mse": err, "block_rate": block}}}


def sample_manifest() -> dict[str, Any]:
    return {
        "model_name": "gemma-3n",
        "runtime": {"engine": "flutter_gemma", "backend": "xnnpack", "future_knob": [1, 2]},
        "paths": {"base_model": "/opt/base.tflite", "adapter_dir": "/x", "adapter": "/x/a.pt"},
        "adapter_meta": {"type": "lora", "rank": 8, "alpha": 16, "runtime_note": {"k": "v"}},
        "safety": {"warn_threshold": 0.25},
        "unknown_top": {"nested": [1, {"deep": True}]},
        "notes": "kept",
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    m = tmp_path / "model"
    m.mkdir()
    return m


def new_store(model: Path, manifest: dict[str, Any] | None = None, **kw: Any) -> AdapterStore:
    if manifest is not None:
        (model / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return AdapterStore(model / "adapters", model / "manifest.json", **kw)


def manifest_of(model: Path) -> dict[str, Any]:
    return json.loads((model / "manifest.json").read_text())


def link(model: Path) -> str:
    return os.readlink(model / "adapters" / "current")


def assert_names(model: Path, release_id: str) -> None:
    """Manifest and symlink agree on ``release_id`` and the hash matches."""
    m = manifest_of(model)
    rel = model / "adapters" / "releases" / release_id
    assert m["adapter_meta"]["release_id"] == release_id
    assert m["paths"]["adapter_dir"] == str(rel)
    assert Path(m["paths"]["adapter"]).parent == rel
    assert sha256_file(Path(m["paths"]["adapter"])) == m["adapter_meta"]["sha256"]
    assert link(model) == f"releases/{release_id}"


def test_promote_writes_release_manifest_and_link(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    cand = make_candidate(tmp_path, "a", rank=4, alpha=8.0)
    r = store.promote(cand, card())
    assert r.id.startswith("r1-") and r.is_current and r.generation == 1
    assert_names(model, r.id)
    m = manifest_of(model)
    assert m["generation"] == 1 and m["previous"] is None
    assert m["adapter_meta"]["rank"] == 4 and m["adapter_meta"]["alpha"] == 8.0
    assert m["paths"]["adapter"].endswith("adapter_model.safetensors")
    files = sorted(p.name for p in r.path.iterdir())
    assert files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "card.json",
        "normalizer.json",
        "release.json",
    ]
    # The given card is merged over the job's own card (which keeps what the job recorded).
    assert json.loads((r.path / "card.json").read_text()) == {"from": "job", **card()}
    assert {f.stat().st_mode & 0o777 for f in r.path.iterdir()} == {0o444}  # immutable
    assert r.metrics == card()["metrics"]
    assert store.current() == r

    r2 = store.promote(make_candidate(tmp_path, "b"), card(0.005))
    m = manifest_of(model)
    assert m["generation"] == 2 and m["previous"] == r.id
    assert_names(model, r2.id)
    assert [x.id for x in store.releases()] == [r.id, r2.id]
    assert [x.is_current for x in store.releases()] == [False, True]
    assert [x.is_previous for x in store.releases()] == [True, False]


def test_rollback_restores_previous_in_manifest_and_link(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    a = store.promote(make_candidate(tmp_path, "a"), card())
    b = store.promote(make_candidate(tmp_path, "b"), card())
    back = store.rollback()
    assert back.id == a.id and back.is_current
    assert_names(model, a.id)
    m = manifest_of(model)
    assert m["previous"] == b.id and m["generation"] == 3
    assert m["adapter_meta"]["sha256"] == a.sha256
    with pytest.raises(StoreError, match="no earlier release"):
        store.rollback()  # walks down history, never back up to the one it left
    assert store.rollback(b.id).id == b.id
    assert_names(model, b.id)
    assert store.rollback(a.id).id == a.id
    assert_names(model, a.id)
    assert manifest_of(model)["generation"] == 5
    same = store.rollback(a.id)  # already current: nothing written
    assert same.id == a.id and manifest_of(model)["generation"] == 5
    with pytest.raises(StoreError, match="no release 'r99-nope'"):
        store.rollback("r99-nope")
    with pytest.raises(StoreError, match="no release"):
        store.rollback("../../etc")


def test_rollback_needs_something_to_go_back_to(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    with pytest.raises(StoreError, match="names no release"):
        store.rollback()
    store.promote(make_candidate(tmp_path, "a"), card())
    with pytest.raises(StoreError, match="no earlier release"):
        store.rollback()


def test_rollback_refuses_a_corrupt_release(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    a = store.promote(make_candidate(tmp_path, "a"), card())
    store.promote(make_candidate(tmp_path, "b"), card())
    before = (model / "manifest.json").read_bytes()
    os.chmod(a.adapter_path, 0o644)
    a.adapter_path.write_bytes(b"tampered")
    with pytest.raises(StoreError, match="does not match"):
        store.rollback()
    assert (model / "manifest.json").read_bytes() == before


def test_prune_never_removes_current_or_previous(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    ids = [store.promote(make_candidate(tmp_path, n), card()).id for n in "abcde"]
    store.rollback(ids[0])  # current: oldest; previous: newest
    removed = store.prune(0)
    assert sorted(removed) == sorted(ids[1:4])
    assert [r.id for r in store.releases()] == [ids[0], ids[4]]
    assert_names(model, ids[0])
    assert store.rollback(ids[4]).id == ids[4]

    more = [store.promote(make_candidate(tmp_path, n), card()).id for n in "fg"]
    removed = store.prune(1)  # newest (current) kept, previous kept, rest go
    assert [r.id for r in store.releases()] == [more[0], more[1]]
    assert set(removed) == {ids[0], ids[4]}
    assert not any(p.name.startswith(".tmp-") for p in (model / "adapters" / "releases").iterdir())


def test_unknown_manifest_fields_survive(tmp_path: Path, model: Path) -> None:
    original = sample_manifest()
    store = new_store(model, original)
    store.promote(make_candidate(tmp_path, "a"), card())
    store.promote(make_candidate(tmp_path, "b"), card())
    store.rollback()
    after = manifest_of(model)
    assert strip_ours(after) == strip_ours(original)
    assert list(after)[: len(original)] == list(original)  # key order kept too
    assert after["adapter_meta"]["runtime_note"] == {"k": "v"}


def strip_ours(m: dict[str, Any]) -> dict[str, Any]:
    m = copy.deepcopy(m)
    for key in ("generation", "previous"):
        m.pop(key, None)
    for section in ("paths", "adapter_meta"):
        for key in OURS:
            m[section].pop(key, None)
    return m


@pytest.mark.parametrize("name", ["manifest.pi5.example.json", "manifest.pi5.safety.example.json"])
def test_sample_manifests_round_trip(samples: Path, tmp_path: Path, model: Path, name: str) -> None:
    original = json.loads((samples / "model" / name).read_text())
    store = new_store(model, original)
    r = store.promote(make_candidate(tmp_path, "a", rank=8, alpha=16), card())
    after = manifest_of(model)
    assert strip_ours(after) == strip_ours(original)
    assert after["model_name"] == "gemma-3n" and after["runtime"] == original["runtime"]
    assert after["paths"]["base_model"] == original["paths"]["base_model"]
    assert after["adapter_meta"] == {
        "type": "lora",
        "rank": 8,
        "alpha": 16,
        "release_id": r.id,
        "sha256": r.sha256,
    }
    assert store.manifest_safety() == original.get("safety")


def test_no_manifest_creates_one_from_the_template(tmp_path: Path, model: Path) -> None:
    store = new_store(model, None)
    with pytest.raises(StoreError, match="no model name"):
        store.promote(make_candidate(tmp_path, "a"), card())
    assert not (model / "manifest.json").exists()
    r = new_store(model, None, model_name="donkey-mlp").promote(
        make_candidate(tmp_path, "b"), card()
    )
    m = manifest_of(model)
    assert m["model_name"] == "donkey-mlp" and m["runtime"] == {}
    assert set(m) == {"model_name", "runtime", "paths", "adapter_meta", "generation", "previous"}
    assert_names(model, r.id)
    assert store.manifest_safety() is None


BAD_MANIFESTS = {
    "not json": b'{"model_name": "x", ',
    "not utf-8": b"\xff\xfe{}",
    "too large": json.dumps(
        {**sample_manifest(), "notes": "x" * (MANIFEST_MAX_BYTES + 10)}
    ).encode(),
    "a list": b"[1, 2]",
    "no model_name": json.dumps(
        {k: v for k, v in sample_manifest().items() if k != "model_name"}
    ).encode(),
    "no paths": json.dumps({k: v for k, v in sample_manifest().items() if k != "paths"}).encode(),
    "paths not an object": json.dumps({**sample_manifest(), "paths": "x"}).encode(),
    "runtime missing": json.dumps(
        {k: v for k, v in sample_manifest().items() if k != "runtime"}
    ).encode(),
    "bad generation": json.dumps({**sample_manifest(), "generation": -1}).encode(),
    "NaN": json.dumps({**sample_manifest(), "x": float("nan")}).encode(),
    "bad release id": json.dumps(
        {**sample_manifest(), "adapter_meta": {"release_id": "../evil"}}
    ).encode(),
}


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_an_error_and_nothing_is_overwritten(
    tmp_path: Path, model: Path, kind: str
) -> None:
    store = new_store(model, sample_manifest())
    a = store.promote(make_candidate(tmp_path, "a"), card())
    store.promote(make_candidate(tmp_path, "b"), card())
    path = model / "manifest.json"
    path.write_bytes(BAD_MANIFESTS[kind])
    stat = path.stat()
    releases_before = sorted(p.name for p in (model / "adapters" / "releases").iterdir())
    link_before = link(model)
    for op in (
        lambda: store.promote(make_candidate(tmp_path, "c"), card()),
        lambda: store.rollback(a.id),
        lambda: store.prune(0),
        store.recover,
        store.current,
        store.manifest_safety,
    ):
        with pytest.raises(StoreError, match="manifest"):
            op()
        assert path.read_bytes() == BAD_MANIFESTS[kind]
        assert path.stat().st_mtime_ns == stat.st_mtime_ns
        assert sorted(p.name for p in (model / "adapters" / "releases").iterdir()) == (
            releases_before
        )
        assert link(model) == link_before
        make_candidate_cleanup(tmp_path)


def make_candidate_cleanup(root: Path) -> None:
    shutil.rmtree(root / "runs" / "c", ignore_errors=True)


@pytest.mark.parametrize(
    ("breakage", "match"),
    [
        ("no adapter", "lacks adapter_model.safetensors"),
        ("no card", "lacks card.json"),
        ("rank zero", "r=0"),
        ("no alpha", "lora_alpha"),
        ("not safetensors", "not a recognised adapter"),
        ("pickle adapter", "is not safetensors"),
    ],
)
def test_incomplete_candidate_is_refused(
    tmp_path: Path, model: Path, breakage: str, match: str
) -> None:
    store = new_store(model, sample_manifest())
    cand = make_candidate(tmp_path, "a")
    if breakage == "no adapter":
        (cand / "adapter_model.safetensors").unlink()
    elif breakage == "no card":
        (cand / "card.json").unlink()
    elif breakage == "rank zero":
        (cand / "adapter_config.json").write_text(json.dumps({"r": 0, "lora_alpha": 8}))
    elif breakage == "no alpha":
        (cand / "adapter_config.json").write_text(json.dumps({"r": 4}))
    elif breakage == "not safetensors":
        (cand / "adapter_model.safetensors").write_bytes(b"hello world, not a tensor")
    elif breakage == "pickle adapter":
        (cand / "adapter_model.safetensors").write_bytes(b"\x80\x04\x95\x00")
    before = (model / "manifest.json").read_bytes()
    with pytest.raises(StoreError, match=match):
        store.promote(cand, card())
    assert (model / "manifest.json").read_bytes() == before
    assert store.releases() == []


LEGACY_CONTENT = {
    "torch-zip": None,  # built with zipfile below
    "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
    "json": b'  {"lora_A": [[0.1, 0.2]], "lora_B": [[0.3]]}\n',
}


def write_legacy(model: Path, kind: str) -> Path:
    cur = model / "adapters" / "current"
    cur.mkdir(parents=True)
    target = cur / "lora_adapters.pt"
    if kind == "torch-zip":
        with zipfile.ZipFile(target, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    else:
        target.write_bytes(LEGACY_CONTENT[kind])
    (cur / "notes.txt").write_text("old runtime files come along")
    return target


@pytest.mark.parametrize("kind", ["torch-zip", "pickle", "json"])
def test_legacy_current_dir_is_adopted(
    samples: Path, tmp_path: Path, model: Path, kind: str
) -> None:
    original = json.loads((samples / "model" / "manifest.pi5.safety.example.json").read_text())
    store = new_store(model, original)
    legacy_file = write_legacy(model, kind)
    digest = sha256_file(legacy_file)
    assert store.current() is None
    adopted = store.adopt_legacy()
    assert adopted is not None and adopted.legacy and adopted.format == kind
    assert adopted.sha256 == digest and adopted.adapter_file == "lora_adapters.pt"
    assert (adopted.path / "notes.txt").exists()
    assert_names(model, adopted.id)
    m = manifest_of(model)
    assert m["adapter_meta"]["rank"] == 8 and m["adapter_meta"]["alpha"] == 16
    assert m["previous"] is None and m["generation"] == 1
    assert store.adopt_legacy() is None  # current is a symlink now

    new = store.promote(make_candidate(tmp_path, "a"), card())
    assert manifest_of(model)["previous"] == adopted.id
    assert manifest_of(model)["adapter_meta"]["rank"] == 4
    back = store.rollback()
    assert back.id == adopted.id and back.legacy
    assert manifest_of(model)["adapter_meta"]["rank"] == 8
    assert_names(model, adopted.id)
    assert manifest_of(model)["paths"]["adapter"].endswith("lora_adapters.pt")
    assert strip_ours(manifest_of(model)) == strip_ours(original)
    assert new.id in [r.id for r in store.releases()]


def test_legacy_of_unknown_rank_does_not_inherit_a_stale_one(tmp_path: Path, model: Path) -> None:
    manifest = sample_manifest()
    manifest["adapter_meta"] = {"type": "lora"}
    store = new_store(model, manifest)
    write_legacy(model, "json")
    legacy = store.adopt_legacy()
    assert legacy is not None and legacy.rank is None
    store.promote(make_candidate(tmp_path, "a", rank=4), card())
    assert manifest_of(model)["adapter_meta"]["rank"] == 4
    store.rollback()
    assert "rank" not in manifest_of(model)["adapter_meta"]
    assert "alpha" not in manifest_of(model)["adapter_meta"]


def test_promote_adopts_a_legacy_dir_first(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    write_legacy(model, "json")
    new = store.promote(make_candidate(tmp_path, "a"), card())
    legacy = [r for r in store.releases() if r.legacy]
    assert len(legacy) == 1
    assert manifest_of(model)["previous"] == legacy[0].id
    assert_names(model, new.id)


def test_adoption_after_a_crash_reuses_the_release(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    write_legacy(model, "pickle")
    first = store.adopt_legacy()
    assert first is not None
    # a crash between the manifest write and the swap leaves the old directory in place
    (model / "adapters" / "current").unlink()
    write_legacy(model, "pickle")
    again = store.adopt_legacy()
    assert again is not None and again.id == first.id
    assert len(store.releases()) == 1
    assert_names(model, first.id)


def test_legacy_dir_without_a_recognisable_adapter(model: Path) -> None:
    store = new_store(model, sample_manifest())
    cur = model / "adapters" / "current"
    cur.mkdir(parents=True)
    (cur / "lora_adapters.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(StoreError, match="not a recognised adapter"):
        store.adopt_legacy()
    (cur / "lora_adapters.pt").unlink()
    with pytest.raises(StoreError, match="no adapter files"):
        store.adopt_legacy()
    assert cur.is_dir() and not cur.is_symlink()
    assert manifest_of(model) == sample_manifest()


def test_recover_cleans_leftovers_and_fixes_current(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    a = store.promote(make_candidate(tmp_path, "a"), card())
    b = store.promote(make_candidate(tmp_path, "b"), card())
    adapters = model / "adapters"
    (adapters / "releases" / ".tmp-r9-x-1234").mkdir()
    (adapters / "releases" / ".tmp-r9-x-1234" / "half").write_text("x")
    os.symlink("releases/" + a.id, adapters / ".tmp-current-abcd")
    (model / ".tmp-manifest.json.zz").write_text("{")
    (model / "unrelated.json").write_text("{}")
    # current still names a (a crash between manifest and symlink)
    os.replace(adapters / ".tmp-current-abcd", adapters / "current")
    os.symlink("releases/" + a.id, adapters / ".tmp-current-abcd")
    actions = store.recover()
    assert len([x for x in actions if x.startswith("removed leftover")]) == 3
    assert any(f"pointed current at {b.id}" in x for x in actions)
    assert_names(model, b.id)
    assert (model / "unrelated.json").exists()
    assert store.recover() == []  # nothing left to do
    (adapters / "current").unlink()
    assert store.recover() == [f"pointed current at {b.id} (the manifest's release)"]
    assert_names(model, b.id)


def test_recover_refuses_a_manifest_naming_a_missing_release(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    r = store.promote(make_candidate(tmp_path, "a"), card())
    shutil.rmtree(r.path)
    with pytest.raises(StoreError, match=r"missing release\.json"):
        store.recover()


def test_a_stray_release_dir_blocks_nothing(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    a = store.promote(make_candidate(tmp_path, "a"), card())
    stray_old = model / "adapters" / "releases" / "r0-20250101T000000Z"  # no release.json
    stray_old.mkdir()
    b = store.promote(make_candidate(tmp_path, "b"), card())
    assert b.generation == 2
    stray_new = model / "adapters" / "releases" / "r7-20990101T000000Z"
    stray_new.mkdir()
    assert [r.id for r in store.releases()] == [a.id, b.id]
    _, damaged = store.inventory()
    assert [d[0] for d in damaged] == [stray_old.name, stray_new.name]
    assert "missing release.json" in damaged[0][1]
    c = store.promote(make_candidate(tmp_path, "c"), card())
    assert c.id.startswith("r8-")  # never reuses a number a directory already holds
    assert store.rollback().id == b.id
    # The damaged dir older than current goes; the newer one may be work in progress.
    assert store.prune(5) == [stray_old.name]
    assert stray_new.is_dir()


def test_read_only_verbs_create_nothing(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest())
    assert store.current() is None and store.releases() == []
    assert store.recover() == []
    with pytest.raises(StoreError, match="names no release"):
        store.rollback()
    assert rollback_command(argparse.Namespace(release=None), config_for(model)) == 1
    assert releases_command(argparse.Namespace(), config_for(model)) == 0
    assert not (model / "adapters").exists()
    (model / "adapters").mkdir()  # an existing but empty store folder
    with pytest.raises(StoreError, match="names no release"):
        store.rollback()
    assert store.recover() == []
    assert list((model / "adapters").iterdir()) == []
    store.promote(make_candidate(tmp_path, "a"), card())
    assert (model / "adapters" / ".lock").stat().st_mode & 0o777 == 0o664


def test_promotion_refuses_a_manifest_for_another_model(tmp_path: Path, model: Path) -> None:
    store = new_store(model, sample_manifest(), model_name="continuon-mlp-policy")
    before = (model / "manifest.json").read_bytes()
    with pytest.raises(StoreError, match="is for model 'gemma-3n'; this trainer's policy is"):
        store.promote(make_candidate(tmp_path, "a"), card())
    assert (model / "manifest.json").read_bytes() == before
    assert not (model / "adapters" / "releases").exists() or not any(
        (model / "adapters" / "releases").iterdir()
    )
    same = new_store(model, None, model_name="gemma-3n")
    assert same.promote(make_candidate(tmp_path, "b"), card()).generation == 1


def test_store_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, daemon.store; "
        "bad = [m for m in ('torch', 'numpy', 'pickle') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def config_for(model: Path) -> TrainerConfig:
    return TrainerConfig(
        root=model.parent, paths=PathsConfig(model=model, manifest=model / "manifest.json")
    )


def test_cli_handlers(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = new_store(model, sample_manifest())
    cfg = config_for(model)
    assert releases_command(argparse.Namespace(), cfg) == 0
    assert "no releases" in capsys.readouterr().out
    a = store.promote(make_candidate(tmp_path, "a"), card(0.0123, 0.01))
    b = store.promote(make_candidate(tmp_path, "b"), card(0.0100, 0.0))
    assert releases_command(argparse.Namespace(), cfg) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"  {a.id}") and "0.0123" in out[1] and "1.00%" in out[1]
    assert out[2].startswith(f"* {b.id}") and "current" in out[2]
    assert rollback_command(argparse.Namespace(release=None), cfg) == 0
    assert f"current is now {a.id}" in capsys.readouterr().out
    assert_names(model, a.id)
    assert rollback_command(argparse.Namespace(release="r42-nope"), cfg) == 1
    assert "no release 'r42-nope'" in capsys.readouterr().err


def test_cli_verbs_end_to_end(tmp_path: Path) -> None:
    """The real console entry point, in a subprocess, against a root."""
    root = tmp_path / "root"
    model = root / "model"
    model.mkdir(parents=True)
    store = new_store(model, sample_manifest())
    a = store.promote(make_candidate(tmp_path, "a"), card())
    b = store.promote(make_candidate(tmp_path, "b"), card())

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", "--root", str(root), *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = cli("rollback")
    assert done.returncode == 0, done.stderr
    assert_names(model, a.id)
    done = cli("rollback", "--to", b.id)  # the plain rollback marked b bad: refused
    assert done.returncode == 1 and "marked bad" in done.stderr, done.stderr
    assert_names(model, a.id)
    done = cli("rollback", "--to", b.id, "--force")
    assert done.returncode == 0 and "warning" in done.stderr, done.stderr
    assert_names(model, b.id)
    listing = cli("releases")
    assert listing.returncode == 0 and f"* {b.id}" in listing.stdout, listing.stderr
