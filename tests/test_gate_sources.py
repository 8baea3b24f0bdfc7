"""Signal sources against stand-ins for the hardware: a fake sysfs tree, a real loopback HTTP
server, real busy processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from gating import GateConfig, build_gate
from gating.sources import CpuLoadSource, own_tree

STATUS_8081 = {
    "mode": "idle",
    "allow_motion": False,
    "gate_snapshot": {},
    "battery": {
        "available": True,
        "voltage_v": 11.9,
        "current_ma": -120.0,
        "charge_percent": 74.0,
        "is_charging": True,
        "time_remaining_min": None,
        "needs_charging": False,
    },
}
STATUS_8080 = {"success": True, "status": {"mode": "sleep_learning", "mode_duration": 12.0}}


class StatusServer:
    """A continuonos-like status endpoint on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self) -> None:
        self.payload: object = STATUS_8081
        self.delay_s = 0.0
        self.code = 200
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                body = json.dumps(outer.payload).encode()
                self.send_response(outer.code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/status"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def status() -> Iterator[StatusServer]:
    server = StatusServer()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_790_000_000.0 + self.t


def only(**signals: object) -> dict:
    """A gate: section with every signal off except those given."""
    off = {s: {"need": "off"} for s in ("mode", "battery", "temperature", "load", "memory", "disk")}
    return {"open_after_s": 0.0, "min_closed_s": 0.0, **off, **signals}


def poll(cfg: dict, clock: Clock | None = None, pid: int | None = None):
    clock = clock or Clock()
    gate = build_gate(
        GateConfig.model_validate(cfg), pid or os.getpid(), clock.monotonic, clock.wall
    )
    return gate.poll()


# --- loopback status endpoint -------------------------------------------------------------


def test_status_8081_gives_battery_mode_and_liveness(status: StatusServer) -> None:
    cfg = only(
        status_url=status.url,
        mode={"source": "status_http"},
        battery={"need": "required", "source": "status_http"},
        runtime={"need": "required"},
    )
    decision = poll(cfg)
    assert decision.open, decision.summary()
    assert decision.readings["battery"].value == {"percent": 74.0, "charging": True}
    assert decision.readings["mode"].value == "idle"
    assert decision.readings["runtime"].value is True


def test_status_8080_shape(status: StatusServer) -> None:
    status.payload = STATUS_8080
    cfg = only(status_url=status.url, mode={"source": "status_http"}, runtime={"need": "required"})
    decision = poll(cfg)
    assert decision.open and decision.readings["mode"].value == "sleep_learning"


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (
            {"battery": {"available": False, "error": "INA219 not found"}},
            200,
            "{url}: battery unavailable (INA219 not found)",
        ),
        ({"mode": "idle"}, 200, "{url}: no battery in the answer"),
        (
            {"battery": {"charge_percent": "lots"}},
            200,
            "{url}: battery percent 'lots' is not a number",
        ),
        ({"success": False, "status": {}}, 200, "{url}: answer says success: false"),
        (STATUS_8081, 500, "{url}: HTTP 500"),
        ("not an object", 200, "{url}: answer is not a JSON object"),
    ],
    ids=["unavailable", "absent", "garbage", "unsuccessful", "http-500", "not-object"],
)
def test_status_battery_problems_close_a_required_battery(
    status: StatusServer, payload: object, code: int, reason: str
) -> None:
    status.payload, status.code = payload, code
    decision = poll(
        only(status_url=status.url, battery={"need": "required", "source": "status_http"})
    )
    assert not decision.open
    assert decision.reasons == [reason.format(url=f"status endpoint {status.url}")]


def test_status_timeout_closes_without_blocking_past_the_timeout(status: StatusServer) -> None:
    status.delay_s = 1.5
    cfg = only(status_url=status.url, status_timeout_s=0.2, runtime={"need": "required"})
    started = time.monotonic()
    decision = poll(cfg)
    took = time.monotonic() - started
    assert not decision.open
    assert decision.reasons == [f"status endpoint {status.url}: no answer within 0.2 s"]
    assert took < 1.0, f"poll blocked {took:.2f} s"


def test_status_refused_closes(status: StatusServer) -> None:
    url = status.url
    status.close()
    decision = poll(only(status_url=url, runtime={"need": "required"}))
    assert not decision.open
    assert decision.reasons[0].startswith(f"status endpoint {url}: ")


