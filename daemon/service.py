"""The service loop (architecture §9): one thread that scans, gates, runs one job at a time
and promotes.

States: idle -> armed (data ready, waiting for the gate) -> training -> evaluating -> promoting ->
cooldown; a preempted job goes back to armed and resumes from its checkpoint. Each iteration:
wait for the watcher or the poll interval, rescan when something changed, poll the gate, advance
the state, publish status (file + sd_notify STATUS), ping the watchdog. Slow work (training,
evaluation) happens in the child; this loop only ever waits a fraction of a second.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import hashlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from daemon import heap
from daemon.config import ConfigError, TrainerConfig, load_config
from daemon.cycle import Verdict, baseline_of, judge, plan_job
from daemon.health import HealthWatch, legacy_baseline_note
from daemon.holding import HoldLog, ProgressLog, blocked_hold, gate_hold, trigger_hold
from daemon.ingest import bounds_check, scan
from daemon.instance import AlreadyRunning, take_instance_lock
from daemon.ledger import Ledger, LedgerError
from daemon.lineage import risk_reason
from daemon.logs import configure_logging, get_logger
from daemon.metrics import gather, write_textfile
from daemon.notify import Notifier
from daemon.precheck import manifest_model_mismatch, read_manifest
from daemon.runs import (
    clean_runs,
    clear_waiting,
    load_waiting,
    resumable_checkpoint,
    save_waiting,
)
from daemon.snapshot import decision_entry, job_view, status_line
from daemon.status import (
    episode_states,
    format_episodes,
    remove_stale_state_temps,
    write_status,
)
from daemon.store import AdapterStore, StoreError, utc_stamp
from daemon.supervisor import JobSupervisor, Outcome, reap_orphan
from daemon.trigger import History, trigger
from daemon.watcher import EpisodeWatcher
from gating import Gate, GateDecision, build_gate
from safety.config import SafetyConfig, merge_manifest_safety
from trainer_core.basefile import base_weights_file
from trainer_core.spec import JobResult, JobSpec

DAY_S = 86_400.0
STATUS_EVERY_S = 1.0  # progress alone rewrites the status file at most this often
SCAN_SLICE_S = 1.0  # one scan processes new episodes for at most this long ...
SCAN_SLICE_JOB_S = 0.1  # ... or this long while a job runs (the gate is polled every 0.25 s)
WATCHERLESS_RESCAN_S = 5.0  # full rescans this often while the watcher is down
STORE_RETRY_S = 30.0  # how often an unusable adapter store is looked at again

__all__ = ["AlreadyRunning", "Phase", "Service", "once_command", "run_command"]


def features_fingerprint(cfg: TrainerConfig) -> str:
    """What the features verdicts in the ledger were made under (daemon.ledger UNUSABLE)."""
    return hashlib.sha256(cfg.features.model_dump_json().encode()).hexdigest()[:16]


class Phase(StrEnum):
    IDLE = "idle"
    ARMED = "armed"
    TRAINING = "training"
    EVALUATING = "evaluating"
    PROMOTING = "promoting"
    COOLDOWN = "cooldown"
    STOPPING = "stopping"


class Service:
    """The daemon. ``start()``, then ``run()`` until a stop is requested (or ``tick()`` by hand)."""

    def __init__(
        self,
        cfg: TrainerConfig,
        config_path: Path | None,
        environ: Mapping[str, str],
        *,
        force: bool = False,
        test_hooks: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._config_path = config_path
        self._cli_root = str(cfg.root)
        self._force = force
        self._test_hooks = test_hooks
        self._monotonic = monotonic
        self._wall = wall
        self.log = get_logger()
        self.holds = HoldLog(self.log)
        self.progress_log = ProgressLog(cfg.logging.progress_every_s)
        self._settling = 0
        self._metrics_error: str | None = None
        self.notifier = Notifier(environ, os.getpid(), monotonic)
        self.supervisor = JobSupervisor(cfg.state_dir, environ, monotonic=monotonic)
        self.phase = Phase.IDLE
        self.reason = "starting"
        self.history = History()
        self.decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=10)
        self.gate_decision: GateDecision | None = None
        # A finished candidate that passed the rule while the gate was closed: it waits, and
        # is judged again (against the release current then) once the gate opens. Named in
        # state/pending.json while it waits, so it survives a restart (daemon.runs).
        self.pending: Outcome | None = None
        self._pending_saved = False
        self.jobs_started: collections.deque[float] = collections.deque()
        self.counts: dict[str, int] = {}
        self.stop_requested = False
        self._reload_requested = False
        self._stalled = False
        self._next_rescan = float("-inf")
        self._last_status_write = float("-inf")
        self._last_status_key: tuple[Any, ...] | None = None
        self._cooldown_until = 0.0
        self._gate_open: bool | None = None
        # Something only an operator can fix (a broken manifest, no base policy): the daemon
        # stays up, says so in its status, and neither trains nor promotes meanwhile.
        self.blocked: str | None = None
        self.store_error: str | None = None
        self.ledger_error: str | None = None  # the ledger failed to read or write (SD card)
        self._store_checked_at = float("-inf")
        self._scan_error: str | None = None
        self.rescanning = True  # until a scan has gone through the whole folder
        # Opened in start(): these need I/O.
        self.ledger: Ledger
        self.store: AdapterStore
        self.gate: Gate
        self.watcher: EpisodeWatcher
        self._lock_file: Any = None

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the ledger, recover the adapter store, clean leftovers, start the watcher; READY."""
        cfg = self.cfg
        for folder in (cfg.state_dir, cfg.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._take_instance_lock()
        self.ledger = Ledger.open(cfg.ledger_path)
        dropped = self.ledger.compact()  # a ledger from before compaction catches up once
        if dropped:
            self.log.info("ledger_compacted", job_episode_rows_dropped=dropped)
        self._accept = bounds_check(cfg)  # features.out_of_bounds: skip, seen by the ledger
        self._safety_notes: list[str] = []  # looser manifest safety values, logged once
        self.store = AdapterStore(
            cfg.adapters_dir, cfg.paths.manifest, model_name=cfg.policy.model_name
        )
        self._check_store()
        orphan = reap_orphan(cfg.state_dir, cfg.runs_dir)
        if orphan:
            self.log.warning("orphan_job_reaped", detail=orphan)
        self._restore_waiting()  # before cleaning: its run dir is kept
        self._clean_runs()
        for path in remove_stale_state_temps(cfg):
            self.log.info("stale_temp_removed", path=str(path))
        self.gate = build_gate(cfg.gate, os.getpid(), self._monotonic, self._wall)
        self.health = HealthWatch(cfg, self.store, self.ledger, self.log, self._wall)
        self.watcher = self._start_watcher()
        # READY before the first scan: a large folder is scanned in slices by the loop, which
        # keeps pinging the watchdog meanwhile.
        forgotten = self.ledger.features_config(features_fingerprint(cfg))
        if forgotten:
            self.log.info("features_changed", unusable_forgotten=forgotten)
        self.counts = self._counts()
        self.reason = "scanning the episodes folder"
        self.notifier.ready(self.status_line())
        self.log.info(
            "ready", root=str(cfg.root), episodes=str(cfg.paths.episodes), counts=self.counts
        )

    def _take_instance_lock(self) -> None:
        self._lock_file = take_instance_lock(self.cfg.state_dir, os.getpid())

    def _check_store(self) -> None:
        """Recover the adapter store; while it is unusable, retry now and then (an operator may
        have fixed the manifest or rolled back)."""
        self._store_checked_at = self._monotonic()
        try:
            for action in self.store.recover():
                self.log.warning("store_recovered", action=action)
            adopted = self.store.adopt_legacy()
            if adopted is not None:
                self.log.info("legacy_adapter_adopted", release=adopted.id)
        except (OSError, StoreError) as exc:
            error = f"adapter store needs attention: {exc}"
            if error != self.store_error:
                self.log.critical("store_unusable", error=str(exc))
            self.store_error = error
            return
        if self.store_error:
            self.log.info("store_usable_again")
        self.store_error = None

    def _restore_waiting(self) -> None:
        """Take back the candidate a previous daemon left waiting for the gate; it is judged
        again (against the release current now) before anything else happens. One whose files
        are gone or incomplete, or that was evaluated under another safety or features config,
        is discarded with the reason: its episodes stay new, so the next job trains again."""
        waiting = load_waiting(self.cfg.state_dir, self.cfg.runs_dir)
        if waiting is None:
            return
        latest = self.ledger.last_jobs(1)
        open_job = bool(latest) and latest[0].run_id == waiting.run_id and latest[0].status is None
        problem = waiting.problem
        if not problem and not open_job:  # decided already (or never started here): not twice
            problem = "the ledger has no open job of that run"
        if not problem and waiting.spec is not None:
            problem = self._evaluated_elsewhere(waiting.spec)
        if problem:
            with contextlib.suppress(OSError):  # else found again, and discarded again, next time
                clear_waiting(self.cfg.state_dir)
            reason = f"waiting candidate {waiting.run_id} discarded at start: {problem}"
            self.log.warning("candidate_discarded", job_id=waiting.run_id, reason=problem)
            if open_job:  # its episodes stay new: the next job trains on them again
                self._record_job_end(waiting.run_id, "preempted", None, None)
            self._remember(waiting.run_id, "discarded", [reason], None)
            return
        assert waiting.result is not None
        self.pending = Outcome(
            waiting.run_dir, None, waiting.result, "waited for the gate across a restart"
        )
        self._pending_saved = True
        self.phase = Phase.PROMOTING
        self.reason = f"candidate {waiting.run_id} waits for the gate (kept across a restart)"
        self.log.info("candidate_restored", job_id=waiting.run_id)

    def _evaluated_elsewhere(self, spec: JobSpec) -> str:
        """Why a kept candidate's evidence no longer applies ("" when it does): the config's
        features, base or safety floor changed while the daemon was down."""
        try:
            safety = self._safety_config()
        except (OSError, StoreError, ValueError) as exc:
            return f"the manifest's safety block is unusable: {exc}"
        if spec.safety != safety:
            return "evaluated under another safety config"
        if spec.features != self.cfg.features or spec.base_path != self.cfg.policy.base_path:
            return "evaluated under another features config or base policy"
        return ""

    def _start_watcher(self) -> EpisodeWatcher:
        folder = self.cfg.paths.episodes
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.log.error("episodes_folder_unusable", folder=str(folder), error=str(exc))
        watcher = EpisodeWatcher(folder, force_polling=self.cfg.service.watch == "poll")
        if folder.is_dir():
            watcher.start()
        return watcher

    def _clean_runs(self, keep: Path | None = None) -> None:
        """Prune run dirs (keeping a candidate that waits for the gate, and ``keep``)."""
        protect = {self.pending.run_dir} if self.pending is not None else set()
        if keep is not None:
            protect.add(keep)
        for run_id in clean_runs(self.cfg.runs_dir, self.cfg.service.keep_runs, protect):
            self.log.info("abandoned_run_removed", job_id=run_id)

    # -- the loop --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; SIGUSR2 stalls the loop (test hook only)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        if self._test_hooks:
            signal.signal(signal.SIGUSR2, self._on_stall)

    def _on_stop(self, _signum: int, _frame: Any) -> None:
        self.stop_requested = True
        self._stalled = False
        self.watcher.wake()

    def _on_reload(self, _signum: int, _frame: Any) -> None:
        self._reload_requested = True
        self.watcher.wake()

    def _on_stall(self, _signum: int, _frame: Any) -> None:
        self._stalled = not self._stalled

    def run(self) -> None:
        """Tick until a stop is requested, then shut down cleanly.

        An error in one iteration (a full disk, a locked database) is logged and the loop goes
        on; since only a completed tick pings the watchdog, an error that repeats makes systemd
        restart the service rather than leave it spinning.
        """
        while not self.stop_requested:
            try:
                self.tick()
            except Exception as exc:
                self.log.exception("loop_error", error=f"{type(exc).__name__}: {exc}")
                self._say_loop_error(exc)
                time.sleep(1.0)
        self.shutdown()

    def _say_loop_error(self, exc: Exception) -> None:
        """A failed iteration says why in the status file too, not only in the journal (a
        ledger that cannot be read or written: ``ledger_error``, until it works again)."""
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, (sqlite3.Error, LedgerError)):
            if self.ledger_error is None:
                self.log.error("ledger_unavailable", error=error)
            self.ledger_error = error
            self.reason = f"ledger unavailable ({error}); retrying"
        else:
            self.reason = f"loop error ({error}); retrying"
        with contextlib.suppress(Exception):  # the status file may be on the failing card too
            self.publish()

    def tick(self) -> None:
        """One iteration of the loop."""
        while self._stalled and not self.stop_requested:
            time.sleep(0.05)  # test hook: a loop that makes no progress must stop the watchdog
        interval = (
            self.cfg.service.job_poll_interval_s
            if self.supervisor.running
            else self.cfg.service.poll_interval_s
        )
        # Wakes early when the episodes folder changes, and does not wait at all while a
        # sliced scan is still going through the folder.
        self.watcher.wait(min(interval, max(0.0, self._next_rescan - self._monotonic())))
        if self.stop_requested:
            return
        if self._reload_requested:
            self.reload()
        if not self.watcher.alive and self.cfg.paths.episodes.is_dir():
            self.log.warning("watcher_restarted", error=self.watcher.error)
            self.watcher = self._start_watcher()
        self.rescan()
        self.gate_decision = self.gate.poll()
        self._log_gate_change(self.gate_decision)
        self.watch_health()
        self.advance(self.gate_decision)
        if self.ledger_error is not None:  # a whole iteration went through the ledger again
            self.log.info("ledger_recovered", error=self.ledger_error)
            self.ledger_error = None
        self.publish()
        self.notifier.watchdog()

    def watch_health(self) -> None:
        """The health window (daemon.health): follow the current release, roll back when it is
        worse than its predecessor. A failing source is logged; the loop goes on."""
        try:
            self.health.poll()
        except (OSError, StoreError, LedgerError) as exc:
            self.log.error("health_poll_failed", error=str(exc))

    def rescan(self) -> None:
        """Bring the ledger up to date with the episodes folder, in slices; log rejections.

        Between full rescans (every ``rescan_interval_s``, and while a slice or settling
        episodes are pending) only the entries the watcher saw change are looked at, so
        detection does not slow down as the folder grows.
        """
        changed = self.watcher.take_changes()
        now = self._monotonic()
        full = now >= self._next_rescan
        if not full and not changed:
            return
        # While a job runs the gate must be polled every 0.25 s: scan in short slices then.
        budget = SCAN_SLICE_JOB_S if self.supervisor.running else SCAN_SLICE_S
        report = scan(
            self.cfg.paths.episodes,
            self.ledger,
            self.cfg.ingest,
            self.cfg.job.eval_fraction,
            self._wall(),
            deadline=time.monotonic() + budget,  # scan measures its slice on the real clock
            only=None if full else changed,
            accept=self._accept,
        )
        if full:
            # An unfinished slice or settling episodes produce no further events: look again
            # soon; otherwise at the periodic interval.
            wait = self.cfg.service.rescan_interval_s
            if report.incomplete:
                wait = 0.0
            elif report.pending:
                wait = min(wait, self.cfg.ingest.settle_s / 2 + 0.1)
            if not self.watcher.alive:  # no events to rely on: poll the folder instead
                wait = min(wait, WATCHERLESS_RESCAN_S)
            self._next_rescan = now + wait
            self.rescanning = report.incomplete
        elif report.incomplete:  # the watcher's names not reached: a full scan finds them
            self._next_rescan = now
        elif report.pending:
            self._next_rescan = min(self._next_rescan, now + self.cfg.ingest.settle_s / 2 + 0.1)
        if full or report.pending:
            self._settling = report.pending  # a partial scan sees only the names it was given
        if report.error != self._scan_error:
            if report.error:
                self.log.error("episodes_folder_unreadable", error=report.error)
            self._scan_error = report.error
        for path, reason in report.rejections:
            self.log.warning("episode_rejected", episode=str(path), reason=reason)
        if report.new or report.changed:
            self.log.info(
                "episodes_scanned", new=report.new, changed=report.changed, entries=len(changed)
            )
        self.counts = self._counts()

    def _log_gate_change(self, decision: GateDecision) -> None:
        if decision.open != self._gate_open:
            self._gate_open = decision.open
            # A closed gate is normal operation (teleop, charging): info, never a warning.
            self.log.info(
                "gate_opened" if decision.open else "gate_closed",
                gate_reasons=decision.reasons,
                **({"ignored": "once --force"} if self._force else {}),
            )

    # -- state machine -----------------------------------------------------------------------

    def advance(self, gate: GateDecision) -> None:
        """Move the state machine one step given the gate's decision."""
        now = self._monotonic()
        if self.supervisor.running:
            if not gate.open and not self._force:
                self.supervisor.stop(f"preempted: {gate.summary()}", self.cfg.job.grace_s)
            outcome = self.supervisor.poll()
            if outcome is not None:
                self.on_job_end(outcome)
                heap.trim()  # the job's allocations are done with: their pages go back
            else:
                self.phase = (
                    Phase.EVALUATING if self.supervisor.progress.phase == "eval" else Phase.TRAINING
                )
                self._log_progress(now)
            return
        if self.pending is not None:
            self._judge_pending(gate)
            return
        while self.jobs_started and self._wall() - self.jobs_started[0] > DAY_S:
            self.jobs_started.popleft()
        history = History(
            self.history.last_job_end,
            self.history.failures_in_a_row,
            self.history.last_failure,
            len(self.jobs_started),
        )
        trainable = (episode_states(self.counts) or {}).get("trainable", 0)
        trig = trigger(self.counts.get("new", 0), trainable, now, history, self.cfg.service)
        if not trig.ready:
            self.phase = Phase.COOLDOWN if now < self._cooldown_until else Phase.IDLE
            self.reason = trig.reason
            self.holds.update(trigger_hold(trig.reason, self.counts.get("settling", 0)))
            return
        self.phase = Phase.ARMED
        self.blocked = self._blocked()
        if self.blocked:
            self.reason = f"{trig.reason}; {self.blocked}"
            self.holds.update(blocked_hold(self.blocked))
        elif gate.open or self._force:
            self.holds.update(None)
            self.start_job()
        else:
            self.reason = f"{trig.reason}; gate {gate.summary()}"
            self.holds.update(gate_hold(gate.summary()))

    def _counts(self) -> dict[str, int]:
        """The ledger's counts plus the episodes still settling (the last scan's)."""
        return {**self.ledger.counts(), "settling": self._settling}

    def _log_progress(self, now: float) -> None:
        """A job_progress line every logging.progress_every_s (daemon.holding)."""
        p, spec = self.supervisor.progress, self.supervisor.spec
        if spec is not None:
            self.progress_log.maybe_log(
                self.log,
                spec.run_id,
                p.step,
                p.max_steps,
                p.loss,
                p.phase,
                now,
                self.cfg.job.batch_size,
            )

    def _blocked(self) -> str | None:
        """What keeps a job from starting that only an operator can fix, if anything."""
        if self.store_error and self._monotonic() - self._store_checked_at > STORE_RETRY_S:
            self._check_store()
        if self.store_error:
            return self.store_error
        if not base_weights_file(self.cfg.policy).is_file():
            return (
                f"no base policy at {base_weights_file(self.cfg.policy)}: run "
                "`continuon-trainer base init` or `base pretrain`"
            )
        try:
            self._safety_config()
        except (StoreError, ValueError) as exc:
            return f"the manifest's safety block is unusable: {exc}"
        return manifest_model_mismatch(read_manifest(self.cfg.paths.manifest), self.cfg.policy)

    def start_job(self) -> None:
        """Plan a job from the ledger's episodes and start the child."""
        cfg = self.cfg
        try:
            baseline = baseline_of(self.store.current())
            safety = self._safety_config()
        except (OSError, StoreError, ValueError) as exc:
            self.blocked = self.reason = f"adapter store or manifest unusable: {exc}"
            return
        run_id = f"{utc_stamp(self._wall())}-{os.getpid() % 10000:04d}"
        plan = plan_job(
            cfg,
            run_id,
            self.ledger.valid_episodes("train"),
            self.ledger.valid_episodes("eval"),
            baseline,
            safety,
            resumable_checkpoint(cfg.runs_dir),
            self.ledger.released_hashes(),
        )
        spec = plan.spec
        if spec is None:
            self.phase, self.reason = Phase.IDLE, plan.reason
            return
        if plan.held_back:
            self.log.info("eval_held_back", job_id=run_id, episodes=plan.held_back[:20])
        self.ledger.record_job_start(run_id, self._wall(), plan.train_hashes)
        try:
            self.supervisor.start(spec)
        except OSError as exc:  # a full or read-only disk: this job fails, the daemon goes on
            self._fail(run_id, f"cannot start the job: {exc}")
            return
        self.jobs_started.append(self._wall())
        self.phase = Phase.TRAINING
        self.reason = plan.reason
        self.log.info(
            "job_started",
            job_id=run_id,
            train=len(spec.train_episodes),
            eval=len(spec.eval_episodes),
            resume=str(spec.resume_from) if spec.resume_from else None,
            baseline=spec.baseline_id or "base",
        )

    def _safety_config(self) -> SafetyConfig:
        if not self.cfg.safety.from_manifest:
            return self.cfg.safety
        notes: list[str] = []
        merged = merge_manifest_safety(self.cfg.safety, self.store.manifest_safety(), notes)
        if notes and notes != self._safety_notes:  # the configured block is a floor
            self.log.warning("manifest_safety_loosening_ignored", notes=notes)
        self._safety_notes = notes
        return merged

    def on_job_end(self, outcome: Outcome) -> None:
        """Record a finished child and decide: resume later, back off, or judge the candidate."""
        run_id = outcome.run_dir.name
        status = outcome.status
        result = outcome.result
        self.log.info(
            "job_ended",
            job_id=run_id,
            status=status,
            reason=outcome.reason,
            steps=result.steps if result else None,
            elapsed_s=round(outcome.elapsed_s, 2),
        )
        if result is not None:
            self._record_child_report(run_id, result)
        if status == "preempted":
            self._record_job_end(run_id, "preempted", None, None)
            self.phase = Phase.ARMED
            self.reason = f"job {run_id} preempted; resumes when the gate opens"
            self._remember(run_id, "preempted", [outcome.reason], result)
            # a gate that flaps all day preempts every job: without this their run dirs (a
            # checkpoint each) pile up until a job is judged
            self._clean_runs(outcome.run_dir)
            return
        self._note_unusable(result)
        if status not in ("done", "budget") or result is None or result.candidate_path is None:
            self._fail(run_id, outcome.reason, status)
            return
        self.pending = outcome
        self._judge_pending(self.gate_decision)

    def _record_child_report(self, run_id: str, result: JobResult) -> None:
        """The ledger keeps what the child actually trained on (its hashes, not the plan): an
        episode it skipped, or whose bytes changed before it read them, is not counted as used."""
        if result.episode_hashes:
            self.ledger.record_trained(run_id, result.episode_hashes)

    def _note_unusable(self, result: JobResult | None) -> None:
        """Episodes the features could not use: kept out of training and "new" from now on,
        each said once with its reason (an operator's features config or data to fix)."""
        if result is None or not result.skipped:
            return
        for path in self.ledger.mark_unusable(dict(result.skipped)):
            self.log.warning("episode_unusable", episode=path, reason=result.skipped[path])
        self.counts = self._counts()

    def _judge_pending(self, gate: GateDecision | None) -> None:
        """Judge the waiting candidate against the release current now; promote it only while
        the gate is open, else keep it waiting."""
        assert self.pending is not None and self.pending.result is not None
        outcome, result = self.pending, self.pending.result
        run_id = outcome.run_dir.name
        gate_open = self._force or (gate is not None and gate.open)
        verdict = judge(
            result.metrics, self.cfg.promotion, baseline_of(self.store.current()).kind, gate_open
        )
        if verdict.action == "wait":
            reason = f"candidate {run_id} passed; waits for the gate"
            if gate is not None:
                reason += f": {gate.summary()}"
            if self.phase != Phase.PROMOTING or self.reason != reason:
                self.log.info("candidate_waiting", job_id=run_id, gate=reason)
            self.phase, self.reason = Phase.PROMOTING, reason
            if not self._pending_saved:
                try:
                    save_waiting(self.cfg.state_dir, outcome.run_dir, self._wall())
                    self._pending_saved = True
                except OSError as exc:  # it still waits, for this daemon's lifetime only
                    self.log.warning("candidate_not_kept", job_id=run_id, error=str(exc))
            return
        # Forgotten before it is acted on: a crash in between loses this candidate (its
        # episodes stay new and train again) rather than judge it twice.
        self._forget_waiting()
        self.phase = Phase.PROMOTING
        self._conclude(run_id, outcome.status, result, verdict)

    def _forget_waiting(self) -> None:
        """No candidate waits any more; remove its pending.json (a failure is logged; the next
        start finds the run's job ended in the ledger and discards it)."""
        self.pending = None
        if self._pending_saved:
            self._pending_saved = False
            try:
                clear_waiting(self.cfg.state_dir)
            except OSError as exc:
                self.log.error("pending_file_not_removed", error=str(exc))

    def _conclude(self, run_id: str, status: str, result: JobResult, verdict: Verdict) -> None:
        """Promote (``verdict.action == "promote"``) or reject the candidate; cool down."""
        now = self._monotonic()
        reasons = verdict.reasons + legacy_baseline_note(self.store.current())
        if verdict.action != "promote":
            reasons += risk_reason(result.episode_risk)
        release_id = None
        if verdict.action == "promote":
            assert result.candidate_path is not None
            try:
                card = {
                    "run_id": run_id,
                    "decision": reasons,
                    "metrics": result.metrics.model_dump() if result.metrics else None,
                }
                release_id = self.store.promote(result.candidate_path, card).id
            except (OSError, StoreError) as exc:
                # Not "done": the episodes stay new, so a later job retries once the disk or
                # manifest is fixed.
                self._fail(run_id, f"promotion failed: {exc}", "promotion_failed")
                return
            try:
                self.store.prune(self.cfg.service.keep_releases)
            except (OSError, StoreError) as exc:  # the promotion stands; pruning can wait
                self.log.warning("prune_failed", error=str(exc))
        self._clean_runs()
        verdict_word = "promoted" if release_id else "rejected"
        self._record_job_end(run_id, status, verdict_word, release_id)
        # A rejected candidate is the rule doing its job, not a problem: info like a promotion.
        self.log.info(
            "candidate_" + verdict_word, job_id=run_id, release=release_id, reasons=reasons
        )
        self._remember(run_id, verdict_word, reasons, result, release_id)
        self.history = History(last_job_end=now)
        self._cooldown_until = now + self.cfg.service.cooldown_s
        self.phase = Phase.COOLDOWN
        self.reason = f"job {run_id} {verdict_word}" + (f" as {release_id}" if release_id else "")

    def _record_job_end(
        self, run_id: str, status: str, decision: str | None, release_id: str | None
    ) -> None:
        """Record a job's end and refresh the counts the trigger reads (``new`` changes)."""
        self.ledger.record_job_end(run_id, status, decision, release_id, self._wall())
        self.counts = self._counts()

    def _fail(self, run_id: str, reason: str, status: str = "crashed") -> None:
        now = self._monotonic()
        self._record_job_end(run_id, status, "failed", None)
        failures = self.history.failures_in_a_row + 1
        self.history = History(self.history.last_job_end, failures, now)
        self.log.error(
            "job_failed", job_id=run_id, status=status, reason=reason, failures_in_a_row=failures
        )
        self._remember(run_id, "failed", [reason], None)
        self.phase, self.reason = Phase.IDLE, f"job {run_id} failed: {reason}"
        self._clean_runs(self.cfg.runs_dir / run_id)  # older failures' dirs go; this one stays

    def _remember(
        self,
        run_id: str,
        verdict: str,
        reasons: list[str],
        result: JobResult | None,
        release_id: str | None = None,
    ) -> None:
        at = utc_stamp(self._wall())
        self.decisions.appendleft(decision_entry(run_id, at, verdict, reasons, result, release_id))

    # -- status, reload, shutdown -----------------------------------------------------------------

    def status_line(self) -> str:
        """The one line systemd shows: what the daemon does and why."""
        running = self.supervisor.running
        progress = self.supervisor.progress if running else None
        return status_line(str(self.phase), self.reason, progress, self.gate_decision)

    def snapshot(self) -> dict[str, Any]:
        """Everything ``continuon-trainer status`` shows."""
        job = None
        spec = self.supervisor.spec
        if self.supervisor.running and spec is not None:
            job = job_view(
                spec.run_id,
                self.supervisor.pid,
                self.supervisor.progress,
                self.supervisor.elapsed_s,
                self.cfg.job.max_wall_time_s,
            )
        try:
            current = self.store.current()
        except (OSError, StoreError) as exc:
            current, self.store_error = None, f"adapter store needs attention: {exc}"
        return {
            "pid": os.getpid(),
            "updated_at": self._wall(),
            "phase": str(self.phase),
            "reason": self.reason,
            "status_line": self.status_line(),
            "gate": self.gate_decision.to_json() if self.gate_decision else None,
            "ledger": self.counts,
            "job": job,
            "current_release": current.id if current else None,
            "blocked": self.blocked,
            "last_decisions": list(self.decisions),
            "health": self.health.snapshot(),
            "ledger_error": self.ledger_error,
        }

    def publish(self) -> None:
        """Rewrite the status file (on change, or every STATUS_EVERY_S) and send STATUS=."""
        line = self.status_line()
        self.notifier.status(line)
        now = self._monotonic()
        # Progress (step, loss) alone does not force a write: every write costs two fsyncs.
        key = (
            self.phase,
            self.reason,
            self._gate_open,
            tuple(sorted(self.counts.items())),
            len(self.decisions),
            self.supervisor.pid,
            tuple(sorted(self.health.snapshot().items())),
        )
        if key != self._last_status_key or now - self._last_status_write >= STATUS_EVERY_S:
            self._last_status_key, self._last_status_write = key, now
            snapshot = self.snapshot()
            try:
                write_status(self.cfg.status_path, snapshot)
            except (OSError, ValueError) as exc:
                self.log.error("status_write_failed", error=str(exc))
            self._write_metrics(snapshot)

    def _write_metrics(self, snapshot: dict[str, Any]) -> None:
        """The Prometheus textfile beside the status file, when configured (daemon.metrics)."""
        path = self.cfg.metrics.textfile
        if path is None:
            return
        try:
            write_textfile(path, gather(snapshot, self.ledger, self.store))
            error = None
        except (OSError, ValueError) as exc:
            error = str(exc)
        if error != self._metrics_error:  # said once, not at every write
            self._metrics_error = error
            if error:
                self.log.warning("metrics_write_failed", path=str(path), error=error)

    def reload(self) -> None:
        """SIGHUP: take a new config if it is valid; otherwise keep the old one and say why."""
        self._reload_requested = False
        self.notifier.reloading()
        try:
            new, warnings = load_config(self._config_path, self._cli_root)
        except ConfigError as exc:
            self.log.error("reload_refused", reason=str(exc))
            self.notifier.ready(self.status_line())
            return
        for w in warnings:
            self.log.warning("config_warning", detail=w)
        if new.paths != self.cfg.paths:
            self.log.warning("reload_paths_ignored", detail="changed paths need a restart")
            new = new.model_copy(update={"paths": self.cfg.paths})
        if new.gate != self.cfg.gate:
            # A new gate starts closed (fail closed); an unchanged one keeps its state, so a
            # reload never preempts a job or forgets a hysteresis latch by itself.
            self.gate = build_gate(new.gate, os.getpid(), self._monotonic, self._wall)
        self.cfg = new
        self.log.info("config_reloaded")
        self.notifier.ready(self.status_line())

    def shutdown(self) -> None:
        """STOPPING=1; stop the child first (it checkpoints), then the watcher and ledger."""
        self.phase, self.reason = Phase.STOPPING, "shutting down"
        self.notifier.stopping("stopping: shutting down")
        self.log.info("stopping")
        if self.supervisor.running:
            self.supervisor.stop("shutdown", self.cfg.job.grace_s)
            outcome = self.supervisor.wait(self.cfg.job.grace_s + 2)
            if outcome is not None:
                self.on_job_end(outcome)
        if self.pending is not None and self._pending_saved:
            # Never promoted while the gate was closed, and not now either: it stays named in
            # pending.json and the next start judges it again.
            self.log.info("candidate_kept", job_id=self.pending.run_dir.name)
        elif self.pending is not None:  # not kept on disk: the episodes stay new, train again
            run_id = self.pending.run_dir.name
            self.pending = None
            self._record_job_end(run_id, "preempted", None, None)
            self._remember(run_id, "preempted", ["shut down while the candidate waited"], None)
            self.log.warning("candidate_dropped", job_id=run_id, reason="shutdown while waiting")
        self.watcher.stop()
        with contextlib.suppress(OSError):
            write_status(self.cfg.status_path, self.snapshot() | {"pid": None})
        self.ledger.close()
        self.log.info("stopped")


