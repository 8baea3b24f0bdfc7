"""Ledger growth over a robot's year: the real ``Ledger``, driven as the daemon drives it.

    .venv/bin/python bench/bench_ledger.py            # 365 days
    .venv/bin/python bench/bench_ledger.py --days 60  # shorter

Each day 30 new episodes arrive and 10 jobs train on the newest ``job.max_episodes`` (256); one
job in 20 is promoted. The same history runs twice: as shipped (each job's end drops the rows
no question needs, ``Ledger.record_job_end``) and keeping every job_episodes row, as the ledger
did before. Figures (last stdout line, JSON): the ledger's size both ways and their ratio
(target <= 0.25), the time ``record_job_end`` takes (median, p99), and the one-time
``Ledger.compact`` of the ledger that kept every row (what the first start after an upgrade
does).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from daemon.ledger import Ledger

EPISODES_PER_DAY = 30
JOBS_PER_DAY = 10
WINDOW = 256  # job.max_episodes' default
PROMOTED_SHARE = 0.05


def add_episodes(ledger: Ledger, first: int, n: int) -> None:
    for i in range(first, first + n):
        ledger.record(
            f"/rlds/episodes/ep{i:06d}",
            status="valid",
            signature=f"{i:x}",
            now=float(i),
            content_hash=f"{i:064x}",
            episode_id=f"ep{i:06d}",
            split="train",
            layout="A",
            n_steps=300,
        )


def year(folder: Path, days: int, compacting: bool) -> tuple[Ledger, list[float]]:
    """The history, run on a fresh ledger; the ledger (open) and each job end's seconds."""
    ledger = Ledger.open(folder / "ledger.sqlite3")
    if not compacting:
        ledger._compact = lambda *_: 0  # type: ignore[method-assign]  # keeps every row
    rng = random.Random(0)
    ends: list[float] = []
    episodes = 0
    for day in range(days):
        add_episodes(ledger, episodes, EPISODES_PER_DAY)
        episodes += EPISODES_PER_DAY
        for j in range(JOBS_PER_DAY):
            k = day * JOBS_PER_DAY + j
            run_id = f"run{k:06d}"
            ledger.record_job_start(
                run_id, float(k), [f"{i:064x}" for i in range(max(0, episodes - WINDOW), episodes)]
            )
            release = f"rel{k:06d}" if rng.random() < PROMOTED_SHARE else None
            start = time.perf_counter()
            ledger.record_job_end(
                run_id, "done", "promoted" if release else "rejected", release, k + 0.5
            )
            ends.append(time.perf_counter() - start)
    return ledger, ends


def size_mb(ledger: Ledger) -> float:
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in ledger.path.parent.iterdir()) / 1e6


def figure(name: str, value: float, unit: str, target: str = "", ok: bool | None = None) -> dict:
    return {
        "name": name,
        "value": round(float(value), 3),
        "unit": unit,
        "target": target,
        "pass": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--full", action="store_true", help="accepted; the default is full size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        shipped, ends = year(Path(a), args.days, compacting=True)
        every_row, _ = year(Path(b), args.days, compacting=False)
        small, big = size_mb(shipped), size_mb(every_row)
        del every_row._compact  # the shipped method again: the first start after an upgrade
        start = time.perf_counter()
        dropped = every_row.compact()
        once_s = time.perf_counter() - start
        caught_up = size_mb(every_row)  # freed pages stay in the file until reused
        same = shipped.new_valid_count() == every_row.new_valid_count()
        shipped.close()
        every_row.close()
    ends.sort()
    median_ms, p99_ms = statistics.median(ends) * 1e3, ends[int(len(ends) * 0.99)] * 1e3
    jobs = args.days * JOBS_PER_DAY
    print(
        f"{args.days} days, {args.days * EPISODES_PER_DAY} episodes, {jobs} jobs: ledger "
        f"{small:.1f} MB (every row kept: {big:.1f} MB, ratio {small / big:.3f}); record_job_end "
        f"median {median_ms:.1f} ms, p99 {p99_ms:.1f} ms; compact() once: {dropped} rows in "
        f"{once_s:.2f} s (file {caught_up:.1f} MB)"
    )
    print(
        json.dumps(
            {
                "figures": [
                    figure("ledger after the history", small, "MB"),
                    figure("ledger keeping every job row", big, "MB"),
                    figure("ledger size ratio", small / big, "", "<= 0.25", small / big <= 0.25),
                    figure("record_job_end median", median_ms, "ms"),
                    figure("record_job_end p99", p99_ms, "ms"),
                    figure("one-time compact after an upgrade", once_s, "s"),
                    figure(
                        "same answers after the one-time compact", float(same), "bool", "1", same
                    ),
                ]
            }
        )
    )


if __name__ == "__main__":
    main()
