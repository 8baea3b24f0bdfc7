"""The robot's side of a Flower fleet (``continuon-trainer fleet join``; README "Fleet learning").

:class:`FleetClient` is a Flower ``Client`` for the legacy ``start_client`` transport
(flwr 1.x ``flwr.client.start_client``; why that one: README). It never trains by itself: the
verb (``daemon/fleet.py``) hands it the gate and a ``train`` callable that runs one round in the
ordinary job child (``trainer_core.fleet_round``). A closed gate, a preempted or failed child,
or weights that do not fit this robot's LoRA layout answer the round with a non-OK status, so
the server's FedAvg (``accept_failures``) drops this robot from that round and goes on; an
exception would end the Flower client process instead (grpc-bidi does so).

:class:`RobotModel` is the torch side this process keeps: the base with LoRA attached, to make
the fleet's starting weights (fresh LoRA: exactly the base), to score an aggregate on this
robot's own held-out episodes, and to write the last aggregate as an adapter directory (the
release format) that the robot then judges like any candidate.

This module imports flwr and torch; only the ``fleet`` verbs import it, never the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import Client
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from trainer_core.spec import JobSpec


class LayoutError(ValueError):
    """Weights that do not fit this robot's LoRA tensors (another base or LoRA config)."""


@dataclass(frozen=True)
class Layout:
    """This robot's LoRA tensors, in the one order every robot sends them (sorted peft names)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, state: dict[str, np.ndarray]) -> Layout:
        names = tuple(sorted(state))
        return cls(names, tuple(tuple(state[n].shape) for n in names))

    def to_list(self, state: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The tensors as Flower's list of arrays."""
        return [np.asarray(state[n], dtype=np.float32) for n in self.names]

    def from_list(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Flower's list back to named tensors; raises :class:`LayoutError` when it does not fit."""
        if len(arrays) != len(self.names):
            raise LayoutError(f"{len(arrays)} tensors received, this robot's LoRA has {len(self)}")
        for name, shape, a in zip(self.names, self.shapes, arrays, strict=True):
            if tuple(a.shape) != shape:
                raise LayoutError(f"{name}: shape {tuple(a.shape)} received, this robot's {shape}")
            if not np.isfinite(a).all():
                raise LayoutError(f"{name}: non-finite values received")
        return {n: np.asarray(a, dtype=np.float32) for n, a in zip(self.names, arrays, strict=True)}

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of one float32 copy of the tensors (what one update carries)."""
        return sum(4 * int(np.prod(s)) for s in self.shapes)


class RobotModel:
    """The base with LoRA attached, and this robot's held-out episodes, loaded once."""

    def __init__(self, spec: JobSpec) -> None:
        import torch

        from trainer_core.base import load_base
        from trainer_core.features import action_bounds, bounded_safety, read_split
        from trainer_core.lora import attach_lora, lora_state

        torch.manual_seed(spec.job.seed)  # every robot of one config makes the same fresh LoRA
        self.spec = spec
        self.base = load_base(spec.base_path, spec.policy, spec.features)
        self.bare = load_base(spec.base_path, spec.policy, spec.features).model.eval()
        self.model = attach_lora(self.base.model, spec.lora).eval()
        self.fresh = {k: v.float().numpy() for k, v in lora_state(self.model).items()}
        self.layout = Layout.of(self.fresh)
        self.safety = bounded_safety(spec.features, spec.safety)
        bounds = action_bounds(spec.features, spec.safety.clamp_bounds)
        self.heldout = read_split(
            spec.eval_episodes, spec.features, spec.ingest, self.safety.proximity_path, None, bounds
        )

    @property
    def full_model_bytes(self) -> int:
        """Bytes of the base's weights plus the LoRA (what shipping the whole model would take)."""
        return 4 * sum(p.numel() for p in self.bare.parameters()) + self.layout.nbytes

    def _load(self, weights: dict[str, np.ndarray]) -> None:
        import torch

        from trainer_core.lora import load_lora_state

        load_lora_state(self.model, {k: torch.from_numpy(v.copy()) for k, v in weights.items()})

    def score(self, weights: dict[str, np.ndarray], stop: Callable[[], bool]) -> Any:
        """Shadow evaluation of ``weights`` against the bare base on this robot's held-out
        episodes (:class:`safety.metrics.EvalMetrics`); raises ``EvalInterrupted`` on ``stop``."""
        import torch

        from trainer_core.evaluate import Policy, shadow_eval

        self._load(weights)
        norm = self.base.normalizer
        return shadow_eval(
            self.heldout.arrays,
            self.heldout.episodes,
            Policy(self.bare, norm),
            "base",
            Policy(self.model, norm),
            norm,
            self.safety,
            torch.device("cpu"),
            stop,
        )

    def write_adapter(self, weights: dict[str, np.ndarray], out_dir: Path, card: dict) -> None:
        """``weights`` as an adapter directory (peft files, the base's normaliser, card.json)."""
        from trainer_core.job import adapter_card
        from trainer_core.lora import save_adapter

        self._load(weights)
        full = {
            **adapter_card(self.spec, out_dir.name, self.base.sha256),
            "family": self.spec.policy.family,
            "device": "cpu",
            "dtype": "float32",
            **card,
        }
        save_adapter(self.model, out_dir, self.base.normalizer, full)


@dataclass
class RoundOutcome:
    """One local round: the update (None when there is none) and what to report."""

    update: dict[str, np.ndarray] | None
    reason: str = ""
    samples: int = 0
    metrics: dict[str, float | int | str] = field(default_factory=dict)


@dataclass
class Received:
    """The latest aggregate this robot scored (the candidate, once the server stops)."""

    round: int
    weights: dict[str, np.ndarray]
    metrics: Any  # EvalMetrics


def _declined_fit(robot_id: str, reason: str) -> FitRes:
    # FIT_NOT_IMPLEMENTED is the only non-OK code a legacy fit answer can carry, and nothing but
    # the status travels with it: the message is "<robot>: <why>", as the server's log shows it.
    status = Status(Code.FIT_NOT_IMPLEMENTED, f"{robot_id}: {reason}")
    return FitRes(status, Parameters([], ""), 0, {})


def _declined_eval(robot_id: str, reason: str) -> EvaluateRes:
    return EvaluateRes(Status(Code.EVALUATE_NOT_IMPLEMENTED, f"{robot_id}: {reason}"), 0.0, 0, {})


class FleetClient(Client):
    """Answers the server's rounds inside the robot's rules (module docstring).

    ``closed()``: why the gate is closed now, or None while it is open. ``train(round, weights)``
    runs one local round and returns a :class:`RoundOutcome`. ``note(**fields)`` records what
    happens (the fleet status file)."""

    def __init__(
        self,
        robot_id: str,
        model: RobotModel,
        closed: Callable[[], str | None],
        train: Callable[[int, dict[str, np.ndarray]], RoundOutcome],
        note: Callable[..., None],
    ) -> None:
        self.robot_id = robot_id
        self.model = model
        self.closed = closed
        self.train = train
        self.note = note
        self.received: Received | None = None
        self.bytes_sent = 0

    def get_parameters(self, ins: GetParametersIns) -> GetParametersRes:
        """The fleet's starting point when the server asks this robot: fresh LoRA (the base)."""
        arrays = self.model.layout.to_list(self.model.fresh)
        return GetParametersRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays))

    def _weights(self, parameters: Parameters) -> dict[str, np.ndarray]:
        return self.model.layout.from_list(parameters_to_ndarrays(parameters))

    def fit(self, ins: FitIns) -> FitRes:
        """Train this robot's update from the global weights, or decline the round saying why."""
        rnd = int(ins.config.get("server_round", 0))
        self.note(rounds=ins.config.get("rounds"))
        reason = self.closed()
        if reason is None:
            try:
                weights = self._weights(ins.parameters)
            except LayoutError as exc:
                reason = f"weights do not fit: {exc}"
        if reason is not None:
            self.note(round=rnd, phase="declined", last_result=f"round {rnd} declined: {reason}")
            return _declined_fit(self.robot_id, reason)
        self.note(round=rnd, phase="training", last_result=f"round {rnd} training")
        try:
            outcome = self.train(rnd, weights)
        except Exception as exc:  # a full disk, a bug: this round fails, the session goes on
            outcome = RoundOutcome(None, f"local round could not run: {type(exc).__name__}: {exc}")
        if outcome.update is None:
            why = f"round {rnd} dropped: {outcome.reason}"
            self.note(round=rnd, phase="declined", last_result=why)
            return _declined_fit(self.robot_id, outcome.reason)
        arrays = self.model.layout.to_list(outcome.update)
        nbytes = sum(a.nbytes for a in arrays)
        self.bytes_sent += nbytes
        metrics = {"robot": self.robot_id, "update_bytes": nbytes, **outcome.metrics}
        self.note(
            round=rnd,
            phase="waiting",
            last_result=f"round {rnd} update sent ({nbytes} bytes)",
            update_bytes=nbytes,
        )
        return FitRes(
            Status(Code.OK, ""), ndarrays_to_parameters(arrays), max(1, outcome.samples), metrics
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        """Score the round's aggregate on this robot's held-out episodes (error in the base's
        yardstick units, and the bare base's beside it); keep it as the latest aggregate."""
        from trainer_core.evaluate import EvalInterrupted

        rnd = int(ins.config.get("server_round", 0))
        reason = self.closed()
        if reason is None:
            try:
                weights = self._weights(ins.parameters)
                metrics = self.model.score(weights, lambda: self.closed() is not None)
            except LayoutError as exc:
                reason = f"weights do not fit: {exc}"
            except EvalInterrupted:
                reason = f"gate closed during evaluation: {self.closed()}"
            except Exception as exc:  # an exception would end the grpc-bidi client: answer it
                reason = f"evaluation failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            self.note(round=rnd, phase="declined", last_result=f"round {rnd} not scored: {reason}")
            return _declined_eval(self.robot_id, reason)
        self.received = Received(rnd, weights, metrics)
        aggregate, base = metrics.candidate.mse, metrics.baseline.mse
        self.note(
            round=rnd,
            phase="waiting",
            last_result=f"round {rnd} aggregate: held-out error {aggregate:.4g} (base {base:.4g})",
            heldout_mse=aggregate,
            base_mse=base,
        )
        return EvaluateRes(
            Status(Code.OK, ""),
            float(aggregate),
            max(1, metrics.eval_steps),
            {"robot": self.robot_id, "base_mse": float(base)},
        )
