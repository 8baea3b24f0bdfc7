"""The systemd notify protocol (``Type=notify``), through sdnotify.

READY=1 once the service is up, STATUS= one line of what it does and why, WATCHDOG=1 only from the
loop itself (so a stalled loop stops pinging and systemd restarts us), STOPPING=1 on shutdown.
Without ``NOTIFY_SOCKET`` (a terminal, a test) every call is a cheap no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import sdnotify


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for.

    WATCHDOG_PID, when set, must be ours: systemd sets it for the main process only.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != pid:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


class Notifier:
    """Sends notify messages; remembers the last STATUS so it is only sent when it changes."""

    def __init__(
        self,
        environ: Mapping[str, str],
        pid: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._enabled = bool(environ.get("NOTIFY_SOCKET"))
        # sdnotify reads NOTIFY_SOCKET from the process environment itself.
        self._sd = sdnotify.SystemdNotifier() if self._enabled else None
        self._interval = watchdog_interval_s(environ, pid) if self._enabled else None
        self._monotonic = monotonic
        self._last_ping = float("-inf")
        self._last_status: str | None = None

    def _send(self, message: str) -> None:
        if self._sd is not None:
            # systemd wants UTF-8 and sdnotify encodes latin-1: keep status lines ASCII.
            self._sd.notify(message.encode("ascii", "replace").decode("ascii"))

    def ready(self, status: str) -> None:
        """READY=1 together with the first STATUS line."""
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, line: str) -> None:
        """STATUS=line, when it differs from the last one sent."""
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        """WATCHDOG=1 at half the watchdog interval; call it once per loop iteration."""
        if self._interval is None:
            return
        now = self._monotonic()
        if now - self._last_ping >= self._interval:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """Tell systemd a config reload began (``RELOADING=1``)."""
        self._send("RELOADING=1")

    def stopping(self, status: str = "stopping") -> None:
        """Tell systemd the daemon is shutting down, with ``status`` as its status line."""
        self._send(f"STOPPING=1\nSTATUS={status}")
