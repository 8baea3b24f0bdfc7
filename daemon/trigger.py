"""When is there reason to train? A pure function of counts, clock and history (architecture §9)."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config import ServiceConfig


@dataclass(frozen=True)
class History:
    """What the service remembers about past jobs (monotonic seconds)."""

    last_job_end: float | None = None  # a job that ran to a decision (promoted or rejected)
    failures_in_a_row: int = 0  # invalid/crashed jobs since the last one that worked
    last_failure: float | None = None
    jobs_last_24h: int = 0


@dataclass(frozen=True)
class Trigger:
    """Whether to start a job now, and why (or why not)."""

    ready: bool
    reason: str


def backoff_s(failures: int, cfg: ServiceConfig) -> float:
    """Exponential back-off after failed jobs, capped."""
    if failures <= 0:
        return 0.0
    return min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** (failures - 1))


def trigger(
    new_valid: int, total_valid: int, now: float, history: History, cfg: ServiceConfig
) -> Trigger:
    """Decide whether enough new data and enough time since the last job warrant a job."""
    if total_valid < cfg.min_total_episodes:
        return Trigger(False, f"{total_valid} trainable episodes (need {cfg.min_total_episodes})")
    if new_valid < cfg.min_new_episodes:
        return Trigger(False, f"{new_valid} new episodes (need {cfg.min_new_episodes})")
    if history.failures_in_a_row and history.last_failure is not None:
        wait = history.last_failure + backoff_s(history.failures_in_a_row, cfg) - now
        if wait > 0:
            return Trigger(
                False,
                f"backing off after {history.failures_in_a_row} failed job(s): {wait:.0f} s left",
            )
    if history.last_job_end is not None:
        wait = history.last_job_end + cfg.cooldown_s - now
        if wait > 0:
            return Trigger(False, f"cooldown: {wait:.0f} s left")
    if cfg.max_jobs_per_day is not None and history.jobs_last_24h >= cfg.max_jobs_per_day:
        return Trigger(False, f"daily cap reached ({cfg.max_jobs_per_day} jobs in 24 h)")
    return Trigger(True, f"{new_valid} new episodes")
