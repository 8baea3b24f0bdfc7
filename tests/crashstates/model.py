"""A small file-system model: replay recorded calls as events, then build crash states.

Objects are inodes: files (bytes), directories (name -> inode) and symlinks (target). An
:class:`Event` is one of

* ``dir``: one or more directory-entry changes made by one call (create, mkdir, symlink, unlink,
  rmdir, rename; a rename is two changes, or one inside a single directory);
* ``data``: a write (offset, bytes) or a truncate of one file;
* ``sync``: fsync/fdatasync of a file or a directory.

Persistence models (what a power cut after the first ``k`` events may leave):

``ordered``  ext4 ``data=ordered``-like: the disk holds exactly the effect of a prefix of the
             events (metadata and data in program order); the last write may be torn (only its
             first 1, half, or all-but-one bytes landed).
``strict``   "anything unsynced may vanish": each directory keeps the entries it had at its last
             fsync plus any *prefix* of its later changes (a journal keeps one directory's changes
             in order), independently of every other directory; each file keeps the writes made
             before its last fsync plus any *subset* of its later writes and truncates, in any
             order of landing (the last landed write may be torn). An inode reachable through no
             surviving entry is gone. Directories and files that existed before the operation
             are durable as they were.

States are deduplicated by content; the count reported is of distinct states.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.crashstates.trace import Call, TraceError, _bytes, _fd_path, _str, resolve

O_CREAT, O_TRUNC, O_APPEND = os.O_CREAT, os.O_TRUNC, os.O_APPEND
MAX_COMBOS = 40  # per crash point in the strict model; beyond it, a seeded sample
MAX_SUBSET_WRITES = 4  # files with more unsynced writes get prefixes + drop-one sets, not 2^n


@dataclass
class Node:
    """One inode: kind 'f' (data), 'd' (entries) or 'l' (target)."""

    kind: str
    data: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)
    target: str = ""


@dataclass(frozen=True)
class Event:
    """One recorded change (see module doc)."""

    kind: str  # dir | data | sync
    ino: int = 0  # data/sync: the inode
    parts: tuple[tuple[int, str, int | None], ...] = ()  # dir: (dir inode, name, inode|None)
    offset: int = 0
    payload: bytes | None = None  # data: bytes written; None = truncate to ``offset``


class Recording:
    """The initial tree under ``root`` and the events the traced run applied to it."""

    def __init__(self, root: Path) -> None:
        self.root = str(Path(root).absolute())
        self.initial: dict[int, Node] = {}
        self.nodes: dict[int, Node] = {}
        self._counter = itertools.count(1)
        self.root_ino = self._snapshot(Path(self.root))
        self.nodes = {i: _copy(n) for i, n in self.initial.items()}  # the live view
        self.events: list[Event] = []
        self._fds: dict[int, list] = {}  # fd -> [inode, position, append]

    # -- snapshot -----------------------------------------------------------------------

    def _new(self, node: Node, initial: bool = False) -> int:
        ino = next(self._counter)
        (self.initial if initial else self.nodes)[ino] = node
        return ino

    def _snapshot(self, path: Path) -> int:
        if path.is_symlink():
            return self._new(Node("l", target=os.readlink(path)), initial=True)
        if path.is_dir():
            node = Node("d")
            ino = self._new(node, initial=True)
            for child in sorted(path.iterdir()):
                node.entries[child.name] = self._snapshot(child)
            return ino
        return self._new(Node("f", data=path.read_bytes()), initial=True)

    # -- live path resolution -----------------------------------------------------------

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def _lookup(self, path: str) -> int | None:
        ino = self.root_ino
        rel = os.path.relpath(path, self.root)
        if rel == ".":
            return ino
        for part in rel.split("/"):
            node = self.nodes.get(ino)
            if node is None or node.kind != "d" or part not in node.entries:
                return None
            ino = node.entries[part]
        return ino

    def _parent(self, path: str) -> tuple[int, str]:
        parent = self._lookup(os.path.dirname(path))
        if parent is None:
            raise TraceError(f"no parent directory for {path} in the model")
        return parent, os.path.basename(path)

    def _apply(self, event: Event) -> None:
        self.events.append(event)
        apply_event(self.nodes, event)

    def _set(self, path: str, ino: int | None) -> tuple[int, str, int | None]:
        parent, name = self._parent(path)
        return (parent, name, ino)

    # -- replay -------------------------------------------------------------------------

    def replay(self, calls: list[Call]) -> None:
        """Apply every call that touches the root, recording events."""
        for call in calls:
            handler = getattr(self, f"_on_{call.name}", None)
            if handler is not None:
                handler(call)

    def _open(self, call: Call, path: str, flags: str) -> None:
        if not self._inside(path):
            return
        ino = self._lookup(path)
        if ino is None and "O_CREAT" in flags:
            ino = self._new(Node("f"))
            self._apply(Event("dir", parts=(self._set(path, ino),)))
        elif ino is not None and "O_TRUNC" in flags and self.nodes[ino].kind == "f":
            self._apply(Event("data", ino=ino, offset=0, payload=None))
        if ino is not None:
            self._fds[call.ret] = [ino, 0, "O_APPEND" in flags]

    def _on_openat(self, call: Call) -> None:
        self._open(call, resolve(call.args[0], _str(call.args[1])), call.args[2])

    def _on_open(self, call: Call) -> None:
        self._open(call, resolve(None, _str(call.args[0])), call.args[1])

    def _on_creat(self, call: Call) -> None:
        self._open(call, resolve(None, _str(call.args[0])), "O_CREAT|O_TRUNC")

    def _on_close(self, call: Call) -> None:
        self._fds.pop(int(call.args[0].split("<")[0]), None)

    def _fd(self, call: Call) -> list | None:
        path = _fd_path(call.args[0])
        if path is None or not self._inside(path):
            return None
        fd = int(call.args[0].split("<")[0])
        return self._fds.get(fd)

    def _on_lseek(self, call: Call) -> None:
        entry = self._fd(call)
        if entry is not None:
            entry[1] = call.ret

    def _on_write(self, call: Call) -> None:
        entry = self._fd(call)
        if entry is None:
            return
        data = _bytes(call.args[1])[: call.ret]
        ino, pos, append = entry
        offset = len(self.nodes[ino].data) if append else pos
        self._apply(Event("data", ino=ino, offset=offset, payload=data))
        entry[1] = offset + len(data)

    def _on_pwrite64(self, call: Call) -> None:
        entry = self._fd(call)
        if entry is not None:
            data = _bytes(call.args[1])[: call.ret]
            self._apply(Event("data", ino=entry[0], offset=int(call.args[3]), payload=data))

    def _on_writev(self, call: Call) -> None:
        if self._fd(call) is not None:
            raise TraceError("writev is not modelled")

    _on_pwritev = _on_writev

    def _on_sendfile(self, call: Call) -> None:
        if self._fd(call) is not None:
            raise TraceError(f"{call.name} is not modelled (copy bytes are not in the trace)")

    _on_copy_file_range = _on_sendfile

    def _on_ftruncate(self, call: Call) -> None:
        entry = self._fd(call)
        if entry is not None:
            self._apply(Event("data", ino=entry[0], offset=int(call.args[1]), payload=None))

    def _on_truncate(self, call: Call) -> None:
        path = resolve(None, _str(call.args[0]))
        if self._inside(path) and (ino := self._lookup(path)) is not None:
            self._apply(Event("data", ino=ino, offset=int(call.args[1]), payload=None))

    def _on_fsync(self, call: Call) -> None:
        path = _fd_path(call.args[0])
        if path is not None and self._inside(path) and (ino := self._lookup(path)) is not None:
            self._apply(Event("sync", ino=ino))

    _on_fdatasync = _on_fsync

    def _rename(self, old: str, new: str) -> None:
        if not (self._inside(old) or self._inside(new)):
            return
        if not (self._inside(old) and self._inside(new)):
            raise TraceError(f"rename across the root boundary: {old} -> {new}")
        ino = self._lookup(old)
        if ino is None:
            raise TraceError(f"rename of {old}, unknown to the model")
        src, dst = self._set(old, None), self._set(new, ino)
        self._apply(Event("dir", parts=(src, dst)))

    def _on_rename(self, call: Call) -> None:
        self._rename(resolve(None, _str(call.args[0])), resolve(None, _str(call.args[1])))

    def _on_renameat(self, call: Call) -> None:
        self._rename(
            resolve(call.args[0], _str(call.args[1])), resolve(call.args[2], _str(call.args[3]))
        )

    _on_renameat2 = _on_renameat

    def _remove(self, path: str) -> None:
        if self._inside(path):
            self._apply(Event("dir", parts=(self._set(path, None),)))

    def _on_unlink(self, call: Call) -> None:
        self._remove(resolve(None, _str(call.args[0])))

    _on_rmdir = _on_unlink

    def _on_unlinkat(self, call: Call) -> None:
        self._remove(resolve(call.args[0], _str(call.args[1])))

    def _make(self, path: str, node: Node) -> None:
        if self._inside(path):
            ino = self._new(node)
            self._apply(Event("dir", parts=(self._set(path, ino),)))

    def _on_mkdir(self, call: Call) -> None:
        self._make(resolve(None, _str(call.args[0])), Node("d"))

    def _on_mkdirat(self, call: Call) -> None:
        self._make(resolve(call.args[0], _str(call.args[1])), Node("d"))

    def _on_symlink(self, call: Call) -> None:
        self._make(resolve(None, _str(call.args[1])), Node("l", target=_str(call.args[0])))

    def _on_symlinkat(self, call: Call) -> None:
        target = _str(call.args[0])
        self._make(resolve(call.args[1], _str(call.args[2])), Node("l", target=target))

    def _on_link(self, call: Call) -> None:
        old, new = resolve(None, _str(call.args[0])), resolve(None, _str(call.args[1]))
        if self._inside(new):
            self._apply(Event("dir", parts=(self._set(new, self._lookup(old)),)))

    # -- crash states -------------------------------------------------------------------

    def states(
        self, model: str, seed: int = 0, max_combos: int = MAX_COMBOS
    ) -> Iterator[tuple[int, dict[int, Node]]]:
        """Yield ``(k, nodes)`` for every distinct crash state after the first k events (in the
        strict model at most ``max_combos`` per crash point: all if fewer, else a seeded sample
        that always holds the "nothing unsynced landed" and "everything landed" states)."""
        seen: set[str] = set()
        rng = random.Random(seed)
        for k in range(len(self.events) + 1):
            gen = self._ordered(k) if model == "ordered" else self._strict(k, rng, max_combos)
            for nodes in gen:
                key = digest(nodes, self.root_ino)
                if key not in seen:
                    seen.add(key)
                    yield k, nodes

    def _ordered(self, k: int) -> Iterator[dict[int, Node]]:
        nodes = self._base()
        for event in self.events[:k]:
            apply_event(nodes, event)
        yield nodes
        last = self.events[k - 1] if k else None
        if last is not None and last.kind == "data" and last.payload and len(last.payload) > 1:
            before = self._base()
            for event in self.events[: k - 1]:
                apply_event(before, event)
            n = len(last.payload)
            for cut in sorted({1, n // 2, n - 1}):
                torn = {i: _copy(x) for i, x in before.items()}
                apply_event(torn, _torn(last, cut))
                yield torn

    def _base(self) -> dict[int, Node]:
        """Initial nodes plus every inode the run created, empty (contents come from events)."""
        nodes = {i: _copy(n) for i, n in self.initial.items()}
        for i, n in self.nodes.items():
            if i not in nodes:
                nodes[i] = Node(n.kind, target=n.target)
        return nodes

    def _strict(self, k: int, rng: random.Random, cap: int) -> Iterator[dict[int, Node]]:
        per_dir: dict[int, list] = {}
        per_file: dict[int, list] = {}
        synced_dir: dict[int, int] = {}
        synced_file: dict[int, int] = {}
        for event in self.events[:k]:
            if event.kind == "dir":
                for part in event.parts:
                    per_dir.setdefault(part[0], []).append(part)
            elif event.kind == "data":
                per_file.setdefault(event.ino, []).append(event)
            elif event.ino in per_dir or self._is_dir(event.ino):
                synced_dir[event.ino] = len(per_dir.get(event.ino, []))
            else:
                synced_file[event.ino] = len(per_file.get(event.ino, []))
        axes: list[list] = []
        keys: list[tuple[str, int]] = []
        for d, parts in per_dir.items():
            lo = synced_dir.get(d, 0)
            axes.append(list(range(lo, len(parts) + 1)))
            keys.append(("d", d))
        for f, writes in per_file.items():
            axes.append(_file_choices(writes, synced_file.get(f, 0)))
            keys.append(("f", f))
        total = 1
        for a in axes:
            total *= len(a)
        if total <= cap:
            combos: list[tuple] = list(itertools.product(*axes))
        else:
            combos = [tuple(a[0] for a in axes), tuple(a[-1] for a in axes)]
            combos += [tuple(rng.choice(a) for a in axes) for _ in range(cap - 2)]
        for combo in combos:
            nodes = self._base()
            for (kind, ino), choice in zip(keys, combo, strict=True):
                if kind == "d":
                    for parent, name, child in per_dir[ino][:choice]:
                        _set_entry(nodes[parent], name, child)
                else:
                    for event in choice:
                        apply_event(nodes, event)
            yield nodes

    def _is_dir(self, ino: int) -> bool:
        node = self.nodes.get(ino) or self.initial.get(ino)
        return node is not None and node.kind == "d"


def _file_choices(writes: list[Event], synced: int) -> list[tuple[Event, ...]]:
    """Which of a file's data events land: all synced ones, plus subsets of the rest."""
    base, rest = tuple(writes[:synced]), writes[synced:]
    if len(rest) <= MAX_SUBSET_WRITES:
        subsets = [tuple(c) for r in range(len(rest) + 1) for c in itertools.combinations(rest, r)]
    else:  # prefixes, and every "all but one"
        subsets = [tuple(rest[:r]) for r in range(len(rest) + 1)]
        subsets += [tuple(w for j, w in enumerate(rest) if j != i) for i in range(len(rest))]
    out = [base + s for s in subsets]
    # the last landed write torn in half
    for s in subsets:
        if s and s[-1].payload is not None and len(s[-1].payload) > 1:
            out.append(base + s[:-1] + (_torn(s[-1], len(s[-1].payload) // 2),))
    return out


def _torn(event: Event, cut: int) -> Event:
    assert event.payload is not None
    return Event("data", ino=event.ino, offset=event.offset, payload=event.payload[:cut])


def _copy(n: Node) -> Node:
    return Node(n.kind, n.data, dict(n.entries), n.target)


def _set_entry(node: Node, name: str, child: int | None) -> None:
    if child is None:
        node.entries.pop(name, None)
    else:
        node.entries[name] = child


def apply_event(nodes: dict[int, Node], event: Event) -> None:
    """Apply one event to ``nodes`` in place."""
    if event.kind == "dir":
        for parent, name, child in event.parts:
            _set_entry(nodes[parent], name, child)
    elif event.kind == "data":
        node = nodes[event.ino]
        if event.payload is None:
            node.data = node.data[: event.offset].ljust(event.offset, b"\0")
        else:
            data = node.data.ljust(event.offset, b"\0")
            end = event.offset + len(event.payload)
            node.data = data[: event.offset] + event.payload + data[end:]


def walk(nodes: dict[int, Node], ino: int, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """``(relative path, node)`` for everything reachable from ``ino``."""
    for name, child in sorted(nodes[ino].entries.items()):
        node = nodes[child]
        path = f"{prefix}{name}"
        yield path, node
        if node.kind == "d":
            yield from walk(nodes, child, path + "/")


def digest(nodes: dict[int, Node], root: int) -> str:
    """A content key for deduplication."""
    h = hashlib.sha256()
    for path, node in walk(nodes, root):
        h.update(f"{path}\0{node.kind}\0{node.target}\0".encode())
        h.update(hashlib.sha256(node.data).digest())
    return h.hexdigest()


def materialise(nodes: dict[int, Node], root_ino: int, root: Path) -> None:
    """Replace the tree at ``root`` with the state ``nodes``."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for path, node in walk(nodes, root_ino):
        target = root / path
        if node.kind == "d":
            target.mkdir()
        elif node.kind == "l":
            os.symlink(node.target, target)
        else:
            target.write_bytes(node.data)
