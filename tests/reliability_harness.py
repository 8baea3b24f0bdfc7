"""The reliability harness: a synthetic robot around the real daemon, kills and invariants.

Shared by tests/test_reliability_*.py (reduced sizes, in ``make test``) and
bench/bench_reliability.py / bench/bench_soak.py (full sizes). Everything is real: the daemon
is ``python -m daemon.cli run`` in a subprocess, its job child a real torch process, episodes
are synthetic RLDS files renamed into the watched folder, the gate is driven by the continuonos
mode file, and faults are injected at the OS boundary (signals, a full tmpfs), never by
patching our own functions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from daemon.store import AdapterStore
from tests.daemon_harness import (
    NotifySocket,
    cli,
    group_alive,
    make_root,
    start_daemon,
    status,
    synth,
    wait_until,
    write_mode,
)

# Tiny jobs, quick retries: a whole cycle is a few seconds, dominated by the child's torch import.
RELIABILITY_CONFIG: dict[str, Any] = {
    "job": {
        "max_steps": 40,
        "max_episodes": 24,
        "grace_s": 2,
        "log_every_steps": 5,
        # Half held out: a batch of 8 still leaves the rule enough held-out episodes to judge.
        "eval_fraction": 0.5,
    },
    "service": {"backoff_initial_s": 0.5, "backoff_max_s": 2, "keep_runs": 5},
    # These suites test recovery from kills and faults, not the rule (tests/test_promotion_*
    # do): a 40-step candidate overshoots the ±1 bound on a few steps, which the default
    # clamp margin (2 pts at 95 %) refuses on 3-4 held-out episodes, and a job cut short by
    # kills may leave the untouched throttle channel noisy relative to its tiny base error.
    "promotion": {
        "min_eval_steps": 10,
        "max_name_regression": 5.0,
        "clamp_rate_margin": 0.1,
        "max_clamp_rate": 0.15,
        "warn_rate_margin": 0.15,
        "max_warn_rate": 0.2,
        "mean_risk_margin": 0.1,
    },
}

EPISODE_STEPS = "40"


def make_base(work: Path) -> Path:
    """A freshly initialised (untrained) base policy: LoRA on it improves fast, so it promotes."""
    out = work / "base" / "policy.safetensors"
    if not out.is_file():
        cli(work, "base", "init", "--out", str(out))
    return out


def episode_entries(root: Path) -> list[Path]:
    """Top-level, non-hidden entries of the watched folder (what the ledger should know)."""
    folder = root / "rlds" / "episodes"
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def ledger_rows(root: Path) -> list[tuple[str, str, str | None, str | None]]:
    """``(path, status, content_hash, reason)`` of every ledger row, read-only (daemon may run)."""
    db = root / "state" / "ledger.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute("SELECT path, status, content_hash, reason FROM episodes"))
    finally:
        conn.close()


def job_processes(root: Path) -> list[int]:
    """Pids of live job children working under ``root`` (their spec path is under it)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if "trainer_core.job" in cmd and any(str(root) in part for part in cmd):
            pids.append(proc.info["pid"])
    return pids


