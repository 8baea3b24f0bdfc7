"""The episode watcher on a real folder: it reports top-level names and holds one inotify watch,
however many episodes (directories with a ``steps/`` each) the folder holds; the daemon still
takes an episode written in place, file by file."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.watcher import EpisodeWatcher
from tests.conftest import SAMPLES
from tests.daemon_harness import make_root, start_daemon, status, stop, wait_until

EPISODE = SAMPLES / "episodes" / "follow_user_mr_v1"
OTHER_EPISODE = SAMPLES / "episodes" / "follow_user_mr_v2"


def inotify_watches() -> int:
    """Inotify watches this process holds now, from the kernel's fdinfo."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += sum(line.startswith("inotify wd:") for line in info)
        except OSError:  # the fd closed while we looked
            continue
    return count


def episode(folder: Path, name: str, source: Path = EPISODE) -> None:
    """A layout-A episode (a folder with ``steps/``), renamed in as producers do."""
    staged = folder.parent / f".staging-{name}"
    shutil.copytree(source, staged)
    os.rename(staged, folder / name)


def changes_within(watcher: EpisodeWatcher, want: set[str], timeout_s: float = 10) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not want <= seen and time.monotonic() < deadline:
        watcher.wait(0.2)
        seen |= watcher.take_changes()
    return seen


def started(folder: Path) -> EpisodeWatcher:
    """A running watcher, once it has reported a first event (its watch is set up by then)."""
    watcher = EpisodeWatcher(folder)
    watcher.start()
    probe = folder / ".probe"
    for attempt in range(50):
        probe.write_text(str(attempt))
        if ".probe" in changes_within(watcher, {".probe"}, timeout_s=0.2):
            return watcher
    watcher.stop()
    raise AssertionError("the watcher reported nothing for 10 s")


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    for i in range(40):
        episode(episodes, f"old_{i:03d}")
    yield episodes


def test_the_watcher_holds_one_watch_and_reports_new_episodes(folder: Path) -> None:
    before = inotify_watches()
    watcher = started(folder)
    try:
        new = {f"new_{i:03d}" for i in range(20)}
        for name in sorted(new):
            episode(folder, name)
        assert new <= changes_within(watcher, new)
        # a recursive watch holds 2 per directory episode here (121 in all)
        assert inotify_watches() - before == 1
    finally:
        watcher.stop()


def test_an_episode_written_in_place_is_reported_by_its_top_level_name(folder: Path) -> None:
    watcher = started(folder)
    try:
        (folder / "in_place" / "steps").mkdir(parents=True)  # the later writes are not events:
        (folder / "in_place" / "steps" / "000000.jsonl").write_text("{}\n")  # pending is rescanned
        assert "in_place" in changes_within(watcher, {"in_place"})
    finally:
        watcher.stop()


def test_the_daemon_takes_an_episode_written_in_place_before_the_periodic_rescan(
    tmp_path: Path,
) -> None:
    """Only the top level is watched: a producer that writes an episode file by file inside the
    folder gives one event (the directory), and the daemon follows the settling entry until it
    is complete; the periodic rescan (an hour here) is not what finds it."""
    root, config = make_root(
        tmp_path, {"ingest": {"settle_s": 1.0}, "service": {"rescan_interval_s": 3600}}
    )
    proc = start_daemon(root, config)
    log = root / "daemon.log"
    try:
        wait_until(lambda: (status(root).get("ledger") or {}).get("valid") == 0, 60, "ready", log)
        target = root / "rlds" / "episodes" / "in_place"
        (target / "steps").mkdir(parents=True)
        (target / "metadata.json").write_bytes((EPISODE / "metadata.json").read_bytes())
        time.sleep(0.6)  # the producer is slow: the first look finds it settling
        for shard in sorted((EPISODE / "steps").iterdir()):
            (target / "steps" / shard.name).write_bytes(shard.read_bytes())
        valid = lambda: (status(root).get("ledger") or {}).get("valid") == 1  # noqa: E731
        wait_until(valid, 30, "the in-place episode in the ledger", log)
        episode(root / "rlds" / "episodes", "renamed_in", OTHER_EPISODE)  # not a duplicate
        renamed = lambda: (status(root).get("ledger") or {}).get("valid") == 2  # noqa: E731
        wait_until(renamed, 30, "the renamed episode in the ledger", log)
    finally:
        stop(proc)
