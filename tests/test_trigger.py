"""The trigger policy, one table of cases."""

from __future__ import annotations

import pytest

from daemon.config import ServiceConfig
from daemon.trigger import History, backoff_s, trigger

CFG = ServiceConfig(
    min_new_episodes=4,
    min_total_episodes=8,
    cooldown_s=100,
    backoff_initial_s=10,
    backoff_max_s=35,
    max_jobs_per_day=3,
)

CASES = [
    # (name, new, total, now, history, ready, reason substring)
    ("too few in total", 5, 7, 1000, History(), False, "7 trainable episodes (need 8)"),
    ("too few new", 3, 20, 1000, History(), False, "3 new episodes (need 4)"),
    ("enough", 4, 8, 1000, History(), True, "4 new episodes"),
    ("cooldown", 10, 20, 1050, History(last_job_end=1000), False, "cooldown: 50 s left"),
    ("cooldown over", 10, 20, 1100, History(last_job_end=1000), True, "10 new"),
    (
        "first back-off",
        10,
        20,
        1005,
        History(failures_in_a_row=1, last_failure=1000),
        False,
        "backing off after 1 failed job(s): 5 s left",
    ),
    (
        "back-off doubles",
        10,
        20,
        1015,
        History(failures_in_a_row=2, last_failure=1000),
        False,
        "5 s left",
    ),
    ("back-off capped", 10, 20, 1036, History(failures_in_a_row=9, last_failure=1000), True, ""),
    ("daily cap", 10, 20, 1000, History(jobs_last_24h=3), False, "daily cap reached"),
]


@pytest.mark.parametrize(
    ("name", "new", "total", "now", "history", "ready", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_trigger_table(name, new, total, now, history, ready, reason):
    t = trigger(new, total, now, history, CFG)
    assert t.ready is ready, t.reason
    assert reason in t.reason


def test_backoff_grows_and_caps():
    assert [backoff_s(n, CFG) for n in range(5)] == [0, 10, 20, 35, 35]
