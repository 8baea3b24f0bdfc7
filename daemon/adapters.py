"""Adapters made elsewhere (a GPU host, a fleet round) become releases only through the robot's
own rule: :func:`import_candidate`, and ``continuon-trainer adapters import DIR``.

The path, each step failing closed with its reason:

1. **Validate**: a sealed adapter directory (trainer_core.bundle: the job child's candidate
   format plus sha256 checksums in its card), trained on exactly this robot's base (sha256 of
   the base weights), for the same policy family, model name and feature names.
2. **Shadow-evaluate** in the job child, as for a candidate trained here: a copy of the adapter
   and the release current now replay this robot's own held-out episodes (the ledger's eval
   split, less every episode a release or the adapter itself trained on).
3. **Judge** with :func:`daemon.cycle.judge` (``safety.rule.decide`` plus the baseline check),
   promote through the store, and start the health window as after any promotion. The
   release's card says ``source: "imported from ..."``; the ledger records the job, so
   lineage and ``releases show`` see it.

The daemon must not run meanwhile (one process per state folder, as for ``once``), unless the
caller already holds the instance lock (``hold_lock=False``). No torch here.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from daemon.cycle import baseline_of, job_spec, judge
from daemon.health import HealthWatch
from daemon.instance import AlreadyRunning, take_instance_lock
from daemon.ledger import EpisodeRow, Ledger
from daemon.logs import get_logger
from daemon.precheck import manifest_model_mismatch, read_manifest
from daemon.store import AdapterStore, StoreError, utc_stamp
from daemon.supervisor import JobSupervisor
from safety.config import merge_manifest_safety
from trainer_core.basefile import base_weights_file
from trainer_core.bundle import BundleError, check_sealed
from trainer_core.fsio import sha256_file

if TYPE_CHECKING:
    from daemon.config import TrainerConfig

Action = Literal["promoted", "rejected", "waiting", "invalid", "failed", "preempted"]
INCOMING = "incoming"  # the run folder's copy of the imported adapter (the original is untouched)


@dataclass(frozen=True)
class ImportVerdict:
    """What became of an imported adapter, and why (one line per check, decisive first)."""

    action: Action
    reasons: list[str]
    run_id: str | None = None
    release_id: str | None = None
    decisive: str | None = None
    metrics: dict[str, Any] | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        """Whether it is the current release now."""
        return self.action == "promoted"


def adapter_mismatch(card: dict[str, Any], cfg: TrainerConfig, base_sha256: str) -> str | None:
    """Pure: why the adapter described by ``card`` cannot run on this robot, or None."""
    if card.get("base_sha256") != base_sha256:
        return (
            f"trained on base sha256 {card.get('base_sha256')!r}, but this robot's base "
            f"{base_weights_file(cfg.policy)} has sha256 {base_sha256}"
        )
    policy = card.get("policy") if isinstance(card.get("policy"), dict) else {}
    for key, mine in (("family", cfg.policy.family), ("model_name", cfg.policy.model_name)):
        if policy.get(key) != mine:
            return f"policy.{key} is {policy.get(key)!r}, this robot's is {mine!r}"
    features = card.get("features") if isinstance(card.get("features"), dict) else {}
    try:
        from trainer_core.config import FeaturesConfig

        theirs = FeaturesConfig.model_validate(features)
    except ValueError as exc:
        return f"its features config is unusable: {exc}"
    for what in ("observation_names", "action_names"):
        if list(getattr(theirs, what)) != list(getattr(cfg.features, what)):
            return (
                f"features.{what} {list(getattr(theirs, what))} differ from this robot's "
                f"{list(getattr(cfg.features, what))}"
            )
    return None


def held_out_for(
    evals: Sequence[EpisodeRow], released: set[str], trained: Sequence[str]
) -> list[EpisodeRow]:
    """Pure: the eval episodes no release and not the adapter itself trained on."""
    never = set(released) | set(trained)
    return [r for r in evals if r.content_hash not in never]


def _card_hashes(card: dict[str, Any]) -> list[str]:
    hashes = card.get("episode_hashes")
    if isinstance(hashes, list) and all(isinstance(h, str) for h in hashes):
        return list(hashes)
    return []


def import_candidate(
    config: TrainerConfig,
    adapter_dir: Path,
    source: str,
    *,
    gate_open: bool = True,
    hold_lock: bool = True,
    stop: Callable[[], bool] | None = None,
    environ: dict[str, str] | None = None,
) -> ImportVerdict:
    """Validate, shadow-evaluate, judge and (if the rule passes) promote ``adapter_dir``.

    ``source`` is recorded in the release card as ``"imported from <source>"`` (a path, a host,
    ``fleet round 3``). ``gate_open`` is what :func:`daemon.cycle.judge` gets: False turns a
    pass into ``waiting`` (nothing promoted; import it again later). ``hold_lock``: take the
    state folder's instance lock (refused with ``failed`` while the daemon runs); pass False
    when the caller already holds it. ``stop`` is asked every 50 ms during the evaluation;
    when it returns True the child is stopped and the verdict is ``preempted``.
    Never raises for a bad adapter: the verdict says why.
    """
    adapter_dir = Path(adapter_dir).absolute()
    log = get_logger()
    try:
        card = check_sealed(adapter_dir)
    except BundleError as exc:
        return ImportVerdict("invalid", [f"FAIL adapter: {exc}"], decisive="adapter")
    weights = base_weights_file(config.policy)
    if not weights.is_file():
        return ImportVerdict("invalid", [f"FAIL base: no base policy at {weights}"], card=card)
    why = adapter_mismatch(card, config, sha256_file(weights))
    if why:
        return ImportVerdict("invalid", [f"FAIL base: {why}"], decisive="base", card=card)
    lock = None
    if hold_lock:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = take_instance_lock(config.state_dir, os.getpid())
        except AlreadyRunning as exc:
            return ImportVerdict(
                "failed", [f"{exc}: stop it first (systemctl stop continuon-trainer)"], card=card
            )
    try:
        with Ledger.open(config.ledger_path) as ledger:
            return _import_locked(
                config, ledger, adapter_dir, card, source, gate_open, stop, environ, log
            )
    finally:
        if lock is not None:
            lock.close()


def _import_locked(
    cfg: TrainerConfig,
    ledger: Ledger,
    adapter_dir: Path,
    card: dict[str, Any],
    source: str,
    gate_open: bool,
    stop: Callable[[], bool] | None,
    environ: dict[str, str] | None,
    log: Any,
) -> ImportVerdict:
    from daemon.bundle import rescan

    store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest, model_name=cfg.policy.model_name)
    try:
        store.recover()
        store.adopt_legacy()
        current = store.current()
        safety = cfg.safety
        if cfg.safety.from_manifest:
            safety = merge_manifest_safety(cfg.safety, store.manifest_safety(), [])
    except (OSError, StoreError, ValueError) as exc:
        return ImportVerdict("failed", [f"adapter store needs attention: {exc}"], card=card)
    mismatch = manifest_model_mismatch(read_manifest(cfg.paths.manifest), cfg.policy)
    if mismatch:
        return ImportVerdict("invalid", [f"FAIL manifest: {mismatch}"], card=card)
    # The held-out set is this robot's own, as of now: bring the ledger up to date first.
    rescan(cfg, ledger)
    trained = _card_hashes(card)
    evals = held_out_for(ledger.valid_episodes("eval"), ledger.released_hashes(), trained)
    need = cfg.promotion.min_eval_episodes
    if len(evals) < need:
        return ImportVerdict(
            "rejected",
            [
                f"FAIL eval_episodes: {len(evals)} held-out episodes on this robot that neither a "
                f"release nor the adapter trained on (promotion.min_eval_episodes is {need})"
            ],
            decisive="eval_episodes",
            card=card,
        )
    baseline = baseline_of(current)
    run_id = f"import-{utc_stamp()}-{os.getpid() % 10000:04d}"
    run_dir = cfg.runs_dir / run_id
    run_dir.mkdir(parents=True)
    incoming = run_dir / INCOMING
    shutil.copytree(adapter_dir, incoming)
    try:  # judge the bytes we copied, not ones that may change under us
        card = check_sealed(incoming)
    except BundleError as exc:
        return ImportVerdict("invalid", [f"FAIL adapter: {exc}"], run_id=run_id, card=card)
    eval_paths = [Path(r.path) for r in evals]
    train_rows = ledger.valid_episodes("train")
    spec = job_spec(
        cfg,
        run_id,
        # not read by a shadow job (it trains nothing); the robot's own, for the record
        [Path(r.path) for r in train_rows] or eval_paths,
        eval_paths,
        baseline,
        safety,
        candidate_adapter=incoming,
    )
    ledger.record_job_start(run_id, time.time(), trained)
    log.info(
        "adapter_import_started",
        job_id=run_id,
        source=source,
        eval=len(eval_paths),
        baseline=baseline.release_id or "base",
    )
    supervisor = JobSupervisor(cfg.state_dir, environ if environ is not None else os.environ)
    try:
        supervisor.start(spec)
    except OSError as exc:  # a full or read-only disk: say so, change nothing
        ledger.record_job_end(run_id, "crashed", "failed", None, time.time())
        return ImportVerdict("failed", [f"cannot start the job: {exc}"], run_id=run_id, card=card)
    outcome = None
    while outcome is None:
        if stop is not None and stop():
            supervisor.stop("preempted: stop requested", cfg.job.grace_s)
        outcome = supervisor.wait(0.05)
    result = outcome.result
    if outcome.status == "preempted":
        ledger.record_job_end(run_id, "preempted", None, None, time.time())
        return ImportVerdict("preempted", [outcome.reason], run_id=run_id, card=card)
    if outcome.status != "done" or result is None or result.candidate_path is None:
        ledger.record_job_end(run_id, outcome.status, "failed", None, time.time())
        return ImportVerdict(
            "failed", [f"shadow evaluation failed: {outcome.reason}"], run_id=run_id, card=card
        )
    verdict = judge(result.metrics, cfg.promotion, baseline_of(store.current()).kind, gate_open)
    metrics = result.metrics.model_dump(mode="json") if result.metrics else None
    reasons = [f"imported from {source}", *verdict.reasons]
    common = dict(run_id=run_id, decisive=verdict.decision.decisive, metrics=metrics, card=card)
    if verdict.action == "wait":
        ledger.record_job_end(run_id, "preempted", None, None, time.time())
        return ImportVerdict("waiting", [*reasons, "waits for the gate"], **common)
    if verdict.action == "reject":
        ledger.record_job_end(run_id, "done", "rejected", None, time.time())
        log.info("candidate_rejected", job_id=run_id, source=source, reasons=reasons)
        return ImportVerdict("rejected", reasons, **common)
    health = HealthWatch(cfg, store, ledger, log)
    health.poll()  # the release current now is the one the new release is compared with
    try:
        release = store.promote(
            result.candidate_path,
            {
                "run_id": run_id,
                "decision": reasons,
                "metrics": metrics,
                "source": f"imported from {source}",
            },
        )
    except (OSError, StoreError) as exc:
        ledger.record_job_end(run_id, "done", "failed", None, time.time())
        return ImportVerdict("failed", [*reasons, f"promotion failed: {exc}"], **common)
    ledger.record_job_end(run_id, "done", "promoted", release.id, time.time())
    health.poll()  # its health window starts now, as after any promotion
    try:
        store.prune(cfg.service.keep_releases)
    except (OSError, StoreError) as exc:  # the promotion stands; pruning can wait
        log.warning("prune_failed", error=str(exc))
    log.info("candidate_promoted", job_id=run_id, release=release.id, source=source)
    return ImportVerdict("promoted", reasons, release_id=release.id, **common)


def import_command(args: Any, config: TrainerConfig) -> int:
    """``continuon-trainer adapters import DIR``: 0 promoted, 1 rejected or waiting, 2 invalid
    or failed (every check printed)."""
    from daemon.logs import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    source = args.source or str(Path(args.dir).absolute())
    verdict = import_candidate(config, Path(args.dir), source)
    for line in verdict.reasons:
        print(f"  {line}")
    if verdict.promoted:
        print(f"promoted as {verdict.release_id} (health window starts: status shows it)")
        return 0
    print(f"{verdict.action}: not promoted", file=sys.stderr)
    return 1 if verdict.action in ("rejected", "waiting", "preempted") else 2
