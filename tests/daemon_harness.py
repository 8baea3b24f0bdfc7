"""Helpers for tests that run the real daemon as a subprocess.

A robot root in a tmp dir (base policy, manifest, mode file, config with short timings), a
notify socket the test binds (systemd's side of ``Type=notify``), and small waiting helpers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "daemon.cli"]

# Short timings so a whole cycle takes seconds. Signals the test machine cannot control (other
# processes' CPU load, free memory and disk) are switched off: the tests drive mode and battery.
FAST_CONFIG: dict[str, Any] = {
    "ingest": {"settle_s": 0.3},
    "job": {
        "max_steps": 300,
        "min_episodes": 2,
        "eval_fraction": 0.3,
        "max_wall_time_s": 60,
        "grace_s": 3,
        "log_every_steps": 5,
    },
    "service": {
        "min_new_episodes": 2,
        "min_total_episodes": 2,
        "cooldown_s": 0,
        "poll_interval_s": 0.2,
        "rescan_interval_s": 5,
    },
    "gate": {
        "open_after_s": 0.4,
        "min_closed_s": 0.2,
        "load": {"need": "off"},
        "memory": {"need": "off"},
        "disk": {"need": "off"},
    },
    # a dozen episodes hold out two or three: judge on two (the rule's default is three)
    "promotion": {"min_eval_steps": 20, "min_eval_episodes": 2},
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def cli(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a continuon-trainer verb against ``root``; fail loudly."""
    done = subprocess.run(
        [*CLI, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def write_mode(root: Path, mode: str) -> None:
    """Write the continuonos mode file the way the runtime does (not atomically)."""
    now = time.time()
    (root / ".robot_mode").write_text(
        json.dumps({"mode": mode, "timestamp": now, "config": {"mode": mode, "timestamp": now}})
    )


def make_root(
    tmp_path: Path,
    extra: dict[str, Any] | None = None,
    base: Path | None = None,
    mode: str = "manual_control",
) -> tuple[Path, Path]:
    """A robot root with a base policy, a continuonos manifest and a mode file; returns
    (root, config path). ``base``: a ready base checkpoint to copy (saves a pretraining)."""
    root = tmp_path / "robot"
    (root / "rlds" / "episodes").mkdir(parents=True)
    (root / "model").mkdir()
    config = root / "trainer.yaml"
    config.write_text(yaml.safe_dump(deep_merge(FAST_CONFIG, extra or {})))
    if base is not None:
        dest = root / "model" / "base"
        dest.mkdir(parents=True)
        for f in base.parent.iterdir():
            if f.name.startswith(base.stem):
                (dest / f.name.replace(base.stem, "policy")).write_bytes(f.read_bytes())
    from daemon.demo import manifest_template

    (root / "model" / "manifest.json").write_text(json.dumps(manifest_template(root)))
    write_mode(root, mode)
    return root, config


def synth(root: Path, out: Path, *extra: str) -> None:
    cli(root, "synth", "--out", str(out), *extra)


class NotifySocket:
    """systemd's end of the notify protocol: an AF_UNIX datagram socket the test binds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def start_daemon(
    root: Path, config: Path, notify: NotifySocket | None = None, watchdog_usec: int | None = None
) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["CONTINUON_TRAINER_TEST_HOOKS"] = "1"
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log = open(root / "daemon.log", "a")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(
        [*CLI, "--root", str(root), "--config", str(config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        text=True,
    )


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, log: Path | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def status(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts for killpg; look at /proc for live members instead.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop(proc: subprocess.Popen[str], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.terminate()
    return proc.wait(timeout=timeout)