def job_pid(root: Path) -> int | None:
    """The running child's pid from the daemon's pid file (``state/job.pid``)."""
    try:
        return int(json.loads((root / "state" / "job.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@dataclass
class Robot:
    """A robot root, its episode supply and the daemon subprocess."""

    root: Path
    config: Path
    staging: Path
    proc: subprocess.Popen[str] | None = None
    dropped: int = 0
    spawned: int = 0

    @classmethod
    def create(
        cls,
        work: Path,
        base: Path,
        episodes: int,
        extra: dict[str, Any] | None = None,
        seed: int = 5,
    ) -> Robot:
        """A root with ``episodes`` synthetic episodes staged (not yet in the watched folder)."""
        from daemon.demo import manifest_template
        from tests.daemon_harness import deep_merge

        # Promotion refuses a manifest naming another model: serve the one make_root writes.
        served = {"policy": {"model_name": manifest_template(work)["model_name"]}}
        merged = deep_merge(deep_merge(RELIABILITY_CONFIG, served), extra or {})
        root, config = make_root(work, extra=merged, base=base, mode="idle")
        staging = work / "staging"
        synth(
            root,
            staging,
            "--episodes",
            str(episodes),
            "--steps",
            EPISODE_STEPS,
            "--seed",
            str(seed),
            "--steering-bias",
            "0.3",
        )
        return cls(root, config, staging)

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def episodes(self) -> Path:
        return self.root / "rlds" / "episodes"

    def drop(self, n: int) -> int:
        """Rename up to ``n`` staged episodes into the watched folder, as producers do."""
        moved = 0
        for entry in sorted(self.staging.iterdir())[:n]:
            os.rename(entry, self.episodes / entry.name)
            moved += 1
        self.dropped += moved
        return moved

    def mode(self, mode: str) -> None:
        write_mode(self.root, mode)

    def start(self, **kwargs: Any) -> subprocess.Popen[str]:
        self.proc = start_daemon(self.root, self.config, **kwargs)
        self.spawned += 1
        return self.proc

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        """Until the running daemon wrote its own status file (start-up, reap, clean done)."""
        assert self.proc is not None
        pid = self.proc.pid

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.tail()}")
            snap = status(self.root)
            return snap if snap.get("pid") == pid else None

        return wait_until(ready, timeout, "the daemon's status", self.log)

    def wait_job(self, timeout: float = 60) -> int:
        """Until a job child runs; its pid."""
        return wait_until(lambda: job_pid(self.root), timeout, "a job child", self.log)

    def ensure_job(self, rounds: int = 6) -> int:
        """Until a job child runs, dropping two more episodes whenever none starts for a while
        (a promotion used up the new ones, or the held-out split took the last drop)."""
        for _ in range(rounds):
            try:
                return wait_until(lambda: job_pid(self.root), 12, "a job child", self.log)
            except AssertionError:
                self.drop(2)
        return self.wait_job()

    def kill_daemon(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""

    def decisions(self) -> list[dict[str, Any]]:
        return list(status(self.root).get("last_decisions", []))


# ---------------------------------------------------------------------------------------------
# Invariants


STRANDED_S = 120.0  # a loaded machine: torch import, then the first progress line


@dataclass
class Invariants:
    """What must hold after every crash and restart; counts what was checked."""

    generation: int = 0
    checks: Counter[str] = field(default_factory=Counter)

    def manifest(self, root: Path) -> str | None:
        """The manifest parses, names a complete hash-verified release, generation never fell.
        Returns the current release id."""
        store = AdapterStore(root / "model" / "adapters", root / "model" / "manifest.json")
        manifest = store.read_manifest()  # StoreError when it does not parse or validate
        assert manifest is not None, "manifest vanished"
        current = store.current()
        generation = int(manifest.get("generation", 0))
        assert generation >= self.generation, (
            f"generation went down {self.generation} -> {generation}"
        )
        self.generation = generation
        self.checks["manifest_parses"] += 1
        self.checks["generation_monotonic"] += 1
        if current is None:
            return None
        store.verify(current)
        assert (current.path / "release.json").is_file()
        self.checks["release_verified"] += 1
        return current.id

    def current_link(self, root: Path, release_id: str | None) -> None:
        """After start-up recovery ``current`` points where the manifest says."""
        if release_id is None:
            return
        link = root / "model" / "adapters" / "current"
        assert link.is_symlink() and os.readlink(link).endswith(release_id), os.readlink(link)
        self.checks["current_link"] += 1

    def ledger(self, root: Path, expect_rejected: set[str], timeout: float = 60) -> None:
        """Every episode present has exactly one row, valid (or rejected when expected), no
        content counted twice, no row for a missing file left non-gone."""

        def settled() -> list[tuple[str, str, str | None, str | None]] | None:
            on_disk = {str(p) for p in episode_entries(root)}
            try:
                rows = ledger_rows(root)
            except sqlite3.Error:
                return None
            live = {r[0] for r in rows if r[1] != "gone"}
            return rows if live == on_disk else None

        rows = wait_until(settled, timeout, "the ledger to match the folder", root / "daemon.log")
        paths = [r[0] for r in rows]
        assert len(paths) == len(set(paths)), "a path has two rows"
        hashes = Counter(r[2] for r in rows if r[1] == "valid")
        assert all(n == 1 for n in hashes.values()), f"duplicated content: {hashes.most_common(2)}"
        on_disk = {str(p) for p in episode_entries(root)}
        for path, state, _, reason in rows:
            if state == "gone":  # archived by the test: the row stays, never re-counted
                assert path not in on_disk, path
                continue
            want = "rejected" if Path(path).name in expect_rejected else "valid"
            assert state == want, f"{path}: {state} ({reason}), expected {want}"
            if state == "rejected":
                assert reason, f"{path}: rejected without a reason"
        self.checks["ledger_matches_folder"] += 1

    def no_stale_child(
        self, root: Path, old_pgids: list[int], timeout: float = 10, daemon: int | None = None
    ) -> None:
        """No process group of an earlier job survives; no job process runs that the live
        daemon (``daemon``, its pid) does not supervise. A child the daemon has just started
        is its own even before its pid file is written (an fsync away on a loaded machine)."""
        for pgid in old_pgids:
            wait_until(lambda p=pgid: not group_alive(p), timeout, f"old job group {pgid} gone")
            self.checks["old_group_gone"] += 1

        def stale() -> list[int]:
            out = []
            for pid in job_processes(root):
                if pid == job_pid(root):
                    continue
                with contextlib.suppress(psutil.Error):
                    if daemon is not None and psutil.Process(pid).ppid() == daemon:
                        continue
                out.append(pid)
            return out

        # A child the daemon is reaping right now is gone a moment later. One started by a
        # daemon killed between spawning it and writing its pid file has no pid file for the
        # next start to find: it dies at its first progress line (EPIPE: its reader is gone),
        # after its torch import. Counted, and it must go within STRANDED_S.
        started = time.monotonic()
        while (live := stale()) and time.monotonic() - started < STRANDED_S:
            time.sleep(0.2)
        assert not live, f"stale job processes {live} after {STRANDED_S:.0f} s"
        if time.monotonic() - started > timeout:
            self.checks["stranded_child_exited_by_itself"] += 1
        self.checks["no_stale_process"] += 1

    def runs_cleaned(self, root: Path, abandoned: set[str]) -> None:
        """Run dirs a crash left without a result are gone after start-up (or got a result)."""
        runs = root / "state" / "runs"
        for name in abandoned:
            run = runs / name
            assert not run.exists() or (run / "result.json").exists(), f"leftover run dir {name}"
        self.checks["runs_cleaned"] += 1


def abandoned_runs(root: Path) -> set[str]:
    runs = root / "state" / "runs"
    if not runs.is_dir():
        return set()
    return {p.name for p in runs.iterdir() if p.is_dir() and not (p / "result.json").exists()}


# ---------------------------------------------------------------------------------------------
# The crash campaign


@dataclass
class CrashReport:
    kills: Counter[str] = field(default_factory=Counter)
    moments: Counter[str] = field(default_factory=Counter)  # the phase aimed at
    phases: Counter[str] = field(default_factory=Counter)  # "<who>@<moment>"
    observed: Counter[str] = field(default_factory=Counter)  # "<moment>/<daemon's status phase>"
    orphans_reaped: int = 0
    reaped_in_log: int = 0
    promotions_during: int = 0
    promotions_interrupted: int = 0  # promotion kills that left the generation unchanged
    rollbacks_completed: int = 0  # automatic rollbacks finished (at once or by recovery)
    retries_seen: int = 0  # a killed job followed by a new job of the restarted daemon
    daemon_starts: int = 0
    robots: int = 0
    final_promoted: bool = False
    episodes_dropped: int = 0
    episodes_lost: int = 0
    invariants: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    stopped_early: str = ""

    def merge(self, other: CrashReport) -> None:
        """Add another robot's figures (campaigns of several robots at once)."""
        for name in ("kills", "moments", "phases", "observed", "invariants"):
            getattr(self, name).update(getattr(other, name))
        for name in (
            "orphans_reaped",
            "reaped_in_log",
            "promotions_during",
            "promotions_interrupted",
            "rollbacks_completed",
            "retries_seen",
            "daemon_starts",
            "robots",
            "episodes_dropped",
            "episodes_lost",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.final_promoted = other.final_promoted and (self.final_promoted or self.robots == 1)
        self.stopped_early = self.stopped_early or other.stopped_early

    def as_dict(self) -> dict[str, Any]:
        return {
            "kills": dict(self.kills),
            "kills_total": sum(self.kills.values()),
            "moments": dict(self.moments),
            "phases": dict(self.phases),
            "observed_daemon_phase": dict(self.observed),
            "orphans_reaped": self.orphans_reaped,
            "reaped_in_log": self.reaped_in_log,
            "promotions_total": self.promotions_during,
            "promotions_interrupted": self.promotions_interrupted,
            "rollbacks_completed": self.rollbacks_completed,
            "retries_seen": self.retries_seen,
            "daemon_starts": self.daemon_starts,
            "robots": self.robots,
            "final_promoted": self.final_promoted,
            "episodes_dropped": self.episodes_dropped,
            "episodes_lost": self.episodes_lost,
            "invariants_checked": sum(self.invariants.values()),
            "invariants": dict(self.invariants),
            "elapsed_s": round(self.elapsed_s, 1),
            "stopped_early": self.stopped_early,
        }


BAD_EPISODE = "zz-garbage.json"

# The phases a kill aims at, with weights. Kills of the daemon outside a job are cheap (a
# restart, no torch import), kills in a job cost a new child, kills at promotion and at an
# automatic rollback cost a whole cycle: the weights keep every phase well represented while
# most kills stay cheap. "rollback" needs a release on probation; without one, cycles first
# run undisturbed until one is (a kill at "promotion" when that takes too long).
KILL_PLAN: tuple[tuple[str, int], ...] = (
    ("startup", 25),
    ("scan", 24),
    ("idle", 18),
    ("train", 11),
    ("eval", 8),
    ("promotion", 7),
    ("rollback", 5),
)


def _health(root: Path) -> dict[str, Any]:
    return dict(status(root).get("health") or {})


def _on_probation(root: Path) -> str | None:
    """The current release when it is on probation (an automatic rollback can happen)."""
    h = _health(root)
    return h.get("release") if h.get("state") == "probation" else None


def _rolled_back(root: Path, rid: str) -> bool:
    """``rid`` is no longer current and is marked bad (an automatic rollback finished)."""
    store = AdapterStore(root / "model" / "adapters", root / "model" / "manifest.json")
    current = store.current()
    return (current is None or current.id != rid) and rid in store.marks()["bad"]


def _promote_undisturbed(robot: Robot, timeout: float = 300) -> str | None:
    """Let cycles run without kills until a release is on probation (the first release only
    observes: it has no predecessor); that release, or None after ``timeout``."""
    robot.mode("idle")
    deadline = time.monotonic() + timeout
    last_drop = float("-inf")
    while time.monotonic() < deadline:
        on = _on_probation(robot.root)
        if on is not None:
            return on
        if job_pid(robot.root) is None and time.monotonic() - last_drop > 15:
            robot.drop(3)  # new episodes start the next job
            last_drop = time.monotonic()
        time.sleep(0.2)
    return None


def _run_dir(root: Path) -> str | None:
    try:
        return str(json.loads((root / "state" / "job.pid").read_text())["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _wait_child_phase(robot: Robot, want: str, timeout: float = 90) -> bool:
    """Until the running child reports phase ``want`` (True) or no child runs (False)."""

    def seen() -> str | None:
        if job_pid(robot.root) is None:
            return "gone"
        job = status(robot.root).get("job") or {}
        return "yes" if job.get("phase") == want else None

    return wait_until(seen, timeout, f"the child in phase {want}", robot.log) == "yes"


def kill_campaign(
    work: Path,
    base: Path,
    kills: int,
    seed: int = 0,
    say: Callable[[str], None] = lambda _: None,
    deadline: float | None = None,
    plan: tuple[str, ...] | None = None,
    abort: threading.Event | None = None,
) -> CrashReport:
    """One robot: SIGKILL its daemon, child or both ``kills`` times at random points of every
    phase (start-up, scan, idle, training, evaluation, promotion, automatic rollback), checking
    every invariant after each kill; then one more cycle must promote. Several kills share a
    daemon's lifetime (child kills, start-up kills chained to the restart), the base is built
    once and shared, jobs are 40 steps. ``deadline`` (monotonic): stop killing then (the figures
    say so) and still run the final checks. ``plan``: the moments in this order (cycled)
    instead of drawn from KILL_PLAN. Raises AssertionError on the first violation."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    robot = Robot.create(work, base, episodes=3 * kills + 40, seed=seed + 5)
    report = CrashReport(robots=1)
    inv = Invariants()
    robot.drop(6)
    (robot.episodes / BAD_EPISODE).write_text("{not json")
    robot.start()
    report.daemon_starts += 1
    robot.wait_ready()
    last_run: str | None = None
    awaiting_retry = False
    names, weights = zip(*KILL_PLAN, strict=True)

    def restart(after: list[int]) -> None:
        """Restart after a daemon kill; recovery invariants."""
        stranded = [p for p in after if group_alive(p)]
        before = abandoned_runs(robot.root)
        inv.manifest(robot.root)  # right after the crash, before any recovery
        robot.start()
        report.daemon_starts += 1
        robot.wait_ready()
        if stranded:
            report.orphans_reaped += 1
        inv.runs_cleaned(robot.root, before)
        inv.no_stale_child(robot.root, after, daemon=robot.proc.pid)
        inv.current_link(robot.root, inv.manifest(robot.root))

    try:
        for i in range(kills):
            if deadline is not None and time.monotonic() > deadline:
                report.stopped_early = f"deadline reached after {i} kills of {kills}"
                break
            if abort is not None and abort.is_set():
                raise AssertionError("stopped: another robot's campaign failed")
            # The first kill is the daemon's during a job: its child must be reaped.
            if plan:
                moment = plan[i % len(plan)]
            else:
                moment = "train" if i == 0 else rng.choices(names, weights)[0]
            probation = _on_probation(robot.root)
            if moment == "rollback" and probation is None:
                # kills at every other moment rarely let a cycle finish: let one promote
                # undisturbed so that a release is on probation
                probation = _promote_undisturbed(robot)
                if probation is None:
                    moment = "promotion"
            in_job = moment in ("train", "eval")
            kind = (
                ("daemon" if i == 0 else rng.choice(("daemon", "child", "both")))
                if in_job
                else "daemon"
            )
            # Outside a job the gate is mostly closed (teleop): the daemon scans and idles, no
            # child is started, so such kills cost only a restart.
            robot.mode(
                "idle"
                if in_job or moment == "promotion" or rng.random() < 0.3
                else "manual_control"
            )
            if moment not in ("startup", "rollback"):
                robot.drop(2)
            if moment == "startup":
                # a clean restart, then a kill while the new daemon recovers, reaps and ingests
                assert robot.stop() == 0, robot.tail()
                robot.start()
                report.daemon_starts += 1
                time.sleep(rng.uniform(0.0, 2.5))
            elif moment == "scan":
                # episodes just arrived: the daemon is reading and recording them
                robot.drop(rng.randint(1, 4))
                time.sleep(rng.uniform(0.0, 0.5))
            elif moment == "idle":
                time.sleep(rng.uniform(0.2, 1.5))
            elif moment == "train":
                # a random point of the child's life before evaluation (torch import, data
                # loading, the 40 steps): the status file shows the child's "load" -> "train"
                # step only now and then, so the kill does not wait for it
                robot.ensure_job()
                # the first kill must find the child alive (its orphan is reaped): early
                time.sleep(rng.uniform(0.0, 2.5 if i else 0.3))
            elif moment == "eval":
                robot.ensure_job()
                _wait_child_phase(robot, "eval")
                time.sleep(rng.uniform(0.0, 0.15))  # evaluation is short on tiny jobs
            elif moment == "promotion":
                # the child has written its result and exited: the daemon judges and promotes
                robot.ensure_job()
                _wait_child_phase(robot, "eval")
                wait_until(lambda: job_pid(robot.root) is None, 120, "the child's end", robot.log)
                time.sleep(rng.uniform(0.0, 0.15))
            else:  # rollback: an e-stop during probation rolls the release back at once
                robot.mode("emergency_stop")
                time.sleep(rng.uniform(0.0, 0.8))
            snap = status(robot.root)
            observed = (
                str(snap.get("phase", "?")) if snap.get("pid") == robot.proc.pid else "starting"
            )
            run = _run_dir(robot.root)
            if run is not None and run != last_run:
                if awaiting_retry:
                    report.retries_seen += 1
                    awaiting_retry = False
                last_run = run
            gen_before = inv.generation
            child = job_pid(robot.root)
            old_groups = [child] if child else []
            if kind in ("child", "both") and child is None:
                kind = "daemon"  # nothing to kill in the child: the job ended first
            if kind in ("child", "both"):
                os.kill(child, signal.SIGKILL)
            if kind in ("daemon", "both"):
                robot.kill_daemon()
                restart(old_groups)
            else:
                inv.no_stale_child(robot.root, old_groups, daemon=robot.proc.pid)
            if child is not None or moment == "promotion":
                awaiting_retry = True
            report.kills[kind] += 1
            report.moments[moment] += 1
            report.phases[f"{kind}@{moment}"] += 1
            # what the daemon's own status said at the kill (a job can end first)
            report.observed[f"{moment}/{observed}"] += 1
            rid = inv.manifest(robot.root)
            if moment == "promotion" and inv.generation == gen_before:
                report.promotions_interrupted += 1
            if moment == "rollback":
                # after recovery the release on probation is no longer current, and marked bad
                assert probation is not None

                wait_until(
                    lambda rid=probation: _rolled_back(robot.root, rid),
                    90,
                    f"the rollback of {probation}",
                    robot.log,
                )
                report.rollbacks_completed += 1
                inv.checks["rollback_completed"] += 1
                rid = inv.manifest(robot.root)
                robot.mode("manual_control")
            inv.ledger(robot.root, {BAD_EPISODE})
            say(
                f"kill {i + 1}/{kills}: {kind} at {moment} (daemon {observed}); "
                f"generation {inv.generation}"
            )
        # Nothing lost after all the kills: every dropped episode is in the ledger, valid.
        robot.mode("manual_control")
        inv.ledger(robot.root, {BAD_EPISODE})
        valid = {Path(r[0]).name for r in ledger_rows(robot.root) if r[1] == "valid"}
        on_disk = {p.name for p in episode_entries(robot.root)} - {BAD_EPISODE}
        report.episodes_dropped = robot.dropped
        report.episodes_lost = len(on_disk - valid) + (robot.dropped - len(on_disk))
        inv.checks["no_episode_lost"] += 1
        # Let one cycle finish after all the kills: it must promote. The robot's task changes
        # (another steering bias) and the old episodes are archived, so a candidate trained on
        # the new data clearly beats the current release: this measures the pipeline, not the
        # luck of a same-data candidate against the rule's margin.
        gen_before = inv.generation
        # After automatic rollbacks the release current now is an older one, against which a
        # 40-step candidate on the changed task clamps a few % more: the final cycle checks
        # that the pipeline still promotes, so the clamp margins are widened for it.
        assert robot.stop() == 0, robot.tail()
        config = yaml.safe_load(robot.config.read_text())
        config["promotion"].update(clamp_rate_margin=0.3, max_clamp_rate=0.4)
        robot.config.write_text(yaml.safe_dump(config))
        robot.start()
        report.daemon_starts += 1
        robot.wait_ready()
        archive = work / "archived"
        archive.mkdir()
        for entry in episode_entries(robot.root):
            if entry.name != BAD_EPISODE:
                os.rename(entry, archive / entry.name)
        fresh = work / "fresh"
        synth(
            robot.root,
            fresh,
            "--episodes",
            "16",
            "--steps",
            EPISODE_STEPS,
            "--seed",
            str(seed + 1000),
            "--steering-bias",
            "-0.2",
        )
        for entry in sorted(fresh.iterdir()):
            os.rename(entry, robot.episodes / entry.name)
        robot.mode("idle")
        manifest = robot.root / "model" / "manifest.json"
        wait_until(
            lambda: json.loads(manifest.read_text()).get("generation", 0) > gen_before,
            400,
            "a promotion after the kills",
            robot.log,
        )
        report.final_promoted = True
        if awaiting_retry:
            report.retries_seen += 1
        rid = inv.manifest(robot.root)
        assert inv.generation > gen_before and rid is not None
        inv.ledger(robot.root, {BAD_EPISODE})
        assert robot.stop() == 0, robot.tail()
        inv.no_stale_child(robot.root, [])
        # A child killed under a live daemon leaves its run dir (child.log) until the next start.
        before = abandoned_runs(robot.root)
        robot.start()
        report.daemon_starts += 1
        robot.wait_ready()
        inv.runs_cleaned(robot.root, before)
        inv.current_link(robot.root, inv.manifest(robot.root))
        assert robot.stop() == 0, robot.tail()
        assert not abandoned_runs(robot.root), abandoned_runs(robot.root)
        inv.checks["all_runs_have_results"] += 1
        report.promotions_during = inv.generation
    finally:
        if robot.proc is not None and robot.proc.poll() is None:
            robot.proc.kill()
            robot.proc.wait(timeout=10)
        for pid in job_processes(robot.root):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    log = robot.log.read_text() if robot.log.exists() else ""
    report.reaped_in_log = log.count('"orphan_job_reaped"')
    report.invariants = inv.checks
    report.elapsed_s = time.monotonic() - t0
    return report


def crash_campaign(
    work: Path,
    base: Path,
    kills: int,
    seed: int = 0,
    say: Callable[[str], None] = lambda _: None,
    robots: int = 1,
    deadline: float | None = None,
    plan: tuple[str, ...] | None = None,
) -> CrashReport:
    """``kills`` kills shared among ``robots`` robots run at once (each its own root, daemon and
    children; one shared base), figures merged. More robots use a loaded machine's idle time
    (each mostly waits for its daemon); the first violation anywhere raises AssertionError."""
    if robots <= 1:
        return kill_campaign(work, base, kills, seed, say, deadline, plan)
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    shares = [kills // robots + (1 if r < kills % robots else 0) for r in range(robots)]
    abort = threading.Event()

    def one(*args: Any) -> CrashReport:
        try:
            return kill_campaign(*args, abort=abort)
        except BaseException:
            abort.set()  # the first violation stops every robot
            raise

    with ThreadPoolExecutor(robots) as pool:
        futures = []
        for r, n in enumerate(shares):
            (work / f"robot{r}").mkdir()
            futures.append(
                pool.submit(
                    one,
                    work / f"robot{r}",
                    base,
                    n,
                    seed + 97 * r,
                    lambda line, r=r: say(f"[robot {r}] {line}"),
                    deadline,
                    plan,
                )
            )
        report = CrashReport()
        errors: list[AssertionError] = []
        for future in futures:
            try:
                report.merge(future.result())
            except AssertionError as exc:
                errors.append(exc)
    first = [e for e in errors if not str(e).startswith("stopped: ")] or errors
    if first:
        raise first[0]
    report.elapsed_s = time.monotonic() - t0
    return report


# ---------------------------------------------------------------------------------------------
# Faults at the OS boundary


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``path`` (created); the reason when that is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip()})"
    return None


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(folder: Path, name: str = ".filler") -> int:
    """Write zeros into ``folder`` until the file system is full (ENOSPC); bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(folder / name, "ab", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError:
            pass
        while True:  # the last partial block
            try:
                written += f.write(b"\0" * 512)
            except OSError:
                break
    return written


# ---------------------------------------------------------------------------------------------
# Hostile input

# The systemd unit says WatchdogSec=60s; a 10 s watchdog here still catches a loop that a flood
# of episodes blocks for long, without failing on a busy test machine's scheduling hiccups.
HOSTILE_WATCHDOG_USEC = 10_000_000


@dataclass
class HostileReport:
    cases: Counter[str] = field(default_factory=Counter)
    flood: int = 0
    flood_ingest_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    rejected_with_reason: int = 0
    watchdog_pings: int = 0
    watchdog_max_gap_s: float = 0.0
    watchdog_misses: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": dict(self.cases),
            "flood": self.flood,
            "flood_ingest_s": round(self.flood_ingest_s, 1),
            "rss_before_mb": round(self.rss_before_mb, 1),
            "rss_after_mb": round(self.rss_after_mb, 1),
            "rejected_with_reason": self.rejected_with_reason,
            "watchdog_pings": self.watchdog_pings,
            "watchdog_max_gap_s": round(self.watchdog_max_gap_s, 2),
            "watchdog_misses": self.watchdog_misses,
            "elapsed_s": round(self.elapsed_s, 1),
        }


def ledger_row(root: Path, name: str) -> tuple[str, str | None, int | None, str | None] | None:
    """``(status, content_hash, n_steps, reason)`` of the episode ``name``, or None."""
    db = root / "state" / "ledger.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "SELECT status, content_hash, n_steps, reason FROM episodes WHERE path = ?",
            (str(root / "rlds" / "episodes" / name),),
        ).fetchone()
    finally:
        conn.close()


def wait_row(
    robot: Robot, name: str, predicate: Callable[[tuple[Any, ...]], bool], what: str
) -> tuple[Any, ...]:
    def ok() -> tuple[Any, ...] | None:
        try:
            row = ledger_row(robot.root, name)
        except sqlite3.Error:
            return None
        return row if row is not None and predicate(row) else None

    return wait_until(ok, 60, f"{name}: {what}", robot.log)


def hostile_campaign(
    work: Path, base: Path, flood: int, say: Callable[[str], None] = lambda _: None
) -> HostileReport:
    """Hostile input against a running daemon (gate closed by teleop, so only ingest works):
    a slow writer, a truncated episode, an episode replaced while it is read, a symlink swap,
    ``flood`` episodes at once, a garbage and a vanished mode file. Raises AssertionError when
    the daemon dies, the ledger is wrong, or a bad episode has no reason."""
    from trainer_core.rlds.hashing import content_hash

    t0 = time.monotonic()
    report = HostileReport()
    robot = Robot.create(work, base, episodes=9, seed=21)
    robot.mode("manual_control")
    robot.drop(4)
    spare = sorted(robot.staging.iterdir())  # 5 left: material for the cases below
    notify = NotifySocket(work / "notify.sock")
    robot.start(notify=notify, watchdog_usec=HOSTILE_WATCHDOG_USEC)
    try:
        robot.wait_ready()
        wait_until(lambda: (status(robot.root).get("ledger") or {}).get("valid") == 4, 60, "4")
        assert robot.proc is not None
        report.rss_before_mb = rss_mb(robot.proc.pid)
        folder = robot.episodes

        # 1. A slow writer straight into the folder: steps appended line by line for ~2 s.
        source = spare[0]
        lines = (source / "steps" / "000000.jsonl").read_text().splitlines(keepends=True)
        slow = folder / "slow-writer"
        (slow / "steps").mkdir(parents=True)
        (slow / "metadata.json").write_bytes((source / "metadata.json").read_bytes())
        with open(slow / "steps" / "000000.jsonl", "a") as f:
            for line in lines:
                f.write(line)
                f.flush()
                time.sleep(2.0 / len(lines))
        row = wait_row(robot, slow.name, lambda r: r[0] == "valid" and r[2] == len(lines), "all")
        report.cases["slow_writer"] += 1
        say(f"slow writer: valid with {row[2]} steps")

        # 2. Truncated mid-write: the writer died inside a step line.
        cut = folder / "truncated"
        (cut / "steps").mkdir(parents=True)
        (cut / "metadata.json").write_bytes((spare[1] / "metadata.json").read_bytes())
        text = (spare[1] / "steps" / "000000.jsonl").read_text()
        (cut / "steps" / "000000.jsonl").write_text(text[: len(text) // 2])
        row = wait_row(robot, cut.name, lambda r: r[0] == "rejected", "rejected")
        assert row[3], row
        report.cases["truncated"] += 1
        say(f"truncated: rejected: {row[3][:120]}")

        # 3. Replaced while being read: its steps file swapped between two contents 100 times.
        flip = folder / "replaced"
        shutil.copytree(spare[2], work / "flip-a")
        (work / "flip-b").mkdir()
        other = (spare[3] / "steps" / "000000.jsonl").read_bytes()
        mine = (spare[2] / "steps" / "000000.jsonl").read_bytes()
        os.rename(work / "flip-a", flip)
        for i in range(100):
            tmp = work / "flip-b" / "next.jsonl"
            tmp.write_bytes(other if i % 2 == 0 else mine)
            os.replace(tmp, flip / "steps" / "000000.jsonl")
            time.sleep(0.02)
        final = content_hash(flip)
        row = wait_row(robot, flip.name, lambda r: r[1] == final, "hash of the final bytes")
        assert row[0] == "valid", row
        report.cases["replaced_while_read"] += 1
        say("replaced while read: the ledger holds the final bytes' hash")

        # 4. Symlink swap: an ingested episode dir replaced by a symlink leaving the folder.
        swap = folder / spare[4].name
        os.rename(spare[4], swap)
        wait_row(robot, swap.name, lambda r: r[0] == "valid", "valid before the swap")
        outside = work / "outside-target"
        os.rename(swap, outside)
        os.symlink(outside, swap)
        row = wait_row(robot, swap.name, lambda r: r[0] == "rejected", "rejected after swap")
        assert "leaves the episodes folder" in (row[3] or ""), row
        report.cases["symlink_swap"] += 1
        say(f"symlink swap: {row[3]}")

        # 5. A garbage mode file, then none at all: the gate stays closed, the daemon up.
        (robot.root / ".robot_mode").write_bytes(os.urandom(300))
        wait_until(
            lambda: (
                any("mode" in r for r in (status(robot.root).get("gate") or {}).get("reasons", []))
                and not status(robot.root)["gate"]["open"]
            ),
            30,
            "a closed gate naming the mode file",
            robot.log,
        )
        (robot.root / ".robot_mode").unlink()
        time.sleep(1.0)
        gate = status(robot.root)["gate"]
        assert not gate["open"] and any("mode" in r for r in gate["reasons"]), gate
        report.cases["mode_garbage"] += 1
        report.cases["mode_vanished"] += 1
        robot.mode("manual_control")

        # 6. A flood: ``flood`` distinct episodes renamed in at once.
        before = int((status(robot.root).get("ledger") or {}).get("valid", 0))
        pool = work / "flood"
        synth(robot.root, pool, "--episodes", str(flood), "--steps", "5", "--seed", "99")
        started = time.monotonic()
        for entry in pool.iterdir():
            os.rename(entry, folder / entry.name)
        wait_until(
            lambda: (status(robot.root).get("ledger") or {}).get("valid", 0) >= before + flood,
            max(120, flood / 10),
            f"{flood} flooded episodes ingested",
            robot.log,
        )
        report.flood = flood
        report.flood_ingest_s = time.monotonic() - started
        report.cases["flood"] += 1
        say(f"flood of {flood}: ingested in {report.flood_ingest_s:.1f} s")

        assert robot.proc.poll() is None, robot.tail()
        report.rss_after_mb = rss_mb(robot.proc.pid)
        assert robot.stop() == 0, robot.tail()
        from daemon.ledger import Ledger

        with Ledger.open(robot.root / "state" / "ledger.sqlite3") as ledger:
            rejected = dict(ledger.rejected(limit=100_000))
        expected = {str(cut), str(swap)}
        assert expected <= set(rejected), rejected
        assert all(rejected[p] for p in rejected), rejected
        report.rejected_with_reason = len(rejected)
    finally:
        if robot.proc is not None and robot.proc.poll() is None:
            robot.proc.kill()
            robot.proc.wait(timeout=10)
        notify.close()
    pings = [t for t, _ in notify.lines("WATCHDOG=1")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    report.watchdog_pings = len(pings)
    report.watchdog_max_gap_s = max(gaps, default=0.0)
    report.watchdog_misses = sum(g > HOSTILE_WATCHDOG_USEC / 1e6 for g in gaps)
    report.elapsed_s = time.monotonic() - t0
    return report
