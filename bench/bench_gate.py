"""Cost of one gate poll: default sources, every source (fake sysfs + loopback HTTP), and each
source alone. Run: ``.venv/bin/python bench/bench_gate.py [--full]``.

The daemon polls ~1 Hz while idle/armed and 4 Hz during a job; its CPU share is poll cost x rate.
At 1 Hz every poll also takes a CPU-load sample (sample_interval_s = 1 s), so that case is
measured with a clock stepping 1 s per poll — the worst case, not an amortised one.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from gating import GateConfig, build_gate
from gating.sources import (
    PowerSupplySource,
    PsutilBatterySource,
    SignalsFileSource,
    own_tree,
)

STATUS = json.dumps(
    {"mode": "idle", "battery": {"available": True, "charge_percent": 80, "is_charging": False}}
).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(STATUS)))
        self.end_headers()
        self.wfile.write(STATUS)

    def log_message(self, *args: object) -> None:
        pass


class SteppingClock:
    """Monotonic clock that moves ``step`` seconds per call pair (one poll)."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step

    def monotonic(self) -> float:
        return self.t


def time_polls(gate, clock: SteppingClock | None, n: int) -> tuple[float, float]:
    """Mean and p95 wall time of one poll, in microseconds."""
    costs = []
    for _ in range(n):
        if clock is not None:
            clock.t += clock.step
        start = time.perf_counter()
        gate.poll()
        costs.append((time.perf_counter() - start) * 1e6)
    costs.sort()
    return statistics.fmean(costs), costs[int(0.95 * (len(costs) - 1))]


def main() -> int:
    n = 2000 if "--full" in sys.argv else 400
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / ".robot_mode").write_text(json.dumps({"mode": "idle", "timestamp": time.time()}))
        (root / "signals.json").write_text(
            json.dumps({"battery_percent": 80, "charging": False, "temp_c": 50})
        )
        zone = root / "thermal/thermal_zone0"
        zone.mkdir(parents=True)
        (zone / "type").write_text("cpu-thermal\n")
        (zone / "temp").write_text("51000\n")
        bat = root / "power_supply/BAT0"
        bat.mkdir(parents=True)
        for name, text in (("type", "Battery"), ("capacity", "80"), ("status", "Discharging")):
            (bat / name).write_text(text + "\n")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/api/status"

        default = GateConfig(
            mode_file=root / ".robot_mode", signals_file=root / "signals.json", disk={"path": root}
        )
        every = GateConfig(
            mode_file=root / ".robot_mode",
            signals_file=root / "signals.json",
            status_url=url,
            thermal_root=root / "thermal",
            power_supply_root=root / "power_supply",
            temperature={"need": "required", "source": "sysfs"},
            battery={"need": "required", "source": "status_http"},
            runtime={"need": "required"},
            disk={"path": root},
        )
        pid = os.getpid()
        print(f"{n} polls each; {len(psutil.pids())} processes on this machine")
        rows = []
        for label, cfg, step in (
            ("default sources, 1 Hz (a load sample every poll)", default, 1.0),
            ("default sources, 4 Hz (a load sample every 4th poll)", default, 0.25),
            ("every source, 1 Hz (HTTP asked every 2nd poll)", every, 1.0),
        ):
            clock = SteppingClock(step)
            gate = build_gate(cfg, pid, clock.monotonic)
            for _ in range(5):
                gate.poll()
            mean, p95 = time_polls(gate, clock, n)
            rows.append((label, mean, p95, 1.0 / step))
            print(f"  {label:55s} mean {mean:7.0f} us  p95 {p95:7.0f} us")

        print("one source alone (read() cost; load with a sample every read, HTTP uncached):")
        clock = SteppingClock(1.0)
        sources = {
            **build_gate(every, pid, clock.monotonic).sources,
            "signals_file": SignalsFileSource(root / "signals.json", 30.0, time.time),
            "power_supply": PowerSupplySource(root / "power_supply", []),
            "psutil_battery": PsutilBatterySource(),
        }
        sources["status_http"].refresh_s = 0.0
        for key, source in sources.items():
            start = time.perf_counter()
            for _ in range(n // 4):
                clock.t += 1.0
                source.read()
            print(f"  {key:14s} {(time.perf_counter() - start) / (n // 4) * 1e6:7.0f} us")
        start = time.perf_counter()
        for _ in range(50):
            own_tree(pid)
        tree_us = (time.perf_counter() - start) / 50 * 1e6
        start = time.perf_counter()
        for _ in range(50):
            psutil.Process(pid).children(recursive=True)
        scan_us = (time.perf_counter() - start) / 50 * 1e6
        print(f"  own tree via /proc children {tree_us:.0f} us vs psutil scan {scan_us:.0f} us")
        server.shutdown()
        server.server_close()

    default_1hz = rows[0]
    figures.append(
        {
            "name": "gate_poll_default_1hz_us",
            "value": round(default_1hz[1], 1),
            "unit": "us",
            "target": "< 2000",
            "pass": default_1hz[1] < 2000,
        }
    )
    share = default_1hz[1] * 1e-6 * 1.0 * 100
    figures.append(
        {
            "name": "gate_cpu_share_1hz_percent",
            "value": round(share, 4),
            "unit": "% of one core",
            "target": "< 0.2",
            "pass": share < 0.2,
        }
    )
    share4 = rows[1][1] * 1e-6 * 4.0 * 100
    figures.append(
        {
            "name": "gate_cpu_share_4hz_percent",
            "value": round(share4, 4),
            "unit": "% of one core",
            "target": "< 0.5",
            "pass": share4 < 0.5,
        }
    )
    figures.append(
        {
            "name": "gate_poll_all_sources_1hz_us",
            "value": round(rows[2][1], 1),
            "unit": "us",
            "target": "< 2000",
            "pass": rows[2][1] < 2000,
        }
    )
    print(f"implied CPU share: {share:.3f} % of a core at 1 Hz, {share4:.3f} % at 4 Hz")
    print(json.dumps({"figures": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
