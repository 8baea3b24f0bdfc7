"""Hostile input at the daemon level: a slow writer, a truncated episode, an episode replaced
while read, a symlink swap out of the folder, a flood of episodes at once (1,000 here; 10,000 in
bench/bench_reliability.py), a garbage and a vanished mode file. The daemon stays up, its
memory stays bounded, its watchdog keeps being fed (a 10 s WATCHDOG_USEC), and every bad
episode is in the ledger with its reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability_harness import hostile_campaign, make_base

pytestmark = pytest.mark.slow

FLOOD = 10_000 if os.environ.get("RELIABILITY_FULL") == "1" else 1_000
RSS_GROWTH_LIMIT_MB = 100  # a generous bound: the daemon holds no episode in memory


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base"))


def test_hostile_input_keeps_the_daemon_up_and_every_reason(tmp_path, base):
    report = hostile_campaign(tmp_path, base, FLOOD)
    figures = report.as_dict()
    assert set(report.cases) == {
        "slow_writer",
        "truncated",
        "replaced_while_read",
        "symlink_swap",
        "mode_garbage",
        "mode_vanished",
        "flood",
    }, figures
    assert report.rejected_with_reason >= 2, figures
    assert report.rss_after_mb - report.rss_before_mb < RSS_GROWTH_LIMIT_MB, figures
    assert report.watchdog_pings > 0 and report.watchdog_misses == 0, figures
