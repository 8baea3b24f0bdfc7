"""Why the daemon is not training, said once per change, and a running job's progress.

The service hands :class:`HoldLog` the reason it is holding at every loop iteration; the
journal gets one ``not_training`` event when a reason starts holding and again when it changes
(never every second). The level fits who must act: waiting for data, settling episodes, a
cooldown or a closed gate are normal operation (``info``); a missing base, a manifest for
another model, an unusable store or failing jobs need an operator (``warning`` or ``error``).

:class:`ProgressLog` turns the child's progress into a ``job_progress`` line every few seconds:
step, loss, samples/s and an ETA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# (message prefix, kind, level) for what only an operator can fix; first match wins.
BLOCKED_KINDS = (
    ("no base policy", "no_base", "warning"),
    ("the manifest names", "manifest_model", "warning"),
    ("the manifest has no model_name", "manifest_model", "warning"),
    ("the manifest's safety block", "manifest_safety", "warning"),
    ("adapter store", "store_unusable", "error"),
    ("no usable", "episodes_unusable", "warning"),
)
# (trigger reason pattern, kind, level) for the trigger's own reasons.
TRIGGER_KINDS = (
    (r"trainable episodes \(need", "too_few_episodes", "info"),
    (r"new episodes \(need", "waiting_for_new_episodes", "info"),
    (r"^backing off", "backing_off", "warning"),
    (r"^cooldown", "cooldown", "info"),
    (r"^daily cap", "daily_cap", "info"),
)
_COUNTDOWN = re.compile(r": \d+ s left")


@dataclass(frozen=True)
class Hold:
    """One reason for not training: a stable kind, the sentence, the log level."""

    kind: str
    message: str
    level: str = "info"

    @property
    def key(self) -> tuple[str, str]:
        """What must change for the journal to hear again (countdowns do not count)."""
        return self.kind, _COUNTDOWN.sub("", self.message)


def blocked_hold(message: str) -> Hold:
    """A hold for something an operator must fix (the service's ``blocked`` sentence)."""
    for prefix, kind, level in BLOCKED_KINDS:
        if message.lower().startswith(prefix) or prefix in message.lower():
            return Hold(kind, message, level)
    return Hold("blocked", message, "warning")


def trigger_hold(reason: str, settling: int = 0) -> Hold:
    """A hold from the trigger's reason; settling episodes are named when they are why."""
    for pattern, kind, level in TRIGGER_KINDS:
        if re.search(pattern, reason):
            if settling and kind in ("too_few_episodes", "waiting_for_new_episodes"):
                return Hold("settling", f"{reason}; {settling} still settling", "info")
            return Hold(kind, reason, level)
    return Hold("waiting", reason, "info")


def gate_hold(summary: str) -> Hold:
    """A closed gate: normal operation (the gate logs its own changes, with their readings)."""
    return Hold("gate_closed", f"gate {summary}", "info")


class HoldLog:
    """Logs a hold when it starts and when it changes; ``clear`` when a job starts."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.current: Hold | None = None
        self._key: tuple[str, str] | None = None

    def update(self, hold: Hold | None, **fields: Any) -> None:
        """Say ``hold`` if it differs from the last one said."""
        key = None if hold is None else hold.key
        if hold is not None and hold.kind == "gate_closed":
            key = (hold.kind, "")  # the gate logs its own changes; say the hold once
        if key == self._key:
            self.current = hold
            return
        self._key, self.current = key, hold
        if hold is not None:
            getattr(self.log, hold.level)(
                "not_training", kind=hold.kind, reason=hold.message, **fields
            )


class ProgressLog:
    """A ``job_progress`` line at most every ``every_s`` seconds while a job trains."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last: tuple[float, int] | None = None  # (monotonic, step) of the last line
        self._job: str | None = None

    def maybe_log(
        self,
        log: Any,
        job_id: str,
        step: int,
        max_steps: int,
        loss: float | None,
        phase: str,
        now: float,
        batch_size: int,
    ) -> bool:
        """Log one line when ``every_s`` passed since the last one of this job; True if it did."""
        if job_id != self._job:
            self._job, self._last = job_id, (now, step)
            return False
        assert self._last is not None
        t0, step0 = self._last
        if now - t0 < self.every_s:
            return False
        steps_per_s = (step - step0) / (now - t0) if now > t0 else 0.0
        eta = (max_steps - step) / steps_per_s if steps_per_s > 0 and max_steps else None
        log.info(
            "job_progress",
            job_id=job_id,
            phase=phase,
            step=step,
            max_steps=max_steps,
            loss=None if loss is None else round(loss, 6),
            samples_per_s=round(steps_per_s * batch_size, 1),
            eta_s=None if eta is None else round(eta),
        )
        self._last = (now, step)
        return True
