"""Crash safety of the adapter store, with real processes and real SIGKILLs.

A small "zygote" subprocess imports daemon.store once, then for each request forks a worker that
promotes / rolls back / prunes in a loop and SIGKILLs it after a random delay (forking keeps 200+
kills inside a few seconds; each worker is an ordinary process dying mid-write). After every kill
the test checks the files on disk, then runs recover() and checks again.

The atomic writer's system-call order is checked from outside the process: under strace when it
is installed (CI: ``apt-get install -y strace``), and always through an audit hook
(``sys.addaudithook`` sees opens, renames and symlinks, though not fsync).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.store import RELEASE_ID, AdapterStore, sha256_file
from tests.test_store import make_candidate, sample_manifest, write_legacy

REPO = Path(__file__).resolve().parent.parent
KILLS = 200
ADOPTION_KILLS = 40

ZYGOTE = r"""
import json, os, signal, sys, time, traceback
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from daemon.store import AdapterStore, StoreError

def work(model, mode, cands, i):
    store = AdapterStore(model / "adapters", model / "manifest.json")
    store.recover()
    if mode == "adopt":
        store.adopt_legacy()
    while True:
        op = i % 5
        if op in (0, 2):
            store.promote(cands[i % len(cands)], {"i": i, "metrics": {"candidate": {"mse": 0.1}}})
        elif op in (1, 3):
            try:  # "health": an automatic rollback, which marks the release it leaves bad
                store.rollback(mark_bad="health window" if mode == "health" else None)
            except StoreError as exc:  # the walk reached the oldest release
                assert "no earlier release" in str(exc), exc
        else:
            store.prune(2)
        i += 1

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            work(Path(req["model"]), req["mode"], [Path(c) for c in req["cands"]], req["start"])
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)
    time.sleep(req["delay"])
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"killed": killed, "status": status}), flush=True)
"""


class Zygote:
    """The long-lived subprocess that forks workers and kills them on request."""

    def __init__(self, tmp: Path) -> None:
        script = tmp / "zygote.py"
        script.write_text(ZYGOTE)
        self.proc = subprocess.Popen(
            [sys.executable, "-S", str(script), str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: str | None = None

    def run_and_kill(
        self, model: Path, mode: str, cands: list[Path], delay: float, start: int = 0
    ) -> None:
        """Fork a worker that starts at operation ``start``; SIGKILL it after ``delay`` s."""
        req = {
            "model": str(model),
            "mode": mode,
            "cands": [str(c) for c in cands],
            "delay": delay,
            "start": start,
        }
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"zygote died: {self.close()}")
        reply = json.loads(line)
        if not reply["killed"]:
            raise AssertionError(f"worker failed on its own: {reply}\n{self.close()}")

    def close(self) -> str:
        """Stop the zygote; return its stderr (idempotent)."""
        if self.err is None:
            try:
                _, self.err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, self.err = self.proc.communicate()
        return self.err


def leftovers(model: Path) -> list[str]:
    adapters = model / "adapters"
    places = [adapters, adapters / "releases", model]
    return [p.name for d in places if d.is_dir() for p in d.iterdir() if p.name.startswith(".tmp")]


def check_on_disk(model: Path) -> dict[str, Any]:
    """What must hold at every instant: the manifest parses and names a complete release."""
    manifest = json.loads((model / "manifest.json").read_text())
    meta = manifest["adapter_meta"]
    rid = meta["release_id"]
    release = model / "adapters" / "releases" / rid
    assert RELEASE_ID.match(rid)
    assert manifest["paths"]["adapter_dir"] == str(release)
    adapter = Path(manifest["paths"]["adapter"])
    assert adapter.parent == release
    assert sha256_file(adapter) == meta["sha256"]
    info = json.loads((release / "release.json").read_text())
    assert info["sha256"] == meta["sha256"] and info["id"] == rid
    for other in (model / "adapters" / "releases").iterdir():
        if not other.name.startswith("."):  # every named release is complete
            other_info = json.loads((other / "release.json").read_text())
            assert sha256_file(other / other_info["adapter_file"]) == other_info["sha256"]
    return manifest


def check_after_recover(model: Path, manifest: dict[str, Any]) -> None:
    store = AdapterStore(model / "adapters", model / "manifest.json")
    store.recover()
    # recover() finishes a marked rollback that was killed before the manifest moved
    rid = json.loads((model / "manifest.json").read_text())["adapter_meta"]["release_id"]
    assert rid not in store.marks()["bad"] or store.rollback_target(rid) is None
    if not store.marks()["bad"]:
        assert rid == manifest["adapter_meta"]["release_id"]
    assert os.readlink(model / "adapters" / "current") == f"releases/{rid}"
    assert leftovers(model) == []
    current = store.current()
    assert current is not None and current.id == rid
    assert store.recover() == []


@pytest.mark.parametrize("mode", ["loop", "health"])
def test_sigkill_during_promote_rollback_prune(tmp_path: Path, mode: str) -> None:
    """``health``: SIGKILL at any point of an automatic (bad-marking) rollback."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps(sample_manifest()))
    cands = [make_candidate(tmp_path, n) for n in ("a", "b", "c")]
    store = AdapterStore(model / "adapters", model / "manifest.json")
    started = time.perf_counter()
    store.promote(cands[0], {"seed": 0})
    store.promote(cands[1], {"seed": 1})  # so that a worker may start with a rollback
    # fsync latency varies tenfold with the disk's load: scale the kill window to it, so that
    # kills land both before the first write and a few operations in
    window = min(0.1, max(0.03, time.perf_counter() - started))
    rng = random.Random(1234)
    zygote = Zygote(tmp_path)
    last_generation = 0
    torn = 0  # kills that left a half-done operation for recover() to finish
    try:
        for k in range(KILLS):
            zygote.run_and_kill(model, mode, cands, rng.uniform(0.0, window), start=k)
            manifest = check_on_disk(model)
            assert manifest["generation"] >= last_generation
            last_generation = manifest["generation"]
            link = os.readlink(model / "adapters" / "current")
            rid = manifest["adapter_meta"]["release_id"]
            torn += bool(leftovers(model)) or link != f"releases/{rid}"
            check_after_recover(model, manifest)
    finally:
        err = zygote.close()
    assert "Traceback" not in err, err
    # the loop really ran (each worker did work) and kills landed mid-operation
    assert last_generation >= 20, last_generation
    assert torn >= 10, torn


