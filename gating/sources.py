"""Signal sources: each reads one place and returns readings keyed by signal name.

A source never raises and never guesses: whatever goes wrong becomes a :class:`Reading` with an
``error`` that names the file, URL or zone, and no value. Every reading carries its age in
seconds. Values are plain JSON types: the mode a ``str``, the temperature a ``float`` in °C, the
battery ``{"percent": float, "charging": bool | None}``, load/memory/disk ``float``.

Clocks are injected (``monotonic`` and ``wall`` callables) so tests drive time.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

Clock = Callable[[], float]


@dataclass(frozen=True)
class Reading:
    """One signal as read: a value with its age, or an error saying why there is none."""

    source: str
    value: Any = None
    age_s: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether there is a value (no error)."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The reading as a JSON-ready mapping."""
        age = None if self.age_s is None else round(self.age_s, 3)
        return {"source": self.source, "value": self.value, "age_s": age, "error": self.error}


def _failed(source: str, error: str, *signals: str) -> dict[str, Reading]:
    return {name: Reading(source, error=error) for name in signals}


def _number(raw: Any) -> float | None:
    """A finite JSON number (bools are not numbers here), else None."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw) if math.isfinite(raw) else None


def _battery_value(percent: Any, charging: Any, where: str) -> tuple[dict | None, str | None]:
    number = _number(percent)
    if number is None:
        return None, f"{where}: battery percent {percent!r} is not a number"
    if not 0.0 <= number <= 100.0:
        return None, f"{where}: battery percent {number:g} out of range 0-100"
    if charging is not None and not isinstance(charging, bool):
        return None, f"{where}: charging {charging!r} is not true/false"
    return {"percent": number, "charging": charging}, None


class NotRegularFile(OSError):
    """A FIFO, socket or device where a signal file should be: reading it could block the
    gate poll (and with it every preemption) indefinitely."""


def _read_regular(path: Path, limit: int) -> tuple[bytes, float]:
    """Up to ``limit`` bytes of a regular file and its mtime. Opened with O_NONBLOCK, so a FIFO
    with no writer (or a device) neither blocks the open nor the read: it is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"not a regular file ({_kind(st.st_mode)})")
        return fh.read(limit), st.st_mtime


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _read_json(path: Path, label: str) -> tuple[dict | None, float | None, str | None]:
    """Parse a small JSON object file; return it with its mtime, or an error."""
    try:
        text, mtime = _read_regular(path, 1 << 20)
    except NotRegularFile as exc:
        return None, None, f"{label} {path} refused: {exc}"
    except FileNotFoundError:
        return None, None, f"{label} {path} missing"
    except OSError as exc:
        return None, None, f"{label} {path} unreadable: {exc.strerror or exc}"
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, None, f"{label} {path} is not valid JSON (half-written?)"
    if not isinstance(data, dict):
        return None, None, f"{label} {path} is not a JSON object"
    return data, mtime, None


class ModeFileSource:
    """continuonos ``.robot_mode``: rewritten (not atomically) only when the mode changes, so the
    age is how long the mode has lasted, never staleness. An unknown mode is returned as read;
    the gate refuses it."""

    signals = ("mode",)

    def __init__(self, path: Path, wall: Clock) -> None:
        self.path = path
        self.wall = wall
        self.label = f"mode file {path}"

    def read(self) -> dict[str, Reading]:
        """The ``mode`` reading; its age is how long the mode has lasted."""
        data, mtime, error = _read_json(self.path, "mode file")
        if error is not None and error.endswith(" missing"):
            error += (
                ': write {"mode": "idle", "timestamp": <unix s>} there or point '
                "gate.mode_file at the runtime's"
            )
        if error is not None:
            return _failed(self.label, error, "mode")
        mode = data.get("mode")
        if not isinstance(mode, str):
            return _failed(self.label, f'mode file {self.path} has no "mode" string', "mode")
        stamp = _number(data.get("timestamp"))
        since = stamp if stamp is not None else mtime
        return {"mode": Reading(self.label, mode, max(0.0, self.wall() - since))}