def test_status_is_cached_between_polls(status: StatusServer) -> None:
    clock = Clock()
    cfg = only(status_url=status.url, status_refresh_s=2.0, runtime={"need": "required"})
    gate = build_gate(GateConfig.model_validate(cfg), os.getpid(), clock.monotonic, clock.wall)
    for tick in range(25):  # 2.4 s of 0.1 s polls: asked at 0.0 and 2.0 only
        clock.t = tick / 10
        decision = gate.poll()
    assert status.hits == 2
    assert decision.readings["runtime"].age_s == pytest.approx(0.4)


def test_status_optional_and_dead_is_only_noted(status: StatusServer) -> None:
    status.delay_s = 1.0
    cfg = only(status_url=status.url, status_timeout_s=0.1, runtime={"need": "optional"})
    decision = poll(cfg)
    assert decision.open
    assert decision.notes == [
        f"runtime (optional): status endpoint {status.url}: no answer within 0.1 s"
    ]


# --- fake sysfs -------------------------------------------------------------------------


def make_zone(root: Path, n: int, kind: str, millideg: str) -> Path:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millideg + "\n")
    return zone


@pytest.mark.parametrize(
    ("zones", "value"),
    [(["cpu-thermal"], 51.2), (["thermal_zone1"], 88.0), (["soc_thermal", "cpu-thermal"], 51.2)],
)
def test_thermal_zone_selection_by_type_or_name(
    tmp_path: Path, zones: list[str], value: float
) -> None:
    make_zone(tmp_path, 0, "cpu-thermal", "51200")
    make_zone(tmp_path, 1, "gpu-thermal", "88000")  # hot, but not chosen unless named
    make_zone(tmp_path, 2, "soc_thermal", "40000")
    cfg = only(
        thermal_root=tmp_path,
        thermal_zones=zones,
        temperature={"need": "required", "source": "sysfs"},
    )
    decision = poll(cfg)
    assert decision.readings["temperature"].value == value
    assert decision.open is (value < 75)


def test_thermal_selector_matching_nothing_closes(tmp_path: Path) -> None:
    make_zone(tmp_path, 0, "x86_pkg_temp", "40000")
    cfg = only(thermal_root=tmp_path, temperature={"need": "required", "source": "sysfs"})
    assert poll(cfg).reasons == [
        f"no thermal zone matches 'cpu-thermal' under {tmp_path} "
        "(found: thermal_zone0 (x86_pkg_temp))"
    ]


def make_supply(root: Path, name: str, kind: str, capacity: str | None, state: str) -> None:
    sup = root / name
    sup.mkdir(parents=True)
    (sup / "type").write_text(kind + "\n")
    if capacity is not None:
        (sup / "capacity").write_text(capacity + "\n")
    (sup / "status").write_text(state + "\n")


@pytest.mark.parametrize(
    ("capacity", "state", "reasons", "notes"),
    [
        ("80", "Discharging", [], []),
        ("30", "Discharging", ["battery 30 % < 40 % floor"], []),
        ("30", "Charging", [], ["battery 30 % low but charging"]),
        ("30", "Not charging", ["battery 30 % < 40 % floor"], []),
        (None, "Discharging", ["power supply BAT0: No such file or directory"], []),
        ("lots", "Discharging", ["power supply BAT0: not a number"], []),
    ],
)
def test_sysfs_power_supply(
    tmp_path: Path, capacity: str | None, state: str, reasons: list[str], notes: list[str]
) -> None:
    make_supply(tmp_path, "AC", "Mains", None, "")
    make_supply(tmp_path, "BAT0", "Battery", capacity, state)
    cfg = only(power_supply_root=tmp_path, battery={"need": "required", "source": "sysfs"})
    decision = poll(cfg)
    assert decision.reasons == reasons
    assert decision.notes == notes


def test_sysfs_without_a_battery_closes_a_required_battery(tmp_path: Path) -> None:
    make_supply(tmp_path, "AC", "Mains", None, "")
    cfg = only(power_supply_root=tmp_path, battery={"need": "required", "source": "sysfs"})
    assert poll(cfg).reasons == [f"no power supply matches type Battery under {tmp_path}"]


def test_psutil_battery_reads_or_says_there_is_none() -> None:
    decision = poll(only(battery={"need": "required", "source": "psutil"}))
    if psutil.sensors_battery() is None:
        assert decision.reasons == ["psutil reports no battery"]
    else:
        assert 0 <= decision.readings["battery"].value["percent"] <= 100


