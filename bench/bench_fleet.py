"""Benchmark a loopback fleet: bytes per round against the whole model, and round wall time.

    .venv/bin/python bench/bench_fleet.py [--robots 3] [--rounds 3] [--local-steps 200]

One ``fleet serve`` and N ``fleet join`` processes on 127.0.0.1 (``tests/fleet_world.py``),
robots sharing one base pretrained on a factory's slower driving, each with its own episodes
and a steering calibration the base lacks (bias 0.2, 0.25, 0.3, ...). Figures: the LoRA bytes one
robot sends per round (raw float32, and as Flower puts them on the wire), the whole model's
bytes (base + LoRA) and their ratio, one round's bytes for the whole fleet (each update up, the
aggregate down), the median and largest round wall time (fit and evaluate; most of it is the
job child's start, a fresh interpreter importing torch), and whether each robot's held-out
error of the last aggregate is below the base's. Last stdout line: the JSON figures object
(bench protocol). Without flwr it reports a skip.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def figure(name: str, value: object, unit: str, target: str = "", ok: bool | None = None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "pass": ok}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--robots", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=200)
    parser.add_argument("--hidden", default="64,64", help="the MLP's hidden sizes")
    parser.add_argument("--full", action="store_true", help="(bench protocol; same run)")
    args = parser.parse_args(argv)
    try:
        import flwr  # noqa: F401
    except ImportError:
        print("flwr not installed: pip install 'continuon-trainer[fleet]'")
        print(json.dumps({"figures": [figure("skipped: flwr not installed", 0, "")]}))
        return 0
    from tests.daemon_harness import make_root
    from tests.fleet_world import factory_base, fleet_status, free_port, make_robot, spawn

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        policy = {"policy": {"hidden": [int(h) for h in args.hidden.split(",")]}}
        base = factory_base(work / "factory", policy)
        port = free_port()
        extra = {"fleet": {"local_steps": args.local_steps, "max_run_s": 3000}, **policy}
        robots = [
            make_robot(work, f"robot-{i}", base, port, extra, "--seed", str(20 + i),
                       "--steering-bias", f"{0.2 + 0.05 * i:g}")
            for i in range(args.robots)
        ]  # fmt: skip
        server, _ = make_root(work / "server", {"fleet": {"server_address": f"127.0.0.1:{port}"}})
        t0 = time.monotonic()
        procs = [
            spawn(server, "fleet", "serve", "--rounds", str(args.rounds),
                  "--min-clients", str(args.robots))
        ]  # fmt: skip
        procs += [spawn(r, "fleet", "join") for r in robots]
        for p in procs:
            p.wait(timeout=3000)
        total_s = time.monotonic() - t0
        codes = [p.returncode for p in procs]
        log = fleet_status(server, "fleet-server.json").get("log", [])
        robot0 = fleet_status(robots[0])
        verdicts = [fleet_status(r).get("last_result") for r in robots]
    if codes[0] != 0 or not log:
        print(f"fleet failed: exit codes {codes}")
        print(json.dumps({"figures": [figure("(failed)", f"exit codes {codes}", "")]}))
        return 1
    walls = [r["wall_s"] for r in log if "wall_s" in r]
    wire = statistics.median(b for r in log for b in r.get("update_bytes", {}).values())
    raw, full = robot0.get("update_bytes", 0), robot0.get("full_model_bytes", 0)
    per_round = [
        sum(r.get("update_bytes", {}).values()) + wire * len(r.get("trained", [])) for r in log
    ]
    last = log[-1].get("heldout_mse", {})
    improved = [v["aggregate"] < v["base"] for v in last.values() if v.get("base") is not None]
    for r in log:
        print(
            f"round {r['round']}: {len(r.get('trained', []))} robots trained, "
            f"{r.get('wall_s', 0):.1f} s; held-out error (aggregate / base): "
            + ", ".join(
                f"{k} {v['aggregate']:.4g}/{v['base']:.4g}"
                for k, v in sorted(r.get("heldout_mse", {}).items())
            )
        )
    for robot, verdict in enumerate(verdicts):
        print(f"robot-{robot}: {verdict}")
    print(f"MLP hidden {args.hidden}; whole run {total_s:.1f} s; exit codes {codes}")
    figures = [
        figure("LoRA update per robot per round (float32)", raw, "bytes"),
        figure("LoRA update per robot per round (on the wire)", wire, "bytes"),
        figure("whole model (base + LoRA, float32)", full, "bytes"),
        figure("update / whole model", round(raw / full, 4) if full else 0, "ratio", "< 1",
               bool(full) and raw < full),
        figure(f"one round, {args.robots} robots (up + down)", statistics.median(per_round),
               "bytes"),
        figure("round wall time, median", round(statistics.median(walls), 2), "s"),
        figure("round wall time, max", round(max(walls), 2), "s"),
        figure("robots better than the base on their held-out (last round)",
               f"{sum(improved)}/{len(improved)}", "", "all", all(improved) and bool(improved)),
        figure("whole fleet run (start to last exit)", round(total_s, 1), "s"),
    ]  # fmt: skip
    print(json.dumps({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