class SignalsFileSource:
    """A JSON file for simulators, the demo and tests:
    ``{"mode", "battery_percent", "charging", "temp_c", "timestamp"}``, every key optional.

    Staleness: the age is ``now - timestamp`` when the file carries a ``timestamp`` (Unix s),
    else ``now - mtime``; older than ``max_age_s`` (or that far in the future) is stale, and a
    stale file gives no readings at all.
    """

    signals = ("mode", "battery", "temperature")

    def __init__(self, path: Path, max_age_s: float, wall: Clock) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self.wall = wall
        self.label = f"signals file {path}"

    def read(self) -> dict[str, Reading]:
        """``mode``, ``battery`` and ``temperature`` from the file; nothing when it is stale."""
        data, mtime, error = _read_json(self.path, "signals file")
        if error is not None:
            return _failed(self.label, error, *self.signals)
        stamp = _number(data.get("timestamp"))
        age = self.wall() - (stamp if stamp is not None else mtime)
        if age > self.max_age_s:
            stale = f"signals file {self.path} stale: {age:.0f} s old > {self.max_age_s:g} s"
            return _failed(self.label, stale, *self.signals)
        if age < -self.max_age_s:
            future = f"signals file {self.path} timestamp {-age:.0f} s in the future"
            return _failed(self.label, future, *self.signals)
        age = max(0.0, age)
        out: dict[str, Reading] = {}
        mode = data.get("mode")
        if mode is None:
            out["mode"] = Reading(self.label, error=f'signals file {self.path} has no "mode"')
        elif not isinstance(mode, str):
            out["mode"] = Reading(self.label, error=f"signals file {self.path}: mode not a string")
        else:
            out["mode"] = Reading(self.label, mode, age)
        if "battery_percent" not in data:
            msg = f'signals file {self.path} has no "battery_percent"'
            out["battery"] = Reading(self.label, error=msg)
        else:
            where = f"signals file {self.path}"
            value, err = _battery_value(data["battery_percent"], data.get("charging"), where)
            out["battery"] = Reading(self.label, value, age if err is None else None, err)
        temp = data.get("temp_c")
        if temp is None:
            msg = f'signals file {self.path} has no "temp_c"'
            out["temperature"] = Reading(self.label, error=msg)
        elif _number(temp) is None:
            msg = f"signals file {self.path}: temp_c {temp!r} is not a number"
            out["temperature"] = Reading(self.label, error=msg)
        else:
            out["temperature"] = Reading(self.label, float(temp), age)
        return out


