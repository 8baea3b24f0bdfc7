"""``continuon-trainer fleet join`` and ``fleet serve``: learning across robots with Flower,
inside each robot's own rules (README "Fleet learning").

``fleet join`` is a foreground verb like ``once``: it holds the state folder's instance lock (so
the daemon never trains beside it), brings the ledger up to date, and answers the server's
rounds. A round trains in the ordinary job child (``trainer_core.fleet_round``: budgets,
nice 19, SIGTERM within one step), only while the gate is open; the gate is polled every
``service.job_poll_interval_s`` and its closing stops the child and declines the round (the
server's FedAvg drops this robot and goes on). Only LoRA tensors leave the robot. When the
server stops, the last aggregate this robot scored is written as an adapter and judged like any
candidate by :func:`daemon.adapters.import_candidate`: shadow evaluation on this robot's own
held-out episodes, its own promotion rule, the health window.

``fleet serve`` runs Flower's FedAvg for ``fleet.rounds`` rounds and stops by itself.

This module imports neither flwr nor torch at import time: the verbs import them when they run,
and say how to install Flower when it is absent. The daemon never imports it beyond that.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from daemon.config import FleetConfig, FleetTlsConfig, TrainerConfig, format_errors
from trainer_core.fsio import atomic_write_json

ROBOT_STATUS = "fleet.json"  # in the state folder: what `fleet join` is doing (status reads it)
SERVER_STATUS = "fleet-server.json"  # what `fleet serve` did, round by round
INSTALL_HINT = "pip install 'continuon-trainer[fleet]' (Flower, flwr)"


class FleetError(ValueError):
    """A fleet setting that cannot be used; the message says which and why."""


def flower_missing() -> str | None:
    """Why the fleet verbs cannot run here (Flower not installed), or None."""
    try:
        import flwr  # noqa: F401
    except ImportError as exc:
        return f"the fleet needs Flower, which is not installed ({exc}): {INSTALL_HINT}"
    return None


def _read(path: Path | None, what: str) -> bytes:
    if path is None:
        raise FleetError(f"fleet.tls.{what} is not set")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FleetError(f"fleet.tls.{what} {path}: {exc.strerror or exc}") from None


def server_certificates(tls: FleetTlsConfig) -> tuple[bytes, bytes, bytes] | None:
    """What Flower's ``start_server(certificates=)`` takes: (CA, server cert, server key)."""
    if not tls.enabled:
        return None
    return (
        _read(tls.ca_certificate, "ca_certificate"),
        _read(tls.server_certificate, "server_certificate"),
        _read(tls.server_private_key, "server_private_key"),
    )


def robot_certificates(tls: FleetTlsConfig) -> bytes | None:
    """What Flower's ``start_client(root_certificates=)`` takes: the CA's certificate."""
    return _read(tls.ca_certificate, "ca_certificate") if tls.enabled else None


def with_overrides(fleet: FleetConfig, args: Any) -> FleetConfig:
    """The config's fleet section with the verb's options laid over it, validated again (a
    ``--server`` off this machine still needs TLS)."""
    over = {
        key: getattr(args, key)
        for key in ("server_address", "rounds", "min_clients", "local_steps")
        if getattr(args, key, None) is not None
    }
    try:
        return FleetConfig.model_validate({**fleet.model_dump(), **over})
    except ValidationError as exc:
        raise FleetError(format_errors("fleet", exc)) from None