# --- signals file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "mtime_age", "reason"),
    [
        ({"battery_percent": 80, "timestamp": -31}, 0, "stale: 31 s old > 30 s"),
        ({"battery_percent": 80}, 31, "stale: 31 s old > 30 s"),
        ({"battery_percent": 80, "timestamp": 60}, 0, "timestamp 60 s in the future"),
        (
            {"battery_percent": 140, "timestamp": 0},
            0,
            "battery percent 140 out of range 0-100",
        ),
        ({"battery_percent": True, "timestamp": 0}, 0, "battery percent True is not a number"),
        ({"charging": True, "timestamp": 0}, 0, 'has no "battery_percent"'),
    ],
    ids=["stale-timestamp", "stale-mtime", "future", "out-of-range", "bool", "absent"],
)
def test_signals_file_battery_problems(
    tmp_path: Path, body: dict, mtime_age: float, reason: str
) -> None:
    clock = Clock()
    wall = clock.wall()
    if "timestamp" in body:
        body["timestamp"] += wall  # the table writes it as an offset from now
    path = tmp_path / "signals.json"
    path.write_text(json.dumps(body))
    os.utime(path, (wall - mtime_age, wall - mtime_age))
    decision = poll(only(signals_file=path, battery={"need": "required"}), clock)
    assert not decision.open
    (got,) = decision.reasons
    assert got.startswith(f"signals file {path}") and got.endswith(reason)


def test_signals_file_can_carry_the_mode(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "signals.json"
    path.write_text(json.dumps({"mode": "manual_training", "timestamp": clock.wall()}))
    decision = poll(only(signals_file=path, mode={"source": "signals_file"}), clock)
    assert decision.reasons == ["teleop (manual_training)"]


# --- psutil: memory, disk, CPU load of other processes -------------------------------------


def test_memory_and_disk_thresholds(tmp_path: Path) -> None:
    roomy = poll(only(memory={"min_available_mb": 1}, disk={"path": tmp_path, "min_free_mb": 1}))
    assert roomy.open and roomy.readings["disk"].value > 1
    short = poll(
        only(memory={"min_available_mb": 1e9}, disk={"path": tmp_path, "min_free_mb": 1e12})
    )
    assert short.reasons[0].startswith("available memory ")
    assert short.reasons[1].startswith("free disk ") and short.reasons[1].endswith(f"at {tmp_path}")
    missing = poll(only(disk={"path": tmp_path / "nope"}))
    assert missing.reasons == [f"free disk at {tmp_path / 'nope'}: No such file or directory"]


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_own_tree_includes_grandchildren() -> None:
    sleeper = "import time; time.sleep(30)"
    child = spawn(f"import subprocess, sys; subprocess.run([sys.executable, '-c', {sleeper!r}])")
    try:
        deadline = time.monotonic() + 5
        while len(own_tree(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = own_tree(os.getpid())
        assert {os.getpid(), child.pid} <= tree
        assert len(tree - {os.getpid(), child.pid}) >= 1  # the grandchild
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def test_own_tree_cpu_counts_live_and_reaped_children() -> None:
    """CPU seconds, not shares, so other load on the machine cannot disturb it."""
    source = CpuLoadSource(os.getpid(), window_s=5, interval_s=1, monotonic=time.monotonic)
    before = source.tree_cpu_s()
    busy = spawn("while True: pass")
    try:
        # Wait for CPU time, not wall time: on a loaded machine a busy child may get only a
        # few ms of CPU in a second. Bounded generously; the claim checked is unchanged.
        deadline = time.monotonic() + 120
        while cpu_s(busy.pid) < 0.2:
            assert time.monotonic() < deadline, "the busy child got no CPU time in 120 s"
            time.sleep(0.05)
        # The child's time first, then the tree's: the tree's reading can only be larger.
        busy_cpu = cpu_s(busy.pid)
        mid = source.tree_cpu_s()
        assert mid - before >= 0.9 * busy_cpu >= 0.18
    finally:
        busy.kill()
        busy.wait()
    # Exited and reaped: its time moves into our children_user/system and is still ours.
    short = spawn(
        "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    )
    short.wait()
    after = source.tree_cpu_s()
    assert after - mid >= 0.25


def test_someone_elses_busy_process_closes_the_gate() -> None:
    idle = spawn("import time; time.sleep(30)")  # stands in for the daemon: not the busy one
    busy = spawn("while True: pass")
    try:
        cfg = only(load={"max_other_cpu_percent": 5, "sample_interval_s": 0.5})
        gate = build_gate(GateConfig.model_validate(cfg), idle.pid)
        first = gate.poll()
        assert first.reasons == ["cpu load: measuring (needs a second sample)"]
        time.sleep(1.0)
        decision = gate.poll()
        assert not decision.open
        assert decision.reasons[0].startswith("other processes use ")
        assert decision.readings["load"].value > 5
    finally:
        for proc in (idle, busy):
            proc.kill()
            proc.wait()
