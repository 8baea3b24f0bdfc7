"""How many autonomous minutes the health window needs to see a doubled intervention rate.

Monte Carlo over the daemon's own test (daemon.health.judge): the predecessor ran
``BASELINE_HOURS`` autonomous hours at ``rate`` interventions an hour; the new release runs at
twice that. For each window length, the share of simulated releases rolled back (the test's
power) at the configured confidence, and the share of same-rate releases wrongly rolled back.
Pure Python, a few seconds.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.health import HealthConfig, judge

BASELINE_HOURS = 20.0
TRIALS = 400


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method for small means, a normal approximation above 50."""
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def share_rolled_back(rate: float, factor: float, minutes: int, cfg: HealthConfig) -> float:
    """Share of simulated releases at ``factor`` x ``rate`` rolled back within ``minutes``
    (the window judged once a minute, as the daemon judges at every poll)."""
    rng = random.Random(1234)
    t_old = BASELINE_HOURS * 3600
    hits = 0
    for _ in range(TRIALS):
        old = {"autonomous_s": t_old, "interventions": poisson(rng, rate * BASELINE_HOURS)}
        x = 0
        for minute in range(1, minutes + 1):
            x += poisson(rng, factor * rate / 60)
            new = {"autonomous_s": minute * 60.0, "interventions": x}
            if judge(new, old, cfg).state == "rollback":
                hits += 1
                break
    return hits / TRIALS


def main() -> None:
    cfg = HealthConfig(confirm_after_autonomous_s=10**9)  # judged only on rates here
    figures = []
    for rate in (2.0, 6.0, 12.0):
        needed = None
        for minutes in (15, 30, 45, 60, 90, 120, 180, 240, 360):
            power = share_rolled_back(rate, 2.0, minutes, cfg)
            print(f"rate {rate:g}/h doubled, {minutes:>3} min: rolled back {power:.0%}")
            if power >= 0.8:
                needed = minutes
                break
        false = share_rolled_back(rate, 1.0, needed or 360, cfg)
        print(
            f"rate {rate:g}/h unchanged over {needed or 360} min: wrongly rolled back {false:.0%}"
        )
        figures.append(
            {
                "name": f"health: autonomous min to catch 2x of {rate:g}/h at 80% power",
                "value": needed,
                "unit": "min",
                "target": None,
                "pass": needed is not None,
            }
        )
        figures.append(
            {
                "name": f"health: false rollbacks at {rate:g}/h over that window",
                "value": round(false, 3),
                "unit": "share",
                "target": None,
                "pass": True,
            }
        )
    print(json.dumps({"figures": figures}))


if __name__ == "__main__":
    main()
