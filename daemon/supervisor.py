"""Runs one training job at a time as a bounded child process (architecture §6).

The child is a fresh interpreter (``python -m trainer_core.job <run_dir>/spec.json``) in its own
session and process group, at nice 19 with a raised oom_score_adj, without the systemd notify
variables. The parent reads its JSON progress lines, enforces the budgets again from outside, and
stops it on demand: SIGTERM to the group, SIGKILL after ``grace_s``. This module never imports
torch; it only talks to the child through files, signals and its stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError

from trainer_core.fsio import atomic_write_json
from trainer_core.spec import RESULT_FILE, SPEC_FILE, ExitCode, JobResult, JobSpec

CHILD_NICE = 19
CHILD_OOM_SCORE_ADJ = 500  # the kernel's OOM killer picks the job, never the daemon
PIDFILE = "job.pid"  # in the state dir: the running child, for operators and tests
STRIPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
CHILD_MODULE = "trainer_core.job"  # the child's command line: python -m CHILD_MODULE SPEC
STARTUP_ALLOWANCE_S = 30.0  # interpreter + torch import, on top of the wall-time budget


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours minus the systemd notify/watchdog variables."""
    env = {k: v for k, v in environ.items() if k not in STRIPPED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Progress:
    """The latest progress the child reported on stdout."""

    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    phase: str = "starting"


@dataclass
class Outcome:
    """How a job ended, as the daemon sees it."""

    run_dir: Path
    exit_code: int | None
    result: JobResult | None
    reason: str
    killed_by_parent: str | None = None  # "preempted: <why>" | "budget: <why>" | "shutdown"
    elapsed_s: float = 0.0

    @property
    def status(self) -> str:
        """The job's final status, with a budget kill counted as a failure, not a preemption."""
        kind = (self.killed_by_parent or "").split(":", 1)[0]
        # A child stopped for going over its budget reports "preempted" (it only saw SIGTERM):
        # that is no preemption to resume without backoff, it is a failed job.
        if self.result is not None and not (kind == "budget" and self.result.status == "preempted"):
            return self.result.status
        return "preempted" if kind in ("preempted", "shutdown") else "crashed"


def read_result(run_dir: Path) -> tuple[JobResult | None, str]:
    """Parse ``result.json``; a missing or invalid one is reported, never guessed."""
    path = run_dir / RESULT_FILE
    try:
        return JobResult.model_validate_json(path.read_bytes()), ""
    except FileNotFoundError:
        return None, "no result.json"
    except (OSError, ValidationError, ValueError) as exc:
        return None, f"unreadable result.json: {str(exc).splitlines()[0]}"


def describe_exit(code: int | None) -> str:
    """A human reason for a child's exit status."""
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    try:
        return f"exit {code} ({ExitCode(code).name.lower()})"
    except ValueError:
        return f"exit {code}"


def _count(value: object, default: int) -> int:
    """``value`` if it is a non-negative integer, else ``default`` (the child is untrusted)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


class JobSupervisor:
    """Starts, watches and stops the job child. One job at a time."""

    def __init__(
        self,
        state_dir: Path,
        environ: Mapping[str, str],
        python: str = sys.executable,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state_dir = state_dir
        self._environ = environ
        self._python = python
        self._monotonic = monotonic
        self._proc: subprocess.Popen[bytes] | None = None
        self._spec: JobSpec | None = None
        self._started_at = 0.0
        self._stop_sent_at: float | None = None
        self._stop_reason: str | None = None
        self.progress = Progress()
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a child is running (or ended but not yet collected by :meth:`poll`)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        """The running child's pid (also its process group id), or None."""
        return self._proc.pid if self._proc else None

    @property
    def elapsed_s(self) -> float:
        """Seconds since the running child was started; 0 when none runs."""
        return self._monotonic() - self._started_at if self._proc else 0.0

    @property
    def spec(self) -> JobSpec | None:
        """The spec of the job started last."""
        return self._spec

    def start(self, spec: JobSpec) -> None:
        """Write the spec into its run dir and spawn the child."""
        if self._proc is not None:
            raise RuntimeError("a job is already running")
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec.run_dir / SPEC_FILE
        atomic_write_json(spec_path, json.loads(spec.model_dump_json()))
        stderr = open(spec.run_dir / "child.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [self._python, "-m", CHILD_MODULE, str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=child_environment(self._environ),
                start_new_session=True,  # own session and process group: killpg reaches all
                close_fds=True,
            )
        finally:
            stderr.close()
        self._spec = spec
        self._started_at = self._monotonic()
        self._stop_sent_at = None
        self._stop_reason = None
        self.progress = Progress()
        self._deprioritise(self._proc.pid)
        try:
            atomic_write_json(
                self._state_dir / PIDFILE, {"pid": self._proc.pid, "run_dir": str(spec.run_dir)}
            )
        except OSError:
            # Without the pid file a daemon crash would strand the child: do not run it.
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
            raise
        self._reader = threading.Thread(
            target=self._read_progress, args=(self._proc,), name="job-progress", daemon=True
        )
        self._reader.start()

    @staticmethod
    def _deprioritise(pid: int) -> None:
        # Best effort from outside, so the child needs no cooperation: it may already be gone.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, CHILD_NICE)
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(CHILD_OOM_SCORE_ADJ))

    def _read_progress(self, proc: subprocess.Popen[bytes]) -> None:
        # This thread must drain stdout until EOF whatever the child prints: if it died, a child
        # writing progress would block on a full pipe and stall past every budget.
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
                if isinstance(event, dict):
                    self._apply(event)
            except (TypeError, ValueError):  # a malformed event: skip it, keep draining
                continue

    def _apply(self, event: dict[str, Any]) -> None:
        """Fold one progress event into :attr:`progress`; malformed fields are ignored."""
        p = self.progress
        kind = event.get("event")
        if kind == "started":
            p.step = _count(event.get("step"), 0)
            p.max_steps = _count(event.get("max_steps"), 0)
            p.phase = "training"
        elif kind == "progress":
            p.step = _count(event.get("step"), p.step)
            p.max_steps = _count(event.get("max_steps"), p.max_steps)
            p.phase = "training"
            loss = event.get("loss")
            if isinstance(loss, int | float) and not isinstance(loss, bool):
                p.loss = float(loss)
        elif kind == "phase" and isinstance(event.get("phase"), str):
            p.phase = event["phase"]

    # -- stopping -------------------------------------------------------------------------

    def stop(self, reason: str, grace_s: float) -> None:
        """Ask the child's group to stop (SIGTERM); :meth:`poll` escalates to SIGKILL."""
        if self._proc is None or self._stop_sent_at is not None:
            return
        self._stop_reason = reason
        self._stop_sent_at = self._monotonic()
        self._grace_s = grace_s
        self._signal_group(signal.SIGTERM)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _over_budget(self) -> str | None:
        """The parent's own check of the budgets, as a backstop for a child that ignores them."""
        assert self._spec is not None and self._proc is not None
        job = self._spec.job
        limit = job.max_wall_time_s + job.grace_s + STARTUP_ALLOWANCE_S
        if self.elapsed_s > limit:
            return f"wall time {self.elapsed_s:.0f} s over the budget ({limit:.0f} s with slack)"
        try:
            rss = psutil.Process(self._proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return None
        if rss > job.max_rss_mb * 1.5:
            return f"RSS {rss:.0f} MB over the budget ({job.max_rss_mb:.0f} MB x 1.5)"
        return None

    def poll(self) -> Outcome | None:
        """Check the child: enforce budgets and grace; return its :class:`Outcome` once it ended."""
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is None:
            now = self._monotonic()
            if self._stop_sent_at is None:
                why = self._over_budget()
                if why:
                    self.stop(f"budget: {why}", self._spec.job.grace_s if self._spec else 5.0)
            elif now - self._stop_sent_at > self._grace_s:
                self._signal_group(signal.SIGKILL)
            return None
        return self._finish(code)

    def wait(self, timeout_s: float) -> Outcome | None:
        """Block up to ``timeout_s`` for the child to end (used at shutdown)."""
        deadline = self._monotonic() + timeout_s
        while self._proc is not None and self._monotonic() < deadline:
            outcome = self.poll()
            if outcome is not None:
                return outcome
            time.sleep(0.02)
        return None

    def _finish(self, code: int) -> Outcome:
        assert self._proc is not None and self._spec is not None
        # The child's group may hold stragglers (a worker it forked): none may outlive the job.
        self._signal_group(signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        result, problem = read_result(self._spec.run_dir)
        reason = result.reason if result and result.reason else problem or describe_exit(code)
        if result is None:
            reason = f"{describe_exit(code)}; {problem}"
        if self._stop_reason and self._stop_reason.startswith("budget"):
            reason = f"{self._stop_reason}; {reason}"
        outcome = Outcome(
            run_dir=self._spec.run_dir,
            exit_code=code,
            result=result,
            reason=reason,
            killed_by_parent=self._stop_reason,
            elapsed_s=self.elapsed_s,
        )
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            (self._state_dir / PIDFILE).unlink()
        return outcome


def reap_orphan(state_dir: Path, runs_dir: Path) -> str | None:
    """Kill the process group of every job child a daemon that died left behind; say what.

    At start-up no job of this state dir may be running (the instance lock is held), so any live
    ``trainer_core.job`` whose spec lies under ``runs_dir`` is an orphan. They are found by their
    command line, not by ``job.pid``: a daemon killed between spawning the child and writing the
    pid file leaves no file, and its child would train beside the next one."""
    notes = []
    for pid, spec in _job_children(runs_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # its own group (start_new_session): threads, workers
            notes.append(f"killed orphaned job process group {pid} ({Path(spec).parent})")
    (state_dir / PIDFILE).unlink(missing_ok=True)
    return "; ".join(notes) or None


def _job_children(runs_dir: Path) -> list[tuple[int, str]]:
    """(pid, spec path) of every live job child whose spec lies under ``runs_dir``."""
    prefixes = {str(runs_dir) + os.sep, str(runs_dir.resolve()) + os.sep}
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []  # None for a zombie or a process we may not read
        if CHILD_MODULE not in cmd[:4]:
            continue
        spec = cmd[-1]
        if spec.endswith(SPEC_FILE) and any(spec.startswith(p) for p in prefixes):
            found.append((proc.pid, spec))
    return found
