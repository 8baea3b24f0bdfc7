"""Compressed-time soak of the real daemon: many short jobs, a flapping gate, episodes arriving.

    .venv/bin/python bench/bench_soak.py [--minutes 30 | --hours N] [--seed S]

The daemon runs under a notify socket the bench binds (systemd's side) with WATCHDOG_USEC set.
A synthetic robot drops two episodes every few seconds and flips its mode file between idle and
manual_control at random (a flapping gate: jobs start, get preempted, resume, promote or get
rejected). Jobs are tiny (``max_steps`` 20). Reported: the daemon's RSS over time and its slope
(judged on the second half), jobs started / preempted / promoted / rejected / failed, and
watchdog misses (a gap between WATCHDOG=1 pings longer than WATCHDOG_USEC; must be 0). The
issue's soak is 30 minutes (the default); ``--hours N`` is the long soak; ``--minutes 2`` is a
quick look.
Open file descriptors, threads and the state folder's disk use are sampled too, each with its
least-squares slope per hour (flat means no leak). Last stdout line: figures JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from tests.daemon_harness import NotifySocket, group_alive  # noqa: E402
from tests.reliability_harness import Robot, job_pid, job_processes, make_base, rss_mb  # noqa: E402

WATCHDOG_USEC = 2_000_000
SOAK_CONFIG = {
    # the eval cap a robot reaches after weeks (256 by default), reached here in about 13 minutes
    # (a quarter of 20 episodes a minute is held out): the rest of the soak is the steady state
    "job": {"max_steps": 20, "log_every_steps": 5, "max_eval_episodes": 64},
    "service": {"cooldown_s": 0, "min_new_episodes": 2},
    # the health window on, compressed like the rest: 5 autonomous minutes confirm a release
    "health": {"enabled": True, "confirm_after_autonomous_s": 300},
}
DROP_EVERY_S = 6.0
SAMPLE_EVERY_S = 5.0
# Judged on the second half: the first fills the eval set up to its cap and SQLite's page cache
# (bounded at 2 MB), growth that stops. Measured: 1.3 MB/h at 30 minutes, 1.8 at 75 (the commit
# before the watcher, ledger and heap fixes: 11.1 at 60; before the status fix: about 30).
RSS_SLOPE_TARGET_MB_PER_H = 3.0


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(samples) < 3:
        return 0.0
    ts = [t for t, _ in samples]
    ys = [y for _, y in samples]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 3600.0


def disk_use_mb(folder: Path) -> float:
    """Disk allocated under ``folder`` (files), in MB; files vanishing mid-walk are skipped."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total / 1e6


def state_parts_mb(root: Path) -> dict[str, float]:
    """Where the disk use goes (MB): the ledger (database, WAL, shm), the run dirs (checkpoints,
    candidates, child logs), the rest of the state folder, the journal file the bench keeps
    (``daemon.log``, journald's on a robot) and the adapter store (releases, pruned)."""
    state = root / "state"
    ledger = sum(
        disk_use_mb(p) if p.is_dir() else (p.stat().st_blocks * 512 / 1e6 if p.exists() else 0.0)
        for p in state.glob("ledger.sqlite3*")
    )
    runs = disk_use_mb(state / "runs")
    return {
        "ledger MB": ledger,
        "runs MB": runs,
        "other state MB": disk_use_mb(state) - ledger - runs,
        "store MB": disk_use_mb(root / "model" / "adapters"),
        "log MB": (root / "daemon.log").stat().st_size / 1e6
        if (root / "daemon.log").exists()
        else 0.0,
    }


def resources(pid: int, root: Path) -> dict[str, float]:
    """The daemon's open fds and threads, the state folder's disk use and its parts (MB)."""
    proc = psutil.Process(pid)
    return {
        "fds": float(proc.num_fds()),
        "threads": float(proc.num_threads()),
        "state MB": disk_use_mb(root / "state"),
        **state_parts_mb(root),
    }