def fetch_status(url: str, timeout_s: float) -> dict[str, Any]:
    """GET a continuonos status endpoint; return its status object (flat 8081 shape, or the
    ``status`` member of the 8080 ``{"success", "status"}`` shape). Raises ``OSError`` or
    ``ValueError`` with a readable message."""
    parts = urlsplit(url)
    # Real time, not the gate's injected clock: this bounds an actual wait on a socket.
    deadline = time.monotonic() + timeout_s
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        conn.connect()
        sock = conn.sock  # the response keeps using it after http.client drops conn.sock
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        conn.request("GET", parts.path or "/", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        body = resp.read(1 << 20)
    finally:
        conn.close()
    if resp.status != 200:
        raise ValueError(f"HTTP {resp.status}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("answer is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("answer is not a JSON object")
    if isinstance(data.get("status"), dict):
        if data.get("success") is False:
            raise ValueError("answer says success: false")
        return data["status"]
    return data


class StatusHttpSource:
    """The continuonos status endpoint on loopback: runtime liveness, mode and battery.

    Asked at most every ``refresh_s``; between, the last answer (or failure) is returned with its
    age, so a dead endpoint costs one ``timeout_s`` wait per refresh, not per poll.
    """

    signals = ("runtime", "mode", "battery")

    def __init__(self, url: str, timeout_s: float, refresh_s: float, monotonic: Clock) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.monotonic = monotonic
        self.label = f"status endpoint {url}"
        self._cached: dict[str, Reading] | None = None
        self._fetched_at = 0.0

    def read(self) -> dict[str, Reading]:
        """Runtime liveness, ``mode`` and ``battery``, asking the endpoint at most every
        ``refresh_s``; ages count from the last answer."""
        now = self.monotonic()
        if self._cached is None or now - self._fetched_at >= self.refresh_s:
            self._cached = self._fetch()
            self._fetched_at = now
        age = max(0.0, now - self._fetched_at)
        return {
            name: Reading(r.source, r.value, age if r.ok else None, r.error)
            for name, r in self._cached.items()
        }

    def _fetch(self) -> dict[str, Reading]:
        try:
            status = fetch_status(self.url, self.timeout_s)
        except TimeoutError:
            err = f"{self.label}: no answer within {self.timeout_s:g} s"
            return _failed(self.label, err, *self.signals)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return _failed(self.label, f"{self.label}: {reason}", *self.signals)
        out = {"runtime": Reading(self.label, True, 0.0)}
        mode = status.get("mode")
        out["mode"] = (
            Reading(self.label, mode, 0.0)
            if isinstance(mode, str)
            else Reading(self.label, error=f"{self.label}: no mode in the answer")
        )
        battery = status.get("battery")
        if not isinstance(battery, dict):
            out["battery"] = Reading(self.label, error=f"{self.label}: no battery in the answer")
        elif battery.get("available") is False:
            why = battery.get("error") or "available: false"
            out["battery"] = Reading(self.label, error=f"{self.label}: battery unavailable ({why})")
        else:
            value, err = _battery_value(
                battery.get("charge_percent"), battery.get("is_charging"), self.label
            )
            out["battery"] = Reading(self.label, value, 0.0 if err is None else None, err)
        return out


def _read_text(path: Path) -> str:
    """A sysfs attribute's text (never blocking on something that is not a regular file)."""
    return _read_regular(path, 1 << 16)[0].decode("ascii", errors="replace").strip()


class ThermalSource:
    """sysfs thermal zones chosen by directory name (``thermal_zone0``) or ``type``
    (``cpu-thermal``); the temperature is the hottest chosen zone. Every selector must match a
    zone and every matched zone must read, or there is no reading."""

    signals = ("temperature",)

    def __init__(self, root: Path, selectors: list[str]) -> None:
        self.root = root
        self.selectors = list(selectors)
        self.label = f"thermal {root} [{', '.join(selectors)}]"
        self._zones: list[tuple[str, Path]] | None = None

    def _resolve(self) -> tuple[list[tuple[str, Path]] | None, str | None]:
        try:
            dirs = sorted(p for p in self.root.iterdir() if p.name.startswith("thermal_zone"))
        except OSError as exc:
            return None, f"thermal root {self.root} unreadable: {exc.strerror or exc}"
        found: list[tuple[str, str, Path]] = []
        for zone in dirs:
            try:
                kind = _read_text(zone / "type")
            except OSError:
                kind = "?"
            found.append((zone.name, kind, zone))
        chosen: list[tuple[str, Path]] = []
        for sel in self.selectors:
            hits = [(f"{n} ({k})", z) for n, k, z in found if sel in (n, k)]
            if not hits:
                have = ", ".join(f"{n} ({k})" for n, k, _ in found) or "none"
                return None, f"no thermal zone matches {sel!r} under {self.root} (found: {have})"
            chosen.extend(h for h in hits if h not in chosen)
        return chosen, None

    def read(self) -> dict[str, Reading]:
        """The ``temperature`` reading: the hottest chosen zone, in degrees C."""
        if self._zones is None:
            self._zones, error = self._resolve()
            if error is not None:
                return _failed(self.label, error, "temperature")
        temps = []
        for name, zone in self._zones:
            try:
                text = _read_text(zone / "temp")
                temps.append(int(text) / 1000.0)
            except (OSError, ValueError) as exc:
                self._zones = None  # zones may have been renumbered: look again next time
                detail = exc.strerror if isinstance(exc, OSError) else "not a number"
                err = f"thermal zone {name}: cannot read {zone / 'temp'}: {detail or exc}"
                return _failed(self.label, err, "temperature")
        return {"temperature": Reading(self.label, max(temps), 0.0)}


class PowerSupplySource:
    """sysfs power supplies (``capacity``, ``status``). Charging means status ``Charging`` or
    ``Full`` (on external power); with several batteries the emptiest one counts."""

    signals = ("battery",)

    def __init__(self, root: Path, selectors: list[str]) -> None:
        self.root = root
        self.selectors = list(selectors)
        self.label = f"power supply {root} [{', '.join(selectors) or 'type Battery'}]"

    def read(self) -> dict[str, Reading]:
        """The ``battery`` reading: the emptiest battery's percent and whether it charges."""
        try:
            supplies = sorted(self.root.iterdir())
        except OSError as exc:
            err = f"power supply root {self.root} unreadable: {exc.strerror or exc}"
            return _failed(self.label, err, "battery")
        chosen = []
        for sup in supplies:
            try:
                kind = _read_text(sup / "type")
            except OSError:
                kind = "?"
            wanted = self.selectors or ["Battery"]
            if sup.name in wanted or kind in wanted:
                chosen.append(sup)
        if not chosen:
            want = ", ".join(self.selectors) or "type Battery"
            return _failed(
                self.label, f"no power supply matches {want} under {self.root}", "battery"
            )
        values = []
        for sup in chosen:
            try:
                capacity = int(_read_text(sup / "capacity"))
                status = _read_text(sup / "status")
            except (OSError, ValueError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else "not a number"
                return _failed(self.label, f"power supply {sup.name}: {detail or exc}", "battery")
            value, err = _battery_value(capacity, status in ("Charging", "Full"), str(sup))
            if err is not None:
                return _failed(self.label, err, "battery")
            values.append(value)
        return {"battery": Reading(self.label, min(values, key=lambda v: v["percent"]), 0.0)}


class PsutilBatterySource:
    """``psutil.sensors_battery()``; no battery reported means no reading."""

    signals = ("battery",)
    label = "psutil battery"

    def read(self) -> dict[str, Reading]:
        """The ``battery`` reading from psutil, or a failed one when no battery is reported."""
        try:
            bat = psutil.sensors_battery()
        except Exception as exc:  # psutil's platform code may raise anything on odd hardware
            return _failed(self.label, f"psutil battery: {exc}", "battery")
        if bat is None:
            return _failed(self.label, "psutil reports no battery", "battery")
        value, err = _battery_value(float(bat.percent), bat.power_plugged, self.label)
        return {"battery": Reading(self.label, value, 0.0 if err is None else None, err)}


def own_tree(pid: int) -> set[int]:
    """``pid`` and its live descendants, from ``/proc/<pid>/task/<tid>/children`` (a few small
    reads, unlike psutil's scan of every process); psutil's scan where that file is missing."""
    tree, todo = set(), [pid]
    while todo:
        cur = todo.pop()
        if cur in tree:
            continue
        tree.add(cur)
        try:
            tids = os.listdir(f"/proc/{cur}/task")
            for tid in tids:
                with open(f"/proc/{cur}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{cur}"):
                continue  # it exited meanwhile
            return _own_tree_psutil(pid)
        except OSError:
            continue
    return tree


def _own_tree_psutil(pid: int) -> set[int]:
    try:
        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}


class CpuLoadSource:
    """CPU used by processes other than the daemon's own tree (the job child included in it),
    in percent of the whole machine, averaged over ``window_s``.

    System-wide busy time (``/proc/stat``) minus the own tree's time. The tree's time counts
    reaped children (``children_user``/``children_system``), so a child that exits between two
    samples is not mistaken for someone else's load. Sampled at most every ``sample_interval_s``;
    the first reading needs two samples.
    """

    signals = ("load",)
    label = "cpu load of other processes"

    def __init__(self, own_pid: int, window_s: float, interval_s: float, monotonic: Clock) -> None:
        self.own_pid = own_pid
        self.window_s = window_s
        self.interval_s = interval_s
        self.monotonic = monotonic
        self._samples: deque[tuple[float, float, float, float]] = deque()
        self._procs: dict[int, psutil.Process] = {}

    def tree_cpu_s(self) -> float:
        """CPU seconds used so far by the own tree, reaped children included."""
        pids = own_tree(self.own_pid)
        total = 0.0
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        for gone in set(self._procs) - pids:
            del self._procs[gone]
        return total

    def _sample(self, now: float) -> None:
        t = psutil.cpu_times()
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        busy = total - t.idle - getattr(t, "iowait", 0.0)
        self._samples.append((now, busy, total, self.tree_cpu_s()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def read(self) -> dict[str, Reading]:
        """The ``load`` reading: other processes' CPU percent over the window (sampled here)."""
        now = self.monotonic()
        if not self._samples or now - self._samples[-1][0] >= self.interval_s:
            self._sample(now)
        if len(self._samples) < 2:
            return _failed(self.label, "cpu load: measuring (needs a second sample)", "load")
        _t0, busy0, total0, own0 = self._samples[0]
        t1, busy1, total1, own1 = self._samples[-1]
        if total1 <= total0:
            return _failed(self.label, "cpu load: measuring (no CPU time elapsed)", "load")
        other = max(0.0, (busy1 - busy0) - max(0.0, own1 - own0))
        percent = min(100.0, 100.0 * other / (total1 - total0))
        return {"load": Reading(self.label, round(percent, 1), max(0.0, now - t1))}


class MemorySource:
    """Available memory in MB, from psutil."""

    signals = ("memory",)
    label = "available memory"

    def read(self) -> dict[str, Reading]:
        """The ``memory`` reading: available MB."""
        try:
            available = psutil.virtual_memory().available / 2**20
        except (OSError, psutil.Error) as exc:
            return _failed(self.label, f"available memory: {exc}", "memory")
        return {"memory": Reading(self.label, round(available, 1), 0.0)}


class DiskSource:
    """Free space in MB on the file system holding ``path``, from psutil."""

    signals = ("disk",)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"free disk at {path}"

    def read(self) -> dict[str, Reading]:
        """The ``disk`` reading: free MB on ``path``'s file system."""
        try:
            free = psutil.disk_usage(str(self.path)).free / 2**20
        except OSError as exc:
            err = f"free disk at {self.path}: {exc.strerror or exc}"
            return _failed(self.label, err, "disk")
        return {"disk": Reading(self.label, round(free, 1), 0.0)}