def test_sigkill_during_legacy_adoption(tmp_path: Path) -> None:
    cands = [make_candidate(tmp_path, n) for n in ("a", "b")]
    rng = random.Random(99)
    zygote = Zygote(tmp_path)
    original = json.dumps(sample_manifest(), indent=2)
    # how long one adoption takes on this disk now: kills spread over three times that, and the
    # first few come at once (before anything is written)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "manifest.json").write_text(original)
    write_legacy(probe, "torch-zip")
    started = time.perf_counter()
    AdapterStore(probe / "adapters", probe / "manifest.json").adopt_legacy()
    window = 3 * (time.perf_counter() - started)
    untouched = 0
    try:
        for k in range(ADOPTION_KILLS):
            model = tmp_path / f"m{k}"
            model.mkdir()
            (model / "manifest.json").write_text(original)
            legacy = write_legacy(model, "torch-zip")
            digest = sha256_file(legacy)
            zygote.run_and_kill(model, "adopt", cands, 0.0 if k < 4 else rng.uniform(0.0, window))
            manifest = json.loads((model / "manifest.json").read_text())
            if "release_id" not in manifest["adapter_meta"]:
                # killed before the manifest write: the old install is exactly as it was
                assert (model / "manifest.json").read_text() == original
                assert sha256_file(model / "adapters" / "current" / "lora_adapters.pt") == digest
                untouched += 1
            else:
                check_on_disk(model)
            store = AdapterStore(model / "adapters", model / "manifest.json")
            store.recover()
            store.adopt_legacy()
            manifest = check_on_disk(model)
            check_after_recover(model, manifest)
            adopted = [r for r in store.releases() if r.legacy]
            assert len(adopted) == 1 and adopted[0].sha256 == digest
            shutil.rmtree(model)
    finally:
        err = zygote.close()
    assert "Traceback" not in err, err
    assert 0 < untouched < ADOPTION_KILLS, untouched


PROMOTE_ONCE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from daemon.store import AdapterStore
model, cand = Path(sys.argv[2]), Path(sys.argv[3])
store = AdapterStore(model / "adapters", model / "manifest.json")
if len(sys.argv) > 4:
    events = []
    root = str(model)
    def hook(event, args):
        if event in ("open", "os.rename", "os.symlink"):
            if any(isinstance(a, str) and a.startswith(root) for a in args[:2]):
                events.append([event, *[a if isinstance(a, str | int) else None for a in args]])
    sys.addaudithook(hook)
release = store.promote(cand, {"x": 1})
if len(sys.argv) > 4:
    print(json.dumps({"release": release.id, "events": events}))
else:
    print(json.dumps({"release": release.id}))
