"""Reliability at full size: crash campaign, injected faults and hostile input, as figures.

    .venv/bin/python bench/bench_reliability.py [--kills N] [--robots R] [--minutes M]
        [--only crash|faults|hostile] [--flood N] [--seed S] [--quick]

Defaults follow the issue's full size: 1,000 random SIGKILLs (daemon, child or both) of the real
daemon at random points of every phase (start-up, scan, idle, training, evaluation, promotion,
automatic rollback; counted per ``who@phase``), the fault suite (tests/test_reliability_faults.py:
disk full during a job and during promotion, a hung child, memory over budget twice, a corrupt
ledger), and hostile input with 10,000 episodes dropped at once. The kills are shared among
``--robots`` robots run at once (default 4: each mostly waits for its daemon or its child's torch
import); ``--minutes`` stops killing after that long (the figures say how many were done).
``--quick`` runs the ``make test`` sizes (12 kills, 1,000 episodes). Last stdout line: the
figures JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.reliability_harness import crash_campaign, hostile_campaign, make_base  # noqa: E402


def figure(name: str, value: float, unit: str, target: str, ok: bool | None) -> dict:
    return {"name": name, "value": float(value), "unit": unit, "target": target, "pass": ok}


def run_faults(work: Path) -> dict[str, str]:
    """Run the fault suite under pytest; each fault's outcome: passed, failed or skipped."""
    junit = work / "faults.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_reliability_faults.py",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={work / 'faults'}",
            f"--junitxml={junit}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?").removeprefix("test_")
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[name] = "failed"
        elif case.find("skipped") is not None:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--robots", type=int, default=4, help="robots killed at once")
    parser.add_argument("--minutes", type=float, default=None, help="stop killing after this")
    parser.add_argument("--only", choices=("crash", "faults", "hostile"), default=None)
    parser.add_argument("--quick", action="store_true", help="the make-test sizes")
    parser.add_argument("--full", action="store_true", help="accepted; the default is full size")
    args = parser.parse_args(argv)
    kills, flood = (12, 1_000) if args.quick else (args.kills, args.flood)
    robots = 1 if args.quick else args.robots
    deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
    parts = {args.only} if args.only else {"crash", "faults", "hostile"}
    started = time.monotonic()
    figures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        work = Path(tmp)
        base = make_base(work / "shared")
        if "crash" in parts:
            figures += run_crash(work, base, kills, robots, deadline, args.seed)
        if "faults" in parts:
            figures += fault_figures(work)
        if "hostile" in parts:
            figures += run_hostile(work, base, flood)
    total = time.monotonic() - started
    print(f"total {total:.0f} s")
    figures.append(figure("reliability bench time", total, "s", "", None))
    print(json.dumps({"figures": figures}))
    return 0


