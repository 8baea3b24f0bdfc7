"""The checks that run INSIDE the test VM (systemd is PID 1), as root, on the guest's python3.

Stdlib only. It installs the trainer the way an operator does (deploy/install.sh --wheelhouse
from the share disk), sets up a simulated robot, drives the real unit with systemctl and reads
what systemd, the journal and the files say. Each check is recorded as it finishes in
out/results.json (name, ok, detail), so a run cut short still reports what it reached; the
host turns every name into one pytest result (tests/vm/test_vm.py; CHECKS below is the list).

Timeouts are generous: code here runs 12-35x slower than on the host (software emulation).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

SHARE = Path("/mnt/share")
OUT = SHARE / "out"
SRC = SHARE / "src"
UNIT = "continuon-trainer.service"
ROBOT = Path("/opt/continuonos/brain")
EPISODES = ROBOT / "rlds" / "episodes"
STAGING = ROBOT / "rlds" / "staging"
STATE = Path("/var/lib/continuon-trainer")
STATUS = STATE / "status.json"
PREFIX = Path("/opt/continuon-trainer")
ETC_CONFIG = Path("/etc/continuon/trainer.yaml")
ROBOT_USER = "robot"  # the robot runtime's user, in the shared continuon group
MAX_EXPOSURE = 2.0
TIMEOUT_STOP_S = 45.0

CHECKS = [
    "install.sh --wheelhouse installs offline",
    "sysusers and tmpfiles: user, group, state folder",
    "enable --now: active only after READY=1",
    "active (running) with STATUS text",
    "a job trains on episodes dropped by another continuon user and promotes",
    "manifest and release readable by the runtime user, group continuon",
    "journal -p warning: no noise in normal operation",
    "journal -p info: the cycle (job started, ended, promoted)",
    "journal: structured fields (CT_EVENT=candidate_promoted, CT_RELEASE)",
    "reload re-reads the config (same MainPID)",
    "reload of a bad config: refused, old kept, journal says why",
    "SIGKILL during a job: restarted, recovers and trains again",
    "stop during a job: child stopped within TimeoutStopSec, cgroup empty",
    "SIGSTOP of the main process: watchdog kill and restart",
    "systemd-analyze security <= 2.0",
    "systemd-analyze verify: clean",
    "uninstall.sh: install removed, robot folders untouched",
]

results: list[dict] = []


class StopHere(Exception):
    """The check named in the share's stop_after file is recorded: the run ends there."""