"""


def prepared(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps(sample_manifest()))
    AdapterStore(model / "adapters", model / "manifest.json").promote(
        make_candidate(tmp_path, "first"), {}
    )
    script = tmp_path / "promote_once.py"
    script.write_text(PROMOTE_ONCE)
    return model, make_candidate(tmp_path, "second"), script


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_syscall_order_under_strace(tmp_path: Path) -> None:
    model, cand, script = prepared(tmp_path)
    trace = tmp_path / "trace.txt"
    done = subprocess.run(
        [
            "strace", "-f", "-y", "-qq", "-o", str(trace),
            "-e", "trace=openat,write,fsync,rename,renameat,renameat2,symlink,symlinkat",
            sys.executable, "-S", str(script), str(REPO), str(model), str(cand),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rid = json.loads(done.stdout)["release"]
    calls = parse_strace(trace.read_text(), str(model))
    adapters, releases = model / "adapters", model / "adapters" / "releases"

    def first(name: str, pred) -> int:
        hits = [i for i, (n, args) in enumerate(calls) if n == name and pred(args)]
        assert hits, f"no {name} matching in trace:\n" + "\n".join(map(str, calls))
        return hits[0]

    # the manifest: write temp, fsync it, rename over, fsync the directory
    rn = first("rename", lambda a: a.endswith(f'"{model}/manifest.json"'))
    tmp = re.search(r'"([^"]+)"', calls[rn][1]).group(1)
    assert Path(tmp).parent == model and Path(tmp).name.startswith(".tmp-manifest.json.")
    op = first("openat", lambda a: f'"{tmp}"' in a and "O_CREAT" in a)
    wr = first("write", lambda a: a.startswith(f"<{tmp}>") or f"<{tmp}>" in a.split(",")[0])
    fs = first("fsync", lambda a: f"<{tmp}>" in a)
    dir_fsync = [
        i for i, (n, a) in enumerate(calls) if n == "fsync" and a.endswith(f"<{model}>") and i > rn
    ]
    assert op < wr < fs < rn < dir_fsync[0], (op, wr, fs, rn, dir_fsync)

    # the release: every staged file fsynced before the directory is renamed into place
    rel = first("rename", lambda a: f'"{releases}/{rid}"' in a)
    staged = re.search(r'"([^"]+)"', calls[rel][1]).group(1)
    for name in ("adapter_model.safetensors", "release.json", "card.json", "adapter_config.json"):
        f = first("fsync", lambda a, name=name: f"<{staged}/{name}>" in a)
        assert f < rel
    assert first("fsync", lambda a: f"<{staged}>" in a) < rel
    assert any(n == "fsync" and f"<{releases}>" in a for n, a in calls[rel:rn])

    # current: a temp symlink renamed over it after the manifest, then the directory fsynced
    sl = first("symlink", lambda a: f'"releases/{rid}"' in a)
    cur = first("rename", lambda a: a.endswith(f'"{adapters}/current"'))
    assert rel < rn < sl < cur
    assert any(n == "fsync" and f"<{adapters}>" in a for n, a in calls[cur:])
    # nothing ever writes the manifest or a release file in place
    assert not any(
        n == "openat" and "O_CREAT" in a and f'"{model}/manifest.json"' in a for n, a in calls
    )


def parse_strace(text: str, root: str) -> list[tuple[str, str]]:
    """(syscall, argument text) for each completed call touching ``root``; symlinkat as symlink,
    renameat/renameat2 as rename (paths are what the tests compare)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+(-?\d+)", line)
        if not m or m.group(3).startswith("-") or root not in m.group(2):
            continue
        name = {"symlinkat": "symlink", "renameat": "rename", "renameat2": "rename"}.get(
            m.group(1), m.group(1)
        )
        args = m.group(2)
        if name == "rename" and m.group(1) != "rename":
            args = ", ".join(re.findall(r'"[^"]*"', args))
        out.append((name, args))
    return out


def test_order_seen_by_an_audit_hook(tmp_path: Path) -> None:
    model, cand, script = prepared(tmp_path)
    done = subprocess.run(
        [sys.executable, "-S", str(script), str(REPO), str(model), str(cand), "audit"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    rid, events = out["release"], out["events"]
    manifest = str(model / "manifest.json")
    releases = str(model / "adapters" / "releases")

    def index(pred) -> int:
        hits = [i for i, e in enumerate(events) if pred(e)]
        assert hits, events
        return hits[0]

    rn = index(lambda e: e[0] == "os.rename" and e[2] == manifest)
    tmp = events[rn][1]
    assert os.path.basename(tmp).startswith(".tmp-manifest.json.")
    created = index(lambda e: e[0] == "open" and e[1] == tmp)
    dir_open = index(lambda e: e[0] == "open" and e[1] == str(model) and e[3] & os.O_DIRECTORY)
    rel = index(lambda e: e[0] == "os.rename" and e[2] == f"{releases}/{rid}")
    staged = events[rel][1]
    staged_opens = [
        i for i, e in enumerate(events) if e[0] == "open" and str(e[1]).startswith(staged + "/")
    ]
    sl = index(lambda e: e[0] == "os.symlink" and e[1] == f"releases/{rid}")
    cur = index(lambda e: e[0] == "os.rename" and e[2] == str(model / "adapters" / "current"))
    assert max(staged_opens) < rel < created < rn < dir_open, events
    assert rn < sl < cur, events
    assert events[sl][2] == events[cur][1]
    # the manifest itself is only ever read, never opened for writing
    writes = [
        e for e in events if e[0] == "open" and e[1] == manifest and e[2] not in (None, "r", "rb")
    ]
    assert [e for e in writes if e[3] and e[3] & (os.O_WRONLY | os.O_RDWR)] == []
