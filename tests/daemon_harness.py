"""Helpers for tests that run the real daemon, as a subprocess or in-process.

A robot root in a tmp dir (base policy, manifest, mode file, config with short timings), one
pretrained base per test session (:func:`shared_base`, conftest's ``base_checkpoint``), a
notify socket the test binds (systemd's side of ``Type=notify``), the real service ticked by
the test (:class:`InProcessDaemon`: its job child is still a real subprocess) and small
waiting helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
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


_BASES: dict[str, Path] = {}


def shared_base(factory: pytest.TempPathFactory) -> Path:
    """A base policy pretrained once per test session through the real ``base pretrain`` verb
    (pretraining is the slow part of every end-to-end test); :func:`make_root` copies it."""
    if "base" not in _BASES or not _BASES["base"].is_file():
        work = factory.mktemp("base")
        synth(work, work / "factory", "--episodes", "12", "--steps", "80", "--seed", "1")
        out = work / "base" / "policy.safetensors"
        cli(work, "base", "pretrain", "--episodes", str(work / "factory"), "--steps", "600",
            "--out", str(out))  # fmt: skip
        _BASES["base"] = out
    return _BASES["base"]


def drop_episodes(root: Path, staging: Path, expect_valid: int | None = None) -> None:
    """Rename staged episodes into the watched folder, as producers do; with ``expect_valid``,
    wait until a running daemon's status shows that many valid episodes."""
    for entry in staging.iterdir():
        os.rename(entry, root / "rlds" / "episodes" / entry.name)
    if expect_valid is not None:
        wait_until(
            lambda: (status(root).get("ledger") or {}).get("valid") == expect_valid,
            30,
            f"{expect_valid} valid episodes in the ledger",
            root / "daemon.log",
        )


def decisions(root: Path, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The status file's decisions, newest first, without preemptions and ``exclude``d jobs."""
    return [
        d
        for d in status(root).get("last_decisions", [])
        if d["verdict"] != "preempted" and d["job_id"] not in exclude
    ]


def next_decision(
    root: Path,
    staging: Path,
    expect_valid: int,
    exclude: tuple[str, ...] = (),
    timeout: float = 120,
) -> dict[str, Any]:
    """Drop the staged episodes into a running daemon's folder, open the gate (mode idle) and
    wait for the next decision on a job not in ``exclude``."""
    drop_episodes(root, staging, expect_valid)
    write_mode(root, "idle")
    found = wait_until(lambda: decisions(root, exclude), timeout, "a decision", root / "daemon.log")
    return found[0]


def promote_copy(root: Path, tmp: Path, release_dir: Path, name: str) -> str:
    """Promote a copy of a real release's (or candidate's) adapter as a new release, through
    the store and its lock, as an operator would; returns the new release id."""
    from daemon.store import AdapterStore

    cand = tmp / name
    cand.mkdir(parents=True)
    for f in release_dir.iterdir():
        if f.name != "release.json":
            shutil.copyfile(f, cand / f.name)
    store = AdapterStore(root / "model" / "adapters", root / "model" / "manifest.json")
    return store.promote(cand, {"decision": [f"a copy promoted by the test: {name}"]}).id


def once(
    root: Path, config: Path, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``continuon-trainer once`` against ``root`` (not checked: tests look at the code)."""
    return subprocess.run(
        [*CLI, "--root", str(root), "--config", str(config), "once", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


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


DAEMON_ENV_STRIPPED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
PAUSED_JOB = REPO / "tests" / "paused_job.py"


def paused_child(folder: Path) -> Path:
    """An executable that the supervisor runs as its ``python``: the real job child, which
    pauses in the phase a test names (tests/paused_job.py, :meth:`InProcessDaemon.pause_in`)."""
    wrapper = folder / "paused-python"
    # The supervisor runs `<python> -m trainer_core.job <spec>`: the spec is the third word.
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{PAUSED_JOB}" "$3"\n')
    wrapper.chmod(0o755)
    return wrapper


class InProcessDaemon:
    """The real :class:`daemon.service.Service` in the test's process, ticked by the test (the
    job child is a real subprocess, which :meth:`pause_in` can hold in one phase so the test
    acts there; :meth:`release` lets it go on)."""

    def __init__(self, root: Path, config: Path) -> None:
        from daemon.config import load_config
        from daemon.service import Service
        from daemon.supervisor import JobSupervisor

        self.root = root
        cfg, _ = load_config(config, str(root))
        env = {k: v for k, v in os.environ.items() if k not in DAEMON_ENV_STRIPPED}
        self._pause_file = root / "pause-in"
        env["CONTINUON_TEST_PAUSE_FILE"] = str(self._pause_file)
        self.service = Service(cfg, config, env)
        python = str(paused_child(root))
        self.service.supervisor = JobSupervisor(cfg.state_dir, env, python=python)
        self.service.start()

    def pause_in(self, phase: str) -> None:
        """The next job waits after announcing ``phase`` (load, train, eval)."""
        self._pause_file.write_text(phase)

    def tick_until(self, predicate: Callable[[], Any], what: str, timeout: float = 180) -> Any:
        """Tick the loop until ``predicate()`` is truthy (the timeout only stops a hang)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.service.reason}")
            self.service.tick()

    def decision(self, timeout: float = 180) -> dict[str, Any]:
        """Tick until the next entry of ``last_decisions``; return it."""
        seen = len(self.service.decisions)
        self.tick_until(lambda: len(self.service.decisions) > seen, "a decision", timeout)
        return self.service.decisions[0]

    def idle(self) -> bool:
        """Whether the daemon has scanned everything and has nothing to do (or is blocked on
        something only an operator can fix)."""
        from daemon.service import Phase

        s = self.service
        quiet = not s.rescanning and not s.supervisor.running and s.pending is None
        done = s.phase in (Phase.IDLE, Phase.COOLDOWN) or s.blocked is not None
        return quiet and done and not s.counts.get("settling")

    def next_outcome(self, timeout: float = 180, quiet_ticks: int = 5) -> dict[str, Any] | None:
        """Tick until the next decision (returned) or until the daemon stays :meth:`idle` for
        ``quiet_ticks`` ticks in a row, having decided nothing (None: ``service.reason`` says
        why)."""
        seen, quiet = len(self.service.decisions), 0

        def done() -> bool:
            nonlocal quiet
            quiet = quiet + 1 if self.idle() else 0
            return len(self.service.decisions) > seen or quiet > quiet_ticks

        self.tick_until(done, "a decision or nothing to do", timeout)
        return self.service.decisions[0] if len(self.service.decisions) > seen else None

    def at_phase(self, phase: str, timeout: float = 180) -> None:
        """Tick until the running child reports ``phase`` (where a paused child waits)."""
        sup = self.service.supervisor
        self.tick_until(lambda: sup.running and sup.progress.phase == phase, phase, timeout)

    def release(self) -> None:
        """Let a paused child go on."""
        spec = self.service.supervisor.spec
        assert spec is not None
        (spec.run_dir / "go").write_text("")

    def child_ended(self, timeout: float = 180) -> None:
        """Wait, without ticking (so the service has not seen it yet), for the child's exit."""
        proc = self.service.supervisor._proc
        assert proc is not None
        proc.wait(timeout)

    def stop(self) -> None:
        """Shut the service down as SIGTERM would, and let go of the state folder's instance
        lock as the process's exit would (a restart in the same process takes it again)."""
        self.service.shutdown()
        if self.service._lock_file is not None:
            self.service._lock_file.close()
            self.service._lock_file = None
