"""Watches the episodes folder and tells the service loop when something changed.

The watcher never reads episodes: it only collects which top-level entries changed and wakes the
loop, which rescans (cheaply, by stat signature) in its own thread. A full periodic rescan backs
it up, so a missed event costs latency, never data. ``poll`` mode is for file systems without
inotify (some network or FUSE mounts).

It watches the top level only. A recursive watch holds two inotify watches per directory episode
(the episode and its ``steps/``) and about 0.6 KB of the daemon's memory per episode (measured over
4,000 episodes): a robot with 100,000 episodes would pass many kernels' ``max_user_watches``, and
the daemon would grow with the folder (``tests/test_watcher.py`` counts the watches). What the top
level misses costs only latency: an episode renamed or created in the folder is an event; one still
being written is ``pending`` and the loop rescans it every ``settle_s / 2`` until it is complete; a
complete episode rewritten in place later is found by the periodic rescan
(``service.rescan_interval_s``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import watchfiles

DEBOUNCE_MS = 100  # watchfiles' default 1600 ms would eat most of the 1 s detection budget


class EpisodeWatcher:
    """A background thread around ``watchfiles.watch`` on one folder's top level."""

    def __init__(self, folder: Path, force_polling: bool = False) -> None:
        self._folder = folder
        self._force_polling = force_polling
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._entries: set[str] = set()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Start watching (the folder must exist)."""
        self._thread = threading.Thread(target=self._run, name="episode-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                self._folder,
                watch_filter=None,  # producers' temp names matter too: they end in a rename
                recursive=False,  # memory and inotify watches flat as the folder grows (above)
                debounce=DEBOUNCE_MS,
                step=20,
                stop_event=self._stop,
                rust_timeout=1000,
                yield_on_timeout=True,
                force_polling=self._force_polling,
                poll_delay_ms=250,
                raise_interrupt=False,
            ):
                if not changes:
                    continue
                with self._lock:
                    for _change, path in changes:
                        parts = Path(path).relative_to(self._folder).parts
                        if parts:
                            self._entries.add(parts[0])
                self._changed.set()
        except Exception as exc:  # reported to the loop, which falls back to rescans
            self.error = f"{type(exc).__name__}: {exc}"
            self._changed.set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until something changed or ``timeout_s`` passed; True when something changed."""
        return self._changed.wait(timeout_s)

    def take_changes(self) -> set[str]:
        """The top-level entries changed since the last call (and clear them)."""
        with self._lock:
            entries, self._entries = self._entries, set()
            self._changed.clear()
        return entries

    def wake(self) -> None:
        """Wake a :meth:`wait` early (a signal handler asking the loop to act now)."""
        self._changed.set()

    @property
    def alive(self) -> bool:
        """Whether the watching thread still runs (it ends on an error, see ``error``)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the watching thread and wait briefly for it to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