def count_events(log: str) -> dict[str, int]:
    """Job outcomes from the daemon's JSON log lines."""
    counts = dict.fromkeys(
        ("started", "preempted", "promoted", "rejected", "failed", "rolled_back", "confirmed"), 0
    )
    for line in log.splitlines():
        try:
            event = json.loads(line[3:]) if line.startswith("<") else None
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        name = event.get("event")
        if name == "job_started":
            counts["started"] += 1
        elif name == "job_ended" and event.get("status") == "preempted":
            counts["preempted"] += 1
        elif name == "candidate_promoted":
            counts["promoted"] += 1
        elif name == "candidate_rejected":
            counts["rejected"] += 1
        elif name == "health_rolled_back":
            counts["rolled_back"] += 1
        elif name == "health_confirmed":
            counts["confirmed"] += 1
        elif name == "job_failed":
            counts["failed"] += 1
            print(f"job failed: {event.get('job_id')}: {event.get('reason')}")
    return counts


def figure(name: str, value: float, unit: str, target: str, ok: bool | None) -> dict:
    return {"name": name, "value": float(value), "unit": unit, "target": target, "pass": ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--hours", type=float, default=None, help="overrides --minutes")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="accepted; the default is full size")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.hours is not None:
        args.minutes = args.hours * 60.0
    duration = args.minutes * 60.0
    drops = int(duration / DROP_EVERY_S) + 4
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        base = make_base(work / "shared")
        robot = Robot.create(work / "robot", base, episodes=2 * drops + 8, extra=SOAK_CONFIG)
        notify = NotifySocket(work / "notify.sock")
        robot.drop(6)
        robot.mode("idle")
        robot.start(notify=notify, watchdog_usec=WATCHDOG_USEC)
        samples: list[tuple[float, float]] = []
        extra: dict[str, list[tuple[float, float]]] = {}
        flips = 0
        try:
            robot.wait_ready()
            assert robot.proc is not None
            t0 = time.monotonic()
            next_drop = next_sample = t0
            next_flip = t0 + rng.uniform(5, 20)
            mode = "idle"
            while (now := time.monotonic()) - t0 < duration:
                if robot.proc.poll() is not None:
                    raise SystemExit(f"daemon died: {robot.tail()}")
                if now >= next_sample:
                    samples.append((now - t0, rss_mb(robot.proc.pid)))
                    for key, value in resources(robot.proc.pid, robot.root).items():
                        extra.setdefault(key, []).append((now - t0, value))
                    next_sample += SAMPLE_EVERY_S
                if now >= next_drop:
                    robot.drop(2)
                    next_drop += DROP_EVERY_S
                if now >= next_flip:
                    # idle (jobs run) and back from a busy spell: teleop or autonomous driving,
                    # which the health window counts (exposure; autonomous -> teleop is an
                    # intervention)
                    mode = (
                        rng.choice(("manual_control", "autonomous")) if mode == "idle" else "idle"
                    )
                    robot.mode(mode)
                    flips += 1
                    # busy spells are short, idle spells long enough for a job to finish
                    next_flip = now + (rng.uniform(1, 6) if mode != "idle" else rng.uniform(4, 25))
                time.sleep(0.2)
            elapsed = time.monotonic() - t0
            child = job_pid(robot.root)
            code = robot.stop()
            stale = [p for p in job_processes(robot.root)]
            if child is not None and group_alive(child):
                stale.append(child)
        finally:
            if robot.proc is not None and robot.proc.poll() is None:
                robot.proc.kill()
            notify.close()
        pings = [t for t, _ in notify.lines("WATCHDOG=1")]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        misses = sum(g > WATCHDOG_USEC / 1e6 for g in gaps)
        for (a, _), (b, _) in itertools.pairwise(notify.lines("WATCHDOG=1")):
            if b - a > WATCHDOG_USEC / 2e6 * 1.5:
                print(f"watchdog gap {b - a:.2f} s at {a - t0:.0f} s into the soak")
        counts = count_events(robot.log.read_text())
    warm = [s for s in samples if s[0] >= min(60.0, duration * 0.1)]
    slope = slope_per_hour(warm)
    slope_late = slope_per_hour([s for s in samples if s[0] >= duration / 2])
    rss_first = warm[0][1] if warm else 0.0
    rss_last = warm[-1][1] if warm else 0.0
    rss_max = max((y for _, y in samples), default=0.0)
    print(f"soak {elapsed / 60:.1f} min; daemon exit {code}; mode flips {flips}")
    shown = samples[:: max(1, len(samples) // 12)]
    print(f"RSS samples (s, MB): {[(round(t), round(y, 1)) for t, y in shown]}")
    print(
        f"RSS {rss_first:.1f} -> {rss_last:.1f} MB (max {rss_max:.1f}); slope {slope:.2f} MB/h "
        f"(second half {slope_late:.2f} MB/h)"
    )
    slopes, late = {}, {}
    for key, series in extra.items():
        kept = [x for x in series if x[0] >= min(60.0, duration * 0.1)]
        slopes[key] = slope_per_hour(kept)
        # the second half alone: a growth that levels off (runs pruned to keep_runs, the WAL
        # at its checkpoint size) is bounded; one that keeps its slope is not
        late[key] = slope_per_hour([x for x in series if x[0] >= duration / 2])
        last = kept[-1][1] if kept else 0.0
        print(
            f"{key}: first {kept[0][1] if kept else 0:.1f}, last {last:.1f}, "
            f"max {max((y for _, y in series), default=0):.1f}; slope {slopes[key]:.2f}/h "
            f"(second half {late[key]:.2f}/h)"
        )
    print(f"jobs {counts}; watchdog pings {len(pings)}, largest gap {max(gaps, default=0):.2f} s")
    figures = [
        figure("soak duration", elapsed / 60, "min", f">= {args.minutes:g}", None),
        figure("daemon RSS slope", slope, "MB/h", "", None),
        figure(
            "daemon RSS slope, second half",
            slope_late,
            "MB/h",
            f"< {RSS_SLOPE_TARGET_MB_PER_H:g}",
            abs(slope_late) < RSS_SLOPE_TARGET_MB_PER_H,
        ),
        figure("daemon RSS max", rss_max, "MB", "", None),
        figure("daemon open fds slope", slopes["fds"], "fds/h", "", None),
        figure("daemon threads slope", slopes["threads"], "threads/h", "", None),
        figure("state folder disk use slope", slopes["state MB"], "MB/h", "", None),
        figure("state folder disk use slope, second half", late["state MB"], "MB/h", "", None),
        *(
            figure(f"{key} slope, second half", late[key], "MB/h", "", None)
            for key in ("ledger MB", "runs MB", "other state MB", "store MB", "log MB")
        ),
        figure(
            "state folder disk use max",
            max((y for _, y in extra["state MB"]), default=0),
            "MB",
            "",
            None,
        ),
        figure("episodes dropped", robot.dropped, "episodes", "", None),
        figure("health rollbacks", counts["rolled_back"], "rollbacks", "", None),
        figure("health confirmations", counts["confirmed"], "releases", "", None),
        figure(
            "daemon open fds max", max((y for _, y in extra["fds"]), default=0), "fds", "", None
        ),
        figure(
            "daemon threads max", max((y for _, y in extra["threads"]), default=0), "", "", None
        ),
        figure("jobs started", counts["started"], "jobs", "> 0", counts["started"] > 0),
        figure("jobs preempted", counts["preempted"], "jobs", "", None),
        figure("jobs promoted", counts["promoted"], "jobs", "> 0", counts["promoted"] > 0),
        figure("jobs rejected", counts["rejected"], "jobs", "", None),
        figure("jobs failed", counts["failed"], "jobs", "0", counts["failed"] == 0),
        figure("gate flips", flips, "flips", "", None),
        figure("watchdog misses", misses, "misses", "0", misses == 0 and len(pings) > 0),
        figure(
            "largest watchdog gap", max(gaps, default=0.0), "s", f"< {WATCHDOG_USEC / 1e6:g}", None
        ),
        figure(
            "clean stop, no stale child",
            1.0 if code == 0 and not stale else 0.0,
            "bool",
            "1",
            code == 0 and not stale,
        ),
    ]
    print(json.dumps({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