class StatusFile:
    """One JSON file another process reads (``status``): every note rewrites it atomically."""

    def __init__(self, path: Path, **fields: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {"pid": os.getpid(), "started_unix": time.time(), **fields}
        self._lock = threading.Lock()

    def note(self, **fields: Any) -> None:
        """Merge ``fields`` in and write the file; a failed write never stops the round."""
        with self._lock:
            self.data.update(fields, updated_unix=time.time())
            with contextlib.suppress(OSError, ValueError):
                atomic_write_json(self.path, self.data)


def read_fleet_status(cfg: TrainerConfig) -> dict[str, Any] | None:
    """The fleet files of this state folder by role (``robot``, ``server``), or None."""
    out = {}
    for role, name in (("robot", ROBOT_STATUS), ("server", SERVER_STATUS)):
        try:
            data = json.loads((cfg.state_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out[role] = data
    return out or None


def fleet_lines(fleet: Any) -> list[str]:
    """``status`` lines: role, round and last result of each fleet file (tolerates junk)."""
    lines = []
    for role, data in (fleet or {}).items() if isinstance(fleet, dict) else []:
        if not isinstance(data, dict):
            continue
        rnd, rounds = data.get("round", "-"), data.get("rounds", "?")
        lines.append(
            f"  fleet      {role} {data.get('server_address', '?')} round {rnd}/{rounds} "
            f"{data.get('phase', '?')}: {data.get('last_result') or '-'}"
        )
    return lines


class GatePoller(threading.Thread):
    """Polls the gate every ``interval_s`` for the whole session (it opens only after its
    conditions held for ``gate.open_after_s``, so it must be watched, not asked once)."""

    def __init__(self, gate: Any, interval_s: float) -> None:
        super().__init__(name="fleet-gate", daemon=True)
        self.gate = gate
        self.interval_s = interval_s
        self.decision: Any = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.decision = self.gate.poll()
            except Exception as exc:  # a reading bug closes the gate, never ends the session
                self.decision = None
                self._error = f"{type(exc).__name__}: {exc}"
            self._halt.wait(self.interval_s)

    def closed(self) -> str | None:
        """Why the gate is closed now, or None while it is open (not read yet: closed)."""
        decision = self.decision
        if decision is None:
            return getattr(self, "_error", None) or "gate not read yet"
        return None if decision.open else decision.summary().removeprefix("closed: ")

    def halt(self) -> None:
        """Stop polling."""
        self._halt.set()


def _deadline(seconds: float, what: str, on_expiry: Any) -> threading.Timer:
    """End this process after ``seconds`` whatever the peers do: bounded, always."""

    def expire() -> None:
        print(f"continuon-trainer fleet: {what} ran past {seconds:g} s; ending", file=sys.stderr)
        with contextlib.suppress(Exception):
            on_expiry()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def _ready(verb: str, cfg: TrainerConfig, args: Any, certificates: Any) -> tuple[Any, Any] | int:
    """(fleet settings with the verb's options, Flower's TLS argument), or the exit code after
    saying why the verb cannot run (2: Flower missing, a setting unusable)."""
    missing = flower_missing()
    try:
        if missing:
            raise FleetError(missing)
        fleet = with_overrides(cfg.fleet, args)
        return fleet, certificates(fleet.tls)
    except FleetError as exc:
        print(f"continuon-trainer fleet {verb}: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------ fleet serve


def serve_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer fleet serve``: FedAvg over the robots' LoRA tensors, bounded rounds."""
    ready = _ready("serve", cfg, args, server_certificates)
    if isinstance(ready, int):
        return ready
    fleet, certificates = ready
    from trainer_core.fleet_server import serve

    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    status = StatusFile(
        cfg.state_dir / SERVER_STATUS,
        role="server",
        server_address=fleet.server_address,
        rounds=fleet.rounds,
        min_clients=fleet.min_clients,
        tls=fleet.tls.enabled,
        phase="waiting",
        round=0,
        log=[],
    )
    status.note()

    def on_round(entry: dict[str, Any]) -> None:
        declined = ", ".join(f"{d['robot']} ({d['reason']})" for d in entry.get("declined", []))
        result = (
            f"round {entry['round']}: {len(entry.get('trained', []))} trained"
            + (f", declined: {declined}" if declined else "")
            + f", {entry.get('wall_s', 0):.1f} s"
        )
        status.note(round=entry["round"], phase="running", last_result=result,
                    log=[*status.data["log"], entry])  # fmt: skip
        print(f"fleet serve: {result}", file=sys.stderr)

    timer = _deadline(fleet.max_run_s, "fleet serve", lambda: status.note(phase="failed"))
    try:
        log = serve(
            fleet.server_address,
            fleet.rounds,
            fleet.min_clients,
            fleet.round_timeout_s,
            fleet.max_message_mb * 2**20,
            certificates,
            on_round,
        )
    finally:
        timer.cancel()
    status.note(phase="done", log=log)
    if getattr(args, "out", None):
        atomic_write_json(Path(args.out), status.data)
    return 0


# ------------------------------------------------------------------------------- fleet join


def join_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer fleet join``: this robot's part in the rounds, then its own verdict."""
    ready = _ready("join", cfg, args, robot_certificates)
    if isinstance(ready, int):
        return ready
    fleet, root_certificates = ready
    from daemon.instance import AlreadyRunning, take_instance_lock

    for folder in (cfg.state_dir, cfg.runs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = take_instance_lock(cfg.state_dir, os.getpid())
    except AlreadyRunning as exc:
        print(f"{exc}: stop it first (systemctl stop continuon-trainer)", file=sys.stderr)
        return 2
    try:
        return _join(cfg, fleet, root_certificates)
    finally:
        lock.close()


def _join(cfg: TrainerConfig, fleet: FleetConfig, root_certificates: bytes | None) -> int:
    from daemon.bundle import rescan
    from daemon.cycle import baseline_of, plan_job
    from daemon.ledger import Ledger
    from daemon.logs import configure_logging
    from daemon.store import AdapterStore, StoreError, utc_stamp
    from gating.gate import build_gate

    configure_logging(cfg.logging.level, cfg.logging.format)
    robot_id = fleet.robot_id or socket.gethostname()
    status = StatusFile(
        cfg.state_dir / ROBOT_STATUS,
        role="robot",
        robot_id=robot_id,
        server_address=fleet.server_address,
        rounds=fleet.rounds,
        round=0,
        phase="starting",
        last_result=None,
    )
    status.note()
    with Ledger.open(cfg.ledger_path) as ledger:
        rescan(cfg, ledger)
        store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest, model_name=cfg.policy.model_name)
        try:
            store.recover()
            current = store.current()
        except (OSError, StoreError) as exc:
            status.note(phase="failed", last_result=f"adapter store needs attention: {exc}")
            print(f"cannot join: adapter store needs attention: {exc}", file=sys.stderr)
            return 1
        plan = plan_job(
            cfg,
            "fleet",
            ledger.valid_episodes("train"),
            ledger.valid_episodes("eval"),
            baseline_of(current),
            cfg.safety,
            None,
            ledger.released_hashes(),
        )
    if plan.spec is None:
        status.note(phase="failed", last_result=f"cannot join: {plan.reason}")
        print(f"cannot join: {plan.reason}", file=sys.stderr)
        return 1
    poller = GatePoller(build_gate(cfg.gate, os.getpid()), cfg.service.job_poll_interval_s)
    poller.start()
    session = JoinSession(cfg, fleet, plan.spec, poller, status, robot_id, utc_stamp())

    def expire() -> None:
        session.abort()
        status.note(phase="failed", last_result=f"ran past fleet.max_run_s ({fleet.max_run_s:g} s)")

    timer = _deadline(fleet.max_run_s, "fleet join", expire)
    try:
        return session.run(root_certificates)
    finally:
        timer.cancel()
        session.abort()
        poller.halt()


class JoinSession:
    """One ``fleet join``: the Flower client's rounds, then the verdict on the aggregate."""

    def __init__(
        self,
        cfg: TrainerConfig,
        fleet: FleetConfig,
        spec: Any,
        poller: GatePoller,
        status: StatusFile,
        robot_id: str,
        stamp: str,
    ) -> None:
        from daemon.supervisor import JobSupervisor

        self.cfg, self.fleet, self.spec, self.poller = cfg, fleet, spec, poller
        self.status, self.robot_id, self.stamp = status, robot_id, stamp
        self.supervisor = JobSupervisor(cfg.state_dir, os.environ)
        self.trained_hashes: set[str] = set()
        self.steps = 0

    def abort(self) -> None:
        """Stop a running round child (SIGTERM, SIGKILL after grace) and wait for it."""
        if self.supervisor.running:
            self.supervisor.stop("shutdown", self.cfg.job.grace_s)
            self.supervisor.wait(self.cfg.job.grace_s + 2)

    def train(self, rnd: int, weights: dict[str, Any]) -> Any:
        """One local round in the job child; the gate closing stops it (the round is dropped)."""
        from trainer_core.fleet_client import RoundOutcome
        from trainer_core.fleet_round import START_FILE, read_weights, write_weights

        run_id = f"fleet-{self.stamp}-r{rnd}"
        run_dir = self.cfg.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        write_weights(run_dir / START_FILE, weights)
        spec = self.spec.model_copy(
            update={
                "run_id": run_id,
                "run_dir": run_dir,
                "fleet_start": run_dir / START_FILE,
                "baseline_adapter": None,
                "baseline_id": None,
                "resume_from": None,
                "job": self.cfg.job.model_copy(update={"max_steps": self.fleet.local_steps}),
            }
        )
        self.supervisor.start(spec)
        closed, said = None, 0.0
        while (outcome := self.supervisor.wait(0.05)) is None:
            why = self.poller.closed()
            if why is not None and closed is None:
                closed = why
                self.supervisor.stop(f"preempted: gate closed: {why}", self.cfg.job.grace_s)
            if time.monotonic() - said >= 1.0:  # progress for `status`, once a second
                said = time.monotonic()
                p = self.supervisor.progress
                self.status.note(step=p.step, max_steps=p.max_steps, loss=p.loss, job=run_id)
        if closed is not None:
            return RoundOutcome(None, f"gate closed during training: {closed}")
        result = outcome.result
        if outcome.status not in ("done", "budget") or result is None or not result.candidate_path:
            return RoundOutcome(None, f"local round {outcome.status}: {outcome.reason}")
        self.trained_hashes.update(result.episode_hashes)
        self.steps += result.steps
        return RoundOutcome(
            read_weights(result.candidate_path),
            samples=result.train_samples,
            metrics={
                "steps": result.steps,
                "loss_last": float(result.loss_last or 0.0),
                "train_s": float(result.timings.get("train_s", 0.0)),
            },
        )

    def run(self, root_certificates: bytes | None) -> int:
        """Answer the rounds until the server stops, then judge the last aggregate."""
        from flwr.client import start_client

        from trainer_core.fleet_client import FleetClient, RobotModel

        try:
            model = RobotModel(self.spec)
        except ValueError as exc:  # BaseError, LoraError: the base or LoRA config cannot load
            self.status.note(phase="failed", last_result=f"cannot join: {exc}")
            print(f"cannot join: {exc}", file=sys.stderr)
            return 1
        client = FleetClient(self.robot_id, model, self.poller.closed, self.train, self.status.note)
        self.status.note(
            phase="connecting",
            update_bytes=model.layout.nbytes,
            full_model_bytes=model.full_model_bytes,
        )
        start_client(
            server_address=self.fleet.server_address,
            client=client,
            insecure=root_certificates is None,
            root_certificates=root_certificates,
            grpc_max_message_length=self.fleet.max_message_mb * 2**20,
            max_wait_time=self.fleet.connect_timeout_s,
        )
        got = client.received
        if got is None:
            why = "no aggregate scored (the gate was closed, or the server never answered)"
            self.status.note(phase="done", verdict="none", last_result=why)
            print(f"fleet join: {why}; the current release stays", file=sys.stderr)
            return 1
        return self.judge(model, got, client.bytes_sent)

    def judge(self, model: Any, got: Any, bytes_sent: int) -> int:
        """The last aggregate as a sealed adapter, judged by this robot's rule."""
        from daemon.adapters import import_candidate
        from trainer_core.bundle import seal_adapter

        out = self.cfg.runs_dir / f"fleet-{self.stamp}" / "aggregate"
        card = {
            "status": "done",
            "steps": self.steps,
            "episode_hashes": sorted(self.trained_hashes),
            "metrics": got.metrics.model_dump(mode="json"),
            "fleet": {
                "server_address": self.fleet.server_address,
                "round": got.round,
                "robot_id": self.robot_id,
                "bytes_sent": bytes_sent,
            },
        }
        model.write_adapter(got.weights, out, card)
        seal_adapter(out)
        self.status.note(phase="judging", last_result=f"judging the round {got.round} aggregate")
        verdict = import_candidate(
            self.cfg,
            out,
            f"fleet {self.fleet.server_address} round {got.round}",
            gate_open=self.poller.closed() is None,
            hold_lock=False,
            stop=lambda: self.poller.closed() is not None,
        )
        said = f"round {got.round} aggregate {verdict.action}"
        if verdict.release_id:
            said += f" as {verdict.release_id}"
        reasons = [r for r in verdict.reasons if r.startswith("FAIL")] or verdict.reasons[:1]
        self.status.note(
            phase="done",
            verdict=verdict.action,
            release=verdict.release_id,
            last_result=f"{said}: {reasons[0] if reasons else ''}",
            reasons=verdict.reasons,
        )
        print(f"fleet join: {said}", file=sys.stderr)
        for reason in verdict.reasons:
            print(f"  {reason}", file=sys.stderr)
        return 0 if verdict.action in ("promoted", "rejected") else 1