def _service_from_args(args: Any, cfg: TrainerConfig, force: bool) -> Service:
    configure_logging(cfg.logging.level, cfg.logging.format)
    faulthandler.enable()  # the watchdog's SIGABRT dumps every thread's stack to the journal
    return Service(
        cfg,
        args.config,
        os.environ,
        force=force,
        test_hooks=os.environ.get("CONTINUON_TRAINER_TEST_HOOKS") == "1",
    )


def run_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer run``: the systemd ExecStart. Foreground, never forks."""
    service = _service_from_args(args, cfg, force=False)
    try:
        service.start()
    except AlreadyRunning as exc:
        service.log.critical("startup_refused", error=str(exc))
        return 2  # RestartPreventExitStatus=2: restarting cannot help
    except Exception as exc:
        service.log.critical("startup_failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    service.install_signal_handlers()
    service.run()
    return 0


def once_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer once``: run until one job ended (or nothing is to be done), then exit."""
    service = _service_from_args(args, cfg, force=args.force)
    try:
        service.start()
    except AlreadyRunning as exc:
        print(f"{exc}: stop it first (systemctl stop continuon-trainer)", file=sys.stderr)
        return 2
    service.install_signal_handlers()
    started = False
    said = ""
    code = 0
    while not service.stop_requested:
        service.tick()
        started = started or service.supervisor.running
        if started and not service.supervisor.running and service.pending is None:
            break
        if service.pending is not None and service.reason != said:
            said = service.reason
            print(f"waiting: {said}", file=sys.stderr)
        if started or service.rescanning:
            continue
        if service.phase in (Phase.IDLE, Phase.COOLDOWN):
            print(
                f"nothing to do: {service.reason} (episodes: {format_episodes(service.counts)})",
                file=sys.stderr,
            )
            break
        if service.blocked:
            print(f"cannot train: {service.blocked}", file=sys.stderr)
            code = 1
            break
        if service.reason != said:  # armed, waiting for the gate: say why, once per change
            said = service.reason
            print(f"waiting: {said}", file=sys.stderr)
    service.shutdown()
    last = service.decisions[0] if service.decisions else None
    if code or (last is not None and last["verdict"] not in ("promoted", "rejected")):
        return 1
    return 0
