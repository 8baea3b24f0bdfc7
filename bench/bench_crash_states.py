"""Power-cut crash states, full size: every operation that must survive one, both models.

    .venv/bin/python bench/bench_crash_states.py [--combos N] [--quick]

Each operation (promotion, first promotion, manual rollback, prune, legacy adoption, the status
file, ledger WAL commits, a checkpoint replacing another) runs for real under strace; every crash
state the ``ordered`` and ``strict`` persistence models allow (tests/crashstates/model.py) is
materialised and the real recovery path is run on it. ``--combos`` caps the strict states per
crash point (default 400; ``--quick``: the make-test 6) and, at full size, every subset of up to
6 unsynced writes of one file is tried (4 in make test). Target: >= 10,000 distinct states, 0
violations. Needs strace. Last stdout line: the figures JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.crashstates import model as fsmodel  # noqa: E402
from tests.crashstates.runner import run_scenario  # noqa: E402
from tests.crashstates.scenarios import SCENARIOS  # noqa: E402
from tests.crashstates.trace import have_strace  # noqa: E402


def figure(name: str, value: float, unit: str, target: str, ok: bool | None) -> dict:
    return {"name": name, "value": float(value), "unit": unit, "target": target, "pass": ok}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--combos", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="the make-test sizes")
    parser.add_argument("--full", action="store_true", help="accepted; the default is full size")
    args = parser.parse_args(argv)
    combos = 6 if args.quick else args.combos
    if not args.quick:
        fsmodel.MAX_SUBSET_WRITES = 6  # every subset of up to 6 unsynced writes of one file
    if not have_strace():
        print("strace not installed: crash states not checked")
        print(json.dumps({"figures": [figure("crash states checked", 0, "", ">= 10000", None)]}))
        return 0
    t0 = time.monotonic()
    figures, total, violations = [], 0, 0
    print(f"{'operation':<16} {'events':>6} {'ordered':>8} {'strict':>8} {'violations':>10}")
    for name in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="crashstates-") as work:
            report = run_scenario(name, Path(work), max_combos=combos)
        n = sum(report.states.values())
        total += n
        violations += len(report.violations)
        print(
            f"{name:<16} {report.events:>6} {report.states['ordered']:>8} "
            f"{report.states['strict']:>8} {len(report.violations):>10}   ({report.seconds:.0f} s)"
        )
        for v in report.violations[:5]:
            print("   ", v)
        for model, count in report.states.items():
            figures.append(figure(f"crash states {name} {model}", count, "", "> 0", count > 0))
    target = 10 if args.quick else 10_000
    figures.append(figure("crash states checked", total, "", f">= {target}", total >= target))
    figures.append(figure("crash-state violations", violations, "", "0", violations == 0))
    figures.append(figure("crash-state bench time", time.monotonic() - t0, "s", "", None))
    print(f"total {total} distinct crash states, {violations} violations")
    print(json.dumps({"figures": figures}))
    return 0 if violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