def record(name: str, ok: bool, detail: str = "") -> None:
    """One check's outcome, written to the share at once."""
    assert name in CHECKS, name
    results.append({"name": name, "ok": bool(ok), "detail": detail[-3000:]})
    tmp = OUT / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, OUT / "results.json")
    print(f"[{uptime():7.1f}] {'PASS' if ok else 'FAIL'} {name}: {detail[:300]}", flush=True)
    stop = SHARE / "stop_after"
    if stop.exists() and stop.read_text().strip() == name:
        raise StopHere(name)


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def sh(cmd: str, timeout: float = 300) -> tuple[int, str]:
    """Run a shell command; (status, stdout+stderr)."""
    try:
        done = subprocess.run(
            cmd, shell=True, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return 124, f"timed out after {timeout}s: {cmd}\n{exc.stdout or ''}{exc.stderr or ''}"
    return done.returncode, done.stdout + done.stderr


def props(*names: str) -> dict[str, str]:
    _, out = sh(f"systemctl show {UNIT} " + " ".join(f"-p {n}" for n in names))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(what: str, pred: Callable[[], object], timeout: float, every: float = 2.0):
    """Poll ``pred`` until it returns something truthy; raise with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def status() -> dict:
    try:
        return json.loads(STATUS.read_text())
    except (OSError, ValueError):
        return {}


def job_step() -> int:
    job = status().get("job") or {}
    return int(job.get("step") or 0)


def decisions() -> list[dict]:
    return status().get("last_decisions") or []


def mono_us() -> int:
    return int(uptime() * 1e6)


def journal(since_us: int, *args: str) -> list[dict]:
    """Entries of the unit (daemon and systemd about it) after a monotonic mark."""
    _, out = sh(f"journalctl -b -u {UNIT} -o json --no-pager " + " ".join(args), timeout=120)
    entries = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if int(e.get("__MONOTONIC_TIMESTAMP", 0)) > since_us:
            entries.append(e)
    return entries


def messages(entries: list[dict]) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in entries]


def event_of(entry: dict) -> str:
    """The daemon's event name: the native CT_EVENT field, else from a JSON log line."""
    if entry.get("CT_EVENT"):
        return str(entry["CT_EVENT"])
    text = str(entry.get("MESSAGE", "")).lstrip("<0123456789>")
    try:
        return str(json.loads(text).get("event", ""))
    except (ValueError, AttributeError):
        return ""


def unit_pids() -> list[int]:
    cg = props("ControlGroup").get("ControlGroup", "")
    procs = Path("/sys/fs/cgroup") / cg.lstrip("/") / "cgroup.procs"
    if not cg or not procs.exists():
        return []
    return [int(p) for p in procs.read_text().split()]


def set_mode(mode: str) -> None:
    """continuonos' mode file (the gate needs idle); rewritten in place, owner kept."""
    (ROBOT / ".robot_mode").write_text(json.dumps({"mode": mode, "timestamp": time.time()}))


def drop_episodes(batch: str) -> int:
    """The robot runtime's user writes episodes beside the folder and renames them in.

    While driving, as a robot records: the gate stays closed until the whole batch is in.
    Dropping one by one takes minutes under emulation, and an idle robot would start a job on
    the first few episodes (seen: 1 held out, refused for too little evidence)."""
    set_mode("driving")
    n = 0
    for ep in sorted((SHARE / "batches" / batch).iterdir()):
        staged = STAGING / ep.name
        as_robot = f"runuser -u {ROBOT_USER} -- sh -c "
        cmd = f"umask 0027 && cp -r {shlex.quote(str(ep))} {staged} && mv {staged} {EPISODES}/"
        rc, out = sh(as_robot + shlex.quote(cmd))
        if rc:
            raise RuntimeError(f"dropping {ep.name} as {ROBOT_USER} failed: {out}")
        n += 1
    set_mode("idle")
    return n


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Path -> (mode, uid, gid, sha256 or link target) for everything under ``root``."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            what = "->" + os.readlink(p)
        elif p.is_file():
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            what = "dir"
        snap[str(p)] = (st.st_mode, st.st_uid, st.st_gid, what)
    return snap


# ---- phases: each records its own checks; an exception fails the check it was working on ----


def prepare_robot() -> None:
    """What continuonos set up before the trainer came: its folders, user, base, manifest."""
    sh("groupadd --system continuon")  # continuonos made it; sysusers must keep it
    sh(f"useradd --system -g continuon -M -d /nonexistent {ROBOT_USER}")
    sh(f"mkdir -p {ROBOT.parent} && cp -a {SHARE / 'robot'} {ROBOT}")
    STAGING.mkdir(parents=True, exist_ok=True)
    (ROBOT / "model" / "adapters").mkdir(parents=True, exist_ok=True)
    mode = {"mode": "idle", "timestamp": time.time()}
    (ROBOT / ".robot_mode").write_text(json.dumps(mode))
    # README "Install once": episodes readable by the group, model writable by it (setgid).
    for cmd in (
        f"chown -R {ROBOT_USER}:continuon {ROBOT}",
        f"chmod -R u+rwX,g+rX,o-rwx {ROBOT}",
        f"chmod 0750 {ROBOT} {ROBOT / 'rlds'}",
        f"chmod g+rwxs {ROBOT / 'model'} {ROBOT / 'model' / 'adapters'}",
        f"chmod 0664 {ROBOT / 'model' / 'manifest.json'}",
        f"chmod 0640 {ROBOT / '.robot_mode'}",
    ):
        rc, out = sh(cmd)
        if rc:
            raise RuntimeError(f"{cmd}: {out}")


def check_install() -> None:
    name = CHECKS[0]
    t0 = time.monotonic()
    # 2400 s: pip and `config check` (it imports torch) run 12-35x slower here, more on a
    # loaded host (1200 s ran out with the host at load 25).
    rc, out = sh(f"bash {SRC}/deploy/install.sh --wheelhouse {SHARE}/wheelhouse", timeout=2400)
    took = time.monotonic() - t0
    _, pipv = sh(f"{PREFIX}/venv/bin/python -m pip list --format=freeze 2>/dev/null")
    ok = rc == 0 and "continuon-trainer==" in pipv.replace("_", "-")
    record(name, ok, f"rc {rc} in {took:.0f}s; {out[-1500:]}")
    if not ok:
        raise RuntimeError("install failed: nothing else can run")
    # The operator edits the config (sudoedit) before the first start.
    ETC_CONFIG.write_bytes((SHARE / "trainer-vm.yaml").read_bytes())
    sh(f"chown root:continuon {ETC_CONFIG} && chmod 0640 {ETC_CONFIG}")

    name = CHECKS[1]
    _, ident = sh("id continuon-trainer")
    st = STATE.stat()
    _, owner = sh(f"stat -c '%U:%G %a' {STATE}")
    ok = "(continuon)" in ident and owner.strip() == "continuon-trainer:continuon 750"
    record(name, ok, f"{ident.strip()}; {STATE}: {owner.strip()} (uid {st.st_uid})")


def check_start() -> int:
    mark = mono_us()
    t0 = time.monotonic()
    rc, out = sh(f"systemctl enable --now {UNIT}", timeout=600)
    took = time.monotonic() - t0
    p = props(
        "ActiveState",
        "SubState",
        "StatusText",
        "MainPID",
        "ActiveEnterTimestampMonotonic",
        "ExecMainStartTimestampMonotonic",
        "NRestarts",
        "Type",
    )
    main = int(p.get("MainPID", "0"))
    exec_at = int(p.get("ExecMainStartTimestampMonotonic", "0"))
    active_at = int(p.get("ActiveEnterTimestampMonotonic", "0"))

    def logged_ready() -> int | None:
        return min(
            (
                int(e["__MONOTONIC_TIMESTAMP"])
                for e in journal(mark)
                if int(e.get("_PID", 0)) == main and event_of(e) == "ready"
            ),
            default=None,
        )

    try:  # at once under Type=notify; a Type=simple unit may return before the daemon is up
        ready_at = wait_for("the daemon's ready line", logged_ready, 300)
    except TimeoutError:
        ready_at = None
    # The daemon logs "ready" right after it sends READY=1, once it is set up: a Type=notify
    # unit turns active at that moment (the log line may reach journald a little later); a
    # Type=simple one is "active" the moment it forks, long before.
    slack = min(1_000_000, (ready_at - exec_at) // 2) if ready_at else 0
    ok = rc == 0 and ready_at is not None and active_at >= ready_at - slack
    record(
        CHECKS[2],
        ok,
        f"rc {rc} in {took:.1f}s; Type={p.get('Type')}; exec at {exec_at} us, 'ready' logged at "
        f"{ready_at} us, active at {active_at} us (slack {slack} us) {out}",
    )
    ok = (p.get("ActiveState"), p.get("SubState")) == ("active", "running") and bool(
        p.get("StatusText")
    )
    record(CHECKS[3], ok, json.dumps(p))
    return mark


def check_training(start_mark: int) -> None:
    n = drop_episodes("batch1")
    t0 = time.monotonic()
    promoted = wait_for(
        "a decision",
        lambda: next(
            (d for d in decisions() if d.get("verdict") in ("promoted", "rejected", "failed")),
            None,
        ),
        timeout=1500,
        every=3,
    )
    took = time.monotonic() - t0
    rel = promoted.get("release")
    ok = promoted.get("verdict") == "promoted" and bool(rel)
    record(
        CHECKS[4],
        ok,
        f"{n} episodes dropped as {ROBOT_USER}; decision after {took:.0f}s: {json.dumps(promoted)}"
        + ("" if ok else f"\nstatus: {json.dumps(status())[:1500]}"),
    )

    manifest = ROBOT / "model" / "manifest.json"
    current = ROBOT / "model" / "adapters" / "current"
    _, stats = sh(f"stat -c '%n %U:%G %a' {manifest} {current}/ {current}/*")
    reads = [
        f"runuser -u {ROBOT_USER} -- cat {manifest} >/dev/null",
        f"runuser -u {ROBOT_USER} -- cat {current}/adapter_model.safetensors >/dev/null",
    ]
    failed = [c for c in reads if sh(c)[0] != 0]
    m = json.loads(manifest.read_text()) if manifest.exists() else {}
    _, group = sh(f"stat -c %G {manifest}")
    ok = (
        not failed
        and group.strip() == "continuon"
        and bool(rel)
        and str(rel) in (os.readlink(current) if current.is_symlink() else "")
    )
    record(CHECKS[5], ok, f"{stats}\nunreadable: {failed}\nmanifest paths: {m.get('paths')}")

    warnings = journal(start_mark, "-p", "warning")
    record(CHECKS[6], not warnings, "\n".join(messages(warnings)) or "none")
    events = {event_of(e) for e in journal(start_mark, "-p", "info")}
    wanted = ["job_started", "job_ended", "candidate_promoted"]
    missing = [w for w in wanted if w not in events]
    record(CHECKS[7], not missing, f"missing {missing}" if missing else "all present")
    native = journal(start_mark, "CT_EVENT=candidate_promoted")
    ok = any(e.get("CT_RELEASE") == rel for e in native)
    record(
        CHECKS[8],
        ok,
        json.dumps([{k: v for k, v in e.items() if k.startswith("CT_")} for e in native])[:1500],
    )


def write_config(**job: object) -> None:
    text = (SHARE / "trainer-vm.yaml").read_text()
    for key, value in job.items():
        text = text.replace(f"  {key}: ", f"  {key}: {value}  # was ", 1)
    ETC_CONFIG.write_text(text)


def check_reload() -> None:
    main = props("MainPID")["MainPID"]
    mark = mono_us()
    # The next job runs long, so that stop and kill below find one running.
    write_config(max_steps=100000)
    rc, out = sh(f"systemctl reload {UNIT}", timeout=120)
    found = wait_for(
        "config_reloaded", lambda: [m for m in messages(journal(mark)) if "reloaded" in m], 120
    )
    same = props("MainPID")["MainPID"] == main
    record(CHECKS[9], rc == 0 and same and bool(found), f"rc {rc} {out}; same pid {same}; {found}")

    mark = mono_us()
    write_config(max_steps=-5)
    rc, out = sh(f"systemctl reload {UNIT}", timeout=120)
    why = wait_for(
        "reload_refused", lambda: [m for m in messages(journal(mark)) if "refused" in m], 120
    )
    p = props("MainPID", "ActiveState", "SubState")
    ok = p["MainPID"] == main and p["ActiveState"] == "active" and "max_steps" in why[0]
    record(CHECKS[10], ok, f"rc {rc}; {json.dumps(p)}; {why}")
    write_config(max_steps=100000)  # a good file again, for the restarts below


def wait_job_running(timeout: float = 900) -> int:
    return wait_for("a running job (step > 0)", job_step, timeout, every=2)


def wait_job_started(timeout: float = 900) -> dict:
    """A job child exists (it may still be importing torch: seconds under emulation)."""
    return wait_for("a job", lambda: status().get("job"), timeout, every=2)


def check_stop() -> None:
    """Stops the job the SIGKILL check left running (one torch import fewer under TCG)."""
    wait_job_running()
    main = int(props("MainPID")["MainPID"])
    children = [p for p in unit_pids() if p != main]
    t0 = time.monotonic()
    rc, out = sh(f"systemctl stop {UNIT}", timeout=300)
    took = time.monotonic() - t0
    p = props("ActiveState", "Result")
    left = unit_pids()
    alive = [c for c in children if Path(f"/proc/{c}").exists()]
    _, users = sh("pgrep -u continuon-trainer -a")
    ok = (
        rc == 0
        and took < TIMEOUT_STOP_S
        and p.get("Result") == "success"
        and children
        and not alive
        and not left
        and not users.strip()
    )
    record(
        CHECKS[12],
        ok,
        f"stop took {took:.1f}s (limit {TIMEOUT_STOP_S:g}); {json.dumps(p)}; children {children}, "
        f"alive {alive}; cgroup {left}; user's processes: {users.strip() or 'none'} {out}",
    )


def check_sigkill() -> None:
    drop_episodes("batch2")
    wait_job_started()
    before = props("NRestarts", "MainPID")
    sh(f"systemctl kill -s SIGKILL {UNIT}")

    def restarted():
        p = props("NRestarts", "ActiveState", "SubState", "MainPID")
        again = int(p["NRestarts"]) > int(before["NRestarts"]) and p["SubState"] == "running"
        return p if again else None

    p = wait_for("the restart after SIGKILL", restarted, 300)
    job = wait_job_started()
    record(CHECKS[11], True, f"before {before}; after {p}; a job again: {json.dumps(job)}")


def check_watchdog_after_stop() -> None:
    sh(f"systemctl start {UNIT}", timeout=600)
    check_watchdog()


def check_watchdog() -> None:
    before = props("NRestarts", "MainPID", "WatchdogUSec")
    mark = mono_us()
    sh(f"kill -STOP {before['MainPID']}")

    def restarted():
        p = props("NRestarts", "ActiveState", "SubState", "MainPID")
        again = int(p["NRestarts"]) > int(before["NRestarts"]) and p["SubState"] == "running"
        return p if again else None

    p = wait_for("the watchdog restart", restarted, 600, every=3)
    said = [m for m in messages(journal(mark)) if "atchdog" in m]
    ok = bool(said) and p["MainPID"] != before["MainPID"]
    record(CHECKS[13], ok, f"before {before}; after {p}; journal: {said}")


def check_analyze() -> None:
    rc, out = sh(f"systemd-analyze security {UNIT}", timeout=300)
    level = None
    for line in out.splitlines():
        if "Overall exposure level" in line:
            level = float(line.split(":", 1)[1].split()[0])
    (OUT / "security.txt").write_text(out)
    record(CHECKS[14], level is not None and level <= MAX_EXPOSURE, f"level {level}; rc {rc}")
    rc, out = sh(f"systemd-analyze verify /etc/systemd/system/{UNIT}", timeout=300)
    record(CHECKS[15], rc == 0 and not out.strip(), f"rc {rc}: {out.strip() or 'silent'}")


def check_uninstall() -> None:
    before = tree_snapshot(ROBOT)
    rc, out = sh(f"bash {SRC}/deploy/uninstall.sh", timeout=600)
    after = tree_snapshot(ROBOT)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    gone = [
        str(p)
        for p in (
            PREFIX,
            Path("/etc/systemd/system") / UNIT,
            Path("/etc/sysusers.d/continuon-trainer.conf"),
            Path("/etc/tmpfiles.d/continuon-trainer.conf"),
            Path("/usr/local/bin/continuon-trainer"),
        )
        if p.exists()
    ]
    _, state = sh(f"systemctl is-active {UNIT}")
    _, users = sh("pgrep -u continuon-trainer -a")
    ok = rc == 0 and not changed and not gone and not users.strip()
    record(
        CHECKS[16],
        ok,
        f"rc {rc}; left behind {gone}; robot files changed {changed[:10]}; unit {state.strip()}; "
        f"processes {users.strip() or 'none'}; {out[-800:]}",
    )


def main() -> int:
    OUT.mkdir(exist_ok=True)
    phases = [prepare_robot, check_install, check_start]
    mark = 0
    for phase in phases:
        try:
            value = phase()
            if phase is check_start:
                mark = value
        except StopHere:
            return 0
        except Exception:
            print(traceback.format_exc(), flush=True)
            return 1
    for phase in (
        lambda: check_training(mark),
        check_reload,
        check_sigkill,
        check_stop,
        check_watchdog_after_stop,
        check_analyze,
        check_uninstall,
    ):
        try:
            phase()
        except StopHere:
            break
        except Exception as exc:
            done = {r["name"] for r in results}
            first_open = next((c for c in CHECKS if c not in done), None)
            print(traceback.format_exc(), flush=True)
            if first_open:
                record(first_open, False, f"{type(exc).__name__}: {exc}")
    sh(f"journalctl -b -u {UNIT} -o json --no-pager > {OUT}/unit-journal.json")
    return 0 if all(r["ok"] for r in results) and len(results) == len(CHECKS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
