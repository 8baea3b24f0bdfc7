"""``make bench``: run every bench/bench_*.py, print one table, write bench/out/report.json.

Each benchmark prints readable lines and, as its last stdout line, one JSON object
``{"figures": [{"name", "value", "unit", "target", "pass"}]}``. Extra arguments are passed on
(e.g. ``--full``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 4 * 3600  # the 1,000-kill campaign alone runs over an hour on 2 cores


def run_one(script: Path, extra: list[str]) -> tuple[list[dict], str]:
    """Run one benchmark; return its figures and an error (empty when it worked)."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(script), *extra],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            cwd=HERE.parent,
        )
    except subprocess.TimeoutExpired:
        return [], f"timed out after {TIMEOUT_S} s"
    print(done.stdout, end="")
    lines = [ln for ln in done.stdout.strip().splitlines() if ln.strip()]
    print(f"  ({script.name}: {time.monotonic() - start:.1f} s, exit {done.returncode})\n")
    if done.returncode != 0 or not lines:
        return [], f"exit {done.returncode}: {done.stderr.strip()[-400:]}"
    try:
        return json.loads(lines[-1])["figures"], ""
    except (ValueError, KeyError, TypeError):
        return [], "last line is not the figures JSON"


def fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> int:
    rows: list[dict] = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        figures, error = run_one(script, argv)
        if error:
            rows.append(
                {
                    "bench": script.stem,
                    "name": "(failed)",
                    "value": error,
                    "unit": "",
                    "target": "",
                    "pass": False,
                }
            )
        for fig in figures:
            rows.append({"bench": script.stem, **fig})
    header = ("bench", "figure", "value", "unit", "target", "pass")
    table = [
        (
            r["bench"].removeprefix("bench_"),
            r["name"],
            fmt(r["value"]),
            r.get("unit", ""),
            r.get("target", ""),
            {True: "PASS", False: "FAIL", None: "-"}[r.get("pass")],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in [header, *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten: {out / 'report.json'}")
    return 0 if all(r.get("pass") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