def run_crash(
    work: Path, base: Path, kills: int, robots: int, deadline: float | None, seed: int
) -> list[dict]:
    """The kill campaign's figures: kills per who and per phase, invariants, recovery."""
    print(f"crash campaign: {kills} kills, {robots} robots", flush=True)
    crash_dir = work / "crash"
    crash_dir.mkdir()
    t0 = time.monotonic()

    def say(line: str) -> None:
        print(f"{time.monotonic() - t0:8.1f} s {line}", flush=True)

    try:
        crash = crash_campaign(
            crash_dir, base, kills, seed=seed, say=say, robots=robots, deadline=deadline
        )
        c = crash.as_dict()
        crash_error = ""
    except AssertionError as exc:
        c, crash_error = {}, str(exc)[:2000]
        print(f"CRASH CAMPAIGN FAILED: {crash_error}")
    print(json.dumps(c), flush=True)
    ok = bool(c) and not crash_error
    done = c.get("kills_total", 0)
    return [
        figure("crash kills", done, "kills", f">= {kills}", ok and done >= kills),
        figure("kills of the daemon", c.get("kills", {}).get("daemon", 0), "kills", "", None),
        figure("kills of the child", c.get("kills", {}).get("child", 0), "kills", "", None),
        figure("kills of both", c.get("kills", {}).get("both", 0), "kills", "", None),
        *(
            figure(f"kills at {phase}", n, "kills", "", None)
            for phase, n in sorted(c.get("moments", {}).items())
        ),
        *(
            figure(f"kills {who_phase}", n, "kills", "", None)
            for who_phase, n in sorted(c.get("phases", {}).items())
        ),
        figure(
            "orphaned children reaped",
            c.get("orphans_reaped", 0),
            "jobs",
            ">= 1",
            c.get("orphans_reaped", 0) >= 1,
        ),
        figure(
            "automatic rollbacks completed after a kill",
            c.get("rollbacks_completed", 0),
            "rollbacks",
            f"= kills at rollback ({c.get('moments', {}).get('rollback', 0)})",
            ok and c.get("rollbacks_completed", 0) == c.get("moments", {}).get("rollback", 0),
        ),
        figure("killed jobs retried", c.get("retries_seen", 0), "jobs", "", None),
        figure("daemon starts", c.get("daemon_starts", 0), "starts", "", None),
        figure("invariants checked", c.get("invariants_checked", 0), "checks", "all hold", ok),
        figure("invariant violations", 0 if ok else 1, "violations", "0", ok),
        figure(
            "episodes lost",
            c.get("episodes_lost", -1) if ok else -1,
            "episodes",
            "0",
            ok and c.get("episodes_lost") == 0,
        ),
        figure(
            "promotion after all kills",
            1.0 if c.get("final_promoted") else 0.0,
            "bool",
            "1",
            bool(c.get("final_promoted")),
        ),
        figure("crash campaign time", c.get("elapsed_s", 0), "s", "", None),
    ]


def fault_figures(work: Path) -> list[dict]:
    """The fault suite under pytest, one figure per fault."""
    print("fault injection (tests/test_reliability_faults.py)", flush=True)
    out = []
    for name, outcome in sorted(run_faults(work).items()):
        print(f"  {name}: {outcome}")
        out.append(
            figure(
                f"fault {name}",
                1.0 if outcome == "passed" else 0.0,
                "handled",
                "1",
                None if outcome == "skipped" else outcome == "passed",
            )
        )
    return out


def run_hostile(work: Path, base: Path, flood: int) -> list[dict]:
    """Hostile input and a flood of ``flood`` episodes against a running daemon."""
    print(f"hostile input: flood of {flood}", flush=True)
    hostile_dir = work / "hostile"
    hostile_dir.mkdir()
    try:
        h = hostile_campaign(hostile_dir, base, flood, say=print).as_dict()
        hostile_error = ""
    except AssertionError as exc:
        h, hostile_error = {}, str(exc)[:2000]
        print(f"HOSTILE CAMPAIGN FAILED: {hostile_error}")
    print(json.dumps(h), flush=True)
    hok = bool(h) and not hostile_error
    growth = h.get("rss_after_mb", 0) - h.get("rss_before_mb", 0)
    return [
        figure("hostile cases survived", len(h.get("cases", {})), "cases", "7", hok),
        figure("flood ingested", h.get("flood", 0), "episodes", f"{flood}", hok),
        figure("flood ingest time", h.get("flood_ingest_s", 0), "s", "", None),
        figure(
            "watchdog misses under hostile input (10 s)",
            h.get("watchdog_misses", -1),
            "misses",
            "0",
            hok and h.get("watchdog_misses") == 0,
        ),
        figure("largest watchdog gap", h.get("watchdog_max_gap_s", 0), "s", "< 10", None),
        figure(
            "daemon RSS growth under hostile input", growth, "MB", "< 100", hok and growth < 100
        ),
        figure(
            "bad episodes with a reason",
            h.get("rejected_with_reason", 0),
            "episodes",
            ">= 2",
            hok,
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
