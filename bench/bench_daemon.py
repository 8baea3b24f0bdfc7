"""The daemon's own figures, on the real daemon run as a subprocess (as systemd runs it).

Run: ``.venv/bin/python bench/bench_daemon.py [--idle-s 60] [--samples 20] [--episodes 10000]``
(``--quick`` for a short smoke run). About five minutes at the default sizes.

1. Idle, gate closed (mode ``manual_control``), over ``--idle-s``: RSS and CPU share of one core
   (psutil cpu_times of the daemon pid), for the embedded default config (``run`` without
   ``--config``, what a robot runs) and the fast test config side by side; torch never mapped.
   Again with ``--episodes`` episodes in the folder (embedded default, 20 s).
2. Episode detection: ``os.rename`` of an episode directory into the folder until the ledger
   (read-only query by path, 5 ms polls) holds it as valid. With a ``COMPLETE`` marker
   (accepted at once) and without (freshly written, so ``ingest.settle_s`` applies); again
   with ``--episodes`` episodes in the folder.
3. Preemption (in a thread, during the idle window): write of the mode file (teleop) until the
   training child has exited (zombie or gone) and until it is reaped, polled at 5 ms; the child
   is always mid-training. Also the child's start-up: spawn (its /proc start time) to its first
   progress step in ``status.json``, and the child's own ``timings.startup_s``.
4. Start to READY=1 (a bound NOTIFY_SOCKET) with ``--episodes`` episodes in the ledger, and the
   first start: READY and all episodes ingested.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from tests.daemon_harness import (  # noqa: E402
    NotifySocket,
    make_root,
    status,
    write_mode,
)
from trainer_core.rlds.hashing import COMPLETE_MARKER  # noqa: E402
from trainer_core.synth import write_synthetic_episodes  # noqa: E402 - numpy only, no torch

MB = 2**20
CONSOLE_SCRIPT = Path(sys.executable).parent / "continuon-trainer"
CLI = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "daemon.cli"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
WATCHDOG_USEC = 60_000_000  # deploy/systemd: WatchdogSec=60s


# -- small helpers -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"n={len(values)} min {min(values):.3f} p50 {pct(values, 0.5):.3f} "
        f"p95 {pct(values, 0.95):.3f} max {max(values):.3f} s"
    )


def figure(name: str, value: float, unit: str, target: str, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "value": round(value, 4), "unit": unit, "target": target, "pass": ok}


def wait_for(predicate: Callable[[], Any], timeout: float, step: float = 0.005) -> Any:
    """Poll ``predicate`` every ``step`` s; its first truthy value, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def launch(root: Path, config: Path | None, notify: NotifySocket | None) -> subprocess.Popen:
    """``continuon-trainer --root R [--config C] run`` with systemd's notify variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    cmd = [*CLI, "--root", str(root), *(["--config", str(config)] if config else []), "run"]
    log = open(root / "daemon.log", "a")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    finally:
        log.close()


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ready_after(notify: NotifySocket, t0: float, timeout: float) -> float | None:
    """Seconds from ``t0`` (monotonic) to READY=1, or None."""
    hit = wait_for(lambda: notify.lines("READY=1"), timeout, 0.002)
    return hit[0][0] - t0 if hit else None


def valid_count(root: Path) -> int:
    """Valid episodes in the ledger (read-only query)."""
    db = root / "state" / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT COUNT(*) FROM episodes WHERE status = 'valid'").fetchone()[0]


def torch_mapped(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/" in maps


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (``Z`` for a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def proc_started_boottime(pid: int) -> float | None:
    """When ``pid`` started, in CLOCK_BOOTTIME seconds (10 ms resolution)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]) / CLK_TCK


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def make_base(work: Path) -> Path:
    """A fresh base checkpoint (``base init``), shared by every root."""
    out = work / "base" / "policy.safetensors"
    done = subprocess.run(
        [*CLI, "--root", str(work), "base", "init", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"base init failed:\n{done.stdout}\n{done.stderr}")
    return out


def new_root(work: Path, name: str, base: Path, extra: dict, mode: str) -> tuple[Path, Path]:
    folder = work / name
    folder.mkdir()
    return make_root(folder, extra=extra, base=base, mode=mode)


# -- 1. idle ---------------------------------------------------------------------------------------


def import_footprint() -> dict[str, Any]:
    """RSS and module count of a bare interpreter vs one that imported what ``run`` imports."""
    code = (
        "import sys, psutil, time;"
        "base = psutil.Process().memory_info().rss; n0 = len(sys.modules); t = time.perf_counter();"
        "import daemon.cli, daemon.service;"
        "dt = time.perf_counter() - t;"
        "tops = sorted({m.split('.')[0] for m in sys.modules});"
        "print(__import__('json').dumps({'bare_rss_mb': base / 2**20,"
        " 'rss_mb': psutil.Process().memory_info().rss / 2**20, 'modules': len(sys.modules),"
        " 'modules_bare': n0, 'import_s': dt, 'numpy': 'numpy' in sys.modules,"
        " 'torch': 'torch' in sys.modules, 'top_level': tops}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-400:]}


def measure_idle(procs: dict[str, subprocess.Popen], idle_s: float) -> dict[str, dict]:
    """CPU share and RSS of each daemon pid over the same ``idle_s`` window."""
    ps = {name: psutil.Process(p.pid) for name, p in procs.items()}
    t0 = time.monotonic()
    cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in ps.items()}
    peak = dict.fromkeys(ps, 0)
    while time.monotonic() - t0 < idle_s:
        for name, p in ps.items():
            peak[name] = max(peak[name], p.memory_info().rss)
        time.sleep(min(1.0, max(0.0, idle_s - (time.monotonic() - t0))))
    window = time.monotonic() - t0
    out = {}
    for name, p in ps.items():
        full = p.memory_full_info()
        out[name] = {
            "cpu_percent": (sum(p.cpu_times()[:2]) - cpu0[name]) / window * 100,
            "rss_mb": full.rss / MB,
            "peak_rss_mb": max(peak[name], full.rss) / MB,
            "uss_mb": full.uss / MB,
            "pss_mb": getattr(full, "pss", 0) / MB,
            "threads": p.num_threads(),
            "torch_mapped": torch_mapped(p.pid),
            "window_s": window,
        }
    return out


# -- 2. detection ----------------------------------------------------------------------------------


def ledger_status(root: Path) -> Callable[[str], str | None]:
    """A read-only look-up of one episode's ledger status by folder entry name."""
    episodes = root / "rlds" / "episodes"
    db = root / "state" / "ledger.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)

    def lookup(name: str) -> str | None:
        try:
            row = conn.execute(
                "SELECT status FROM episodes WHERE path = ?", (str(episodes / name),)
            ).fetchone()
        except sqlite3.OperationalError:  # briefly locked: ask again next poll
            return None
        return row[0] if row else None

    return lookup


def detect(
    root: Path,
    staging: Path,
    n: int,
    marker: bool,
    first_index: int,
    timeout: float,
    land_s: float = 30.0,
) -> tuple[list[float], int]:
    """Latencies (s) from rename to the ledger holding the episode as valid (read-only query
    by path, polled at 5 ms); and how many were not seen within ``timeout``. A missed one is
    given ``land_s`` more to land, so it cannot be counted for the next sample."""
    episodes = root / "rlds" / "episodes"
    lookup = ledger_status(root)
    latencies: list[float] = []
    misses = 0
    for i in range(n):
        [episode] = write_synthetic_episodes(
            staging, 1, n_steps=30, seed=42, first_index=first_index + i
        )
        marker_file = episode / COMPLETE_MARKER
        if marker:
            marker_file.touch()
        else:  # synth writes one, as a well-behaved producer does; this producer does not
            marker_file.unlink(missing_ok=True)
        name = episode.name
        t0 = time.monotonic()
        os.rename(episode, episodes / name)
        if wait_for(lambda nm=name: lookup(nm) is not None, timeout):
            latencies.append(time.monotonic() - t0)
            if lookup(name) != "valid":
                raise RuntimeError(f"{name} was not accepted: {lookup(name)}\n" + _tail(root))
        else:
            misses += 1
            wait_for(lambda nm=name: lookup(nm) is not None, land_s, 0.05)
        time.sleep(random.uniform(0.05, 0.3))  # decorrelate from the loop's ticks
    return latencies, misses


# -- 3. preemption ---------------------------------------------------------------------------------


def preempt_rounds(root: Path, n: int) -> dict[str, Any]:
    """``n`` preemptions of a mid-training child; exit/reap latencies and child start-up."""
    exited: list[float] = []
    reaped: list[float] = []
    startup: list[float] = []
    child_startup: list[float] = []
    last_job = None
    for _ in range(n):
        seen = wait_for(
            lambda last=last_job: (
                (job := status(root).get("job"))
                and job.get("job_id") != last
                and job.get("step", 0) > 0
                and job
            ),
            120,
            0.01,
        )
        if not seen:
            raise RuntimeError("no training child within 120 s:\n" + _tail(root))
        first_step_boot = boottime()
        pid, last_job = seen["pid"], seen["job_id"]
        spawned = proc_started_boottime(pid)
        if spawned is not None:
            startup.append(first_step_boot - spawned)
        time.sleep(random.uniform(0.2, 0.8))  # well inside training
        if proc_state(pid) in (None, "Z"):
            raise RuntimeError(f"child {pid} ended on its own:\n" + _tail(root))
        t0 = time.monotonic()
        write_mode(root, "manual_control")
        t_exit = wait_for(lambda p=pid: proc_state(p) in (None, "Z") and time.monotonic(), 15)
        t_gone = wait_for(lambda p=pid: proc_state(p) is None and time.monotonic(), 15)
        if t_exit:
            exited.append(t_exit - t0)
        if t_gone:
            reaped.append(t_gone - t0)
        result = root / "state" / "runs" / last_job / "result.json"
        if wait_for(result.exists, 5, 0.02):
            timings = json.loads(result.read_text()).get("timings", {})
            if "startup_s" in timings:
                child_startup.append(timings["startup_s"])
        write_mode(root, "idle")
    return {
        "exited": exited,
        "reaped": reaped,
        "spawn_to_first_step": startup,
        "child_startup_s": child_startup,
    }


def _capture(out: dict[str, Any], fn: Callable[..., dict[str, Any]], *args: Any) -> None:
    """Run ``fn`` in a thread; its result (or the exception) lands in ``out``."""
    try:
        out.update(fn(*args))
    except Exception as exc:
        out["error"] = exc


def _tail(root: Path) -> str:
    log = root / "daemon.log"
    return log.read_text()[-2000:] if log.exists() else ""


# -- 4. start-up with many episodes ----------------------------------------------------------------


def write_json_episodes(folder: Path, n: int, template_dir: Path) -> None:
    """``n`` small layout-B episodes (5 steps each, distinct ids), mtimes in the past."""
    [tpl] = write_synthetic_episodes(template_dir, 1, n_steps=5, seed=7)
    meta = json.loads((tpl / "metadata.json").read_text())
    steps = [json.loads(s) for s in (tpl / "steps" / "000000.jsonl").read_text().splitlines()]
    old = time.time() - 3600
    for i in range(n):
        meta["episode_id"] = f"bench-{i:06d}"
        path = folder / f"bench-{i:06d}.json"
        path.write_text(json.dumps({"metadata": meta, "steps": steps}))
        os.utime(path, (old, old))


def time_start(
    root: Path,
    config: Path | None,
    work: Path,
    timeout: float,
    until: Callable[[], bool] | None = None,
) -> tuple[float | None, float | None]:
    """Popen -> READY=1 for one start, and Popen -> ``until()`` when given (polled at 50 ms);
    the daemon is stopped again afterwards."""
    sock = work / f"notify-{time.monotonic_ns()}.sock"
    notify = NotifySocket(sock)
    t0 = time.monotonic()
    proc = launch(root, config, notify)
    try:
        ready = ready_after(notify, t0, timeout)
        done = None
        if until is not None and wait_for(until, timeout, 0.05):
            done = time.monotonic() - t0
        return ready, done
    finally:
        stop(proc)
        notify.close()
        sock.unlink(missing_ok=True)


def profile_start(root: Path, cfg_path: Path) -> dict[str, float]:
    """Where a start's time goes, in-process: config load, ledger open, the initial rescan."""
    from daemon.config import load_config
    from daemon.ingest import scan
    from daemon.ledger import Ledger

    out: dict[str, float] = {}
    t = time.perf_counter()
    cfg, _ = load_config(cfg_path, str(root))
    out["load_config_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ledger = Ledger.open(cfg.ledger_path)
    out["ledger_open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = scan(cfg.paths.episodes, ledger, cfg.ingest, cfg.job.eval_fraction, time.time())
    out["rescan_s"] = time.perf_counter() - t
    out["rescan_unchanged"] = report.unchanged
    t = time.perf_counter()
    ledger.counts()
    out["counts_s"] = time.perf_counter() - t
    ledger.close()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import daemon.cli, daemon.service"], cwd=REPO, check=True
        )
        runs.append(time.perf_counter() - t)
    out["interpreter_and_imports_s"] = min(runs)
    return out


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="idle 10 s, 5 samples, 1000 eps")
    parser.add_argument("--full", action="store_true", help="accepted for make bench; no change")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.idle_s, args.samples, args.episodes = 10.0, 5, 1000
    random.seed(0)
    figures: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    started = time.monotonic()
    procs: list[subprocess.Popen] = []
    sockets: list[NotifySocket] = []
    try:
        print(f"work folder {work}; daemon command {' '.join(CLI)} ... run", flush=True)
        base = make_base(work)
        print(f"base init: {time.monotonic() - started:.1f} s", flush=True)

        # 3. Preemption runs in a thread while the idle daemons are measured: child start-up
        # (torch and peft imports) is most of its time. Idle CPU is the idle daemons' own CPU
        # time, which the training child next to them hardly changes.
        root3, cfg3 = new_root(
            work,
            "preempt",
            base,
            {
                "job": {"max_steps": 1_000_000, "max_wall_time_s": 3600, "log_every_steps": 1},
                "gate": {"open_after_s": 0.2, "min_closed_s": 0.2},
            },
            "idle",
        )
        write_synthetic_episodes(root3 / "rlds" / "episodes", 8, n_steps=60, seed=3)
        proc3 = launch(root3, cfg3, None)
        procs.append(proc3)
        pre: dict[str, Any] = {}
        rounds = threading.Thread(
            target=_capture, args=(pre, preempt_rounds, root3, args.samples), daemon=True
        )
        rounds.start()

        # 1. Idle: the embedded default and the fast test config, side by side.
        roots = {
            "default": new_root(work, "idle-default", base, {}, "manual_control"),
            "fast": new_root(work, "idle-fast", base, {}, "manual_control"),
        }
        daemons = {}
        for name, (root, cfg) in roots.items():
            sock = NotifySocket(work / f"{name}.sock")
            sockets.append(sock)
            t0 = time.monotonic()
            daemons[name] = launch(root, None if name == "default" else cfg, sock)
            procs.append(daemons[name])
            ready = ready_after(sock, t0, 60)
            print(f"[idle] {name}: READY after {ready} s (empty ledger)", flush=True)
        time.sleep(2.0)  # past start-up, into the steady loop
        idle = measure_idle(daemons, args.idle_s)
        for name, m in idle.items():
            print(
                f"[idle] {name}: cpu {m['cpu_percent']:.3f} % of a core over {m['window_s']:.0f}"
                f" s, rss {m['rss_mb']:.1f} MB (peak {m['peak_rss_mb']:.1f}, uss "
                f"{m['uss_mb']:.1f}, pss {m['pss_mb']:.1f}), {m['threads']} threads, "
                f"torch mapped: {m['torch_mapped']}",
                flush=True,
            )
            gate = status(roots[name][0]).get("gate") or {}
            print(f"[idle] {name}: gate open={gate.get('open')} {gate.get('reasons')}")
            figures += [
                figure(f"idle_rss_{name}", m["rss_mb"], "MB", "<= 60", m["rss_mb"] <= 60),
                figure(
                    f"idle_cpu_{name}", m["cpu_percent"], "% core", "<= 1", m["cpu_percent"] <= 1
                ),
                figure(
                    f"idle_torch_mapped_{name}",
                    float(m["torch_mapped"]),
                    "bool",
                    "== 0",
                    not m["torch_mapped"],
                ),
            ]
        foot = import_footprint()
        print(
            f"[idle] imports of `run`: bare interpreter {foot.get('bare_rss_mb', 0):.1f} MB ->"
            f" {foot.get('rss_mb', 0):.1f} MB, {foot.get('modules')} modules (bare"
            f" {foot.get('modules_bare')}), {foot.get('import_s', 0):.2f} s, numpy "
            f"{foot.get('numpy')}, torch {foot.get('torch')}",
            flush=True,
        )
        print(f"[idle] top-level packages: {' '.join(foot.get('top_level', []))}")

        rounds.join()
        stop(proc3)
        if "error" in pre:
            raise pre["error"]

        # 2. Detection, on the fast daemon (settle 0.3 s, periodic rescan 5 s).
        fast_root = roots["fast"][0]
        staging = work / "staging"
        staging.mkdir()
        marked, miss_m = detect(fast_root, staging, args.samples, True, 0, 5)
        print(f"[detect] COMPLETE marker: {summary(marked)}, misses {miss_m}", flush=True)
        settled, miss_s = detect(fast_root, staging, args.samples, False, 1000, 10)
        print(
            f"[detect] no marker (settle_s 0.3, rescan_interval_s 5): {summary(settled)}, "
            f"misses {miss_s}",
            flush=True,
        )
        # The same without a marker on the embedded default (settle_s 5, rescan 300 s): a
        # short probe with a cut-off, not a distribution.
        probe, miss_p = detect(roots["default"][0], staging, 1, False, 2000, 15, land_s=0)
        print(
            f"[detect] no marker, embedded default (settle_s 5, rescan_interval_s 300): "
            f"{summary(probe)}, {miss_p} of 1 not seen within 15 s",
            flush=True,
        )
        p95m, p95s = pct(marked, 0.95), pct(settled, 0.95)
        figures += [
            figure("detect_marker_p95", p95m, "s", "<= 1", p95m <= 1 and not miss_m),
            figure("detect_marker_p50", pct(marked, 0.5), "s", "", None),
            figure("detect_settle_p95_fast", p95s, "s", "<= 1 + settle_s", p95s <= 1.3),
            figure("detect_settle_default_missed_15s", float(miss_p), "of 1", "== 0", miss_p == 0),
        ]
        for name in list(daemons):
            stop(daemons[name])

        print(f"[preempt] write -> child exited: {summary(pre['exited'])}")
        print(f"[preempt] write -> child reaped (/proc gone): {summary(pre['reaped'])}")
        print(
            f"[preempt] child spawn -> first step in status.json: "
            f"{summary(pre['spawn_to_first_step'])}"
        )
        print(
            f"[preempt] child's own startup_s (its main() to training): "
            f"{summary(pre['child_startup_s'])}",
            flush=True,
        )
        p95e, p95r = pct(pre["exited"], 0.95), pct(pre["reaped"], 0.95)
        figures += [
            figure("preempt_exit_p95", p95e, "s", "<= 1", p95e <= 1),
            figure("preempt_reaped_p95", p95r, "s", "<= 1", p95r <= 1),
            figure(
                "child_spawn_to_first_step_p50", pct(pre["spawn_to_first_step"], 0.5), "s", "", None
            ),
        ]

        # 4. Start to READY with many episodes in the ledger.
        root4, cfg4 = new_root(work, "many", base, {}, "manual_control")
        t = time.monotonic()
        write_json_episodes(root4 / "rlds" / "episodes", args.episodes, work / "tpl")
        print(f"[start] wrote {args.episodes} layout-B episodes in {time.monotonic() - t:.1f} s")
        first, ingested = time_start(
            root4, cfg4, work, 600, until=lambda: valid_count(root4) >= args.episodes
        )
        print(
            f"[start] first start: READY after {first} s, all {args.episodes} ingested after "
            f"{ingested} s",
            flush=True,
        )
        n_valid = valid_count(root4)
        starts = [time_start(root4, cfg4, work, 60)[0] for _ in range(3)]
        starts_ok = [s for s in starts if s is not None]
        print(f"[start] restart with {n_valid} valid in the ledger: READY after {starts} s")
        default_start = time_start(root4, None, work, 60)[0]
        print(f"[start] same root, embedded default config: READY after {default_start} s")
        prof = profile_start(root4, cfg4)
        print("[start] in-process breakdown: " + ", ".join(f"{k} {v:.3f}" for k, v in prof.items()))
        worst = max(starts_ok) if starts_ok else float("inf")
        figures += [
            figure(f"ready_with_{args.episodes}_s", worst, "s", "<= 2", worst <= 2),
            figure(f"first_start_ready_{args.episodes}_s", first or float("inf"), "s", "", None),
            figure(
                f"first_start_ingested_{args.episodes}_s", ingested or float("inf"), "s", "", None
            ),
        ]
        # Detection with that many episodes present (every change rescans the whole folder).
        sock = NotifySocket(work / "many.sock")
        sockets.append(sock)
        t0 = time.monotonic()
        proc4 = launch(root4, None, sock)  # the embedded default: what a robot runs
        procs.append(proc4)
        ready_after(sock, t0, 60)
        time.sleep(2.0)
        busy = measure_idle({"many": proc4}, min(args.idle_s, 20.0))["many"]
        print(
            f"[idle] embedded default, {n_valid} episodes in the folder: cpu "
            f"{busy['cpu_percent']:.2f} % of a core over {busy['window_s']:.0f} s, rss "
            f"{busy['rss_mb']:.1f} MB",
            flush=True,
        )
        figures.append(
            figure(
                f"idle_cpu_default_with_{args.episodes}",
                busy["cpu_percent"],
                "% core",
                "<= 1",
                busy["cpu_percent"] <= 1,
            )
        )
        big, miss_b = detect(root4, staging, max(5, args.samples // 2), True, 3000, 5)
        stop(proc4)
        print(
            f"[detect] COMPLETE marker, embedded default, {n_valid} in the folder: "
            f"{summary(big)}, misses {miss_b}",
            flush=True,
        )
        p95b = pct(big, 0.95)
        figures.append(
            figure(f"detect_marker_p95_with_{args.episodes}", p95b, "s", "<= 1", p95b <= 1)
        )
    finally:
        for proc in procs:
            stop(proc, 10)
        for sock in sockets:
            sock.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.monotonic() - started:.0f} s")
    print(json.dumps({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
