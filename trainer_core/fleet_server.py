"""The fleet's server (``continuon-trainer fleet serve``): Flower's stock FedAvg over the robots'
LoRA tensors, a bounded number of rounds, failures accepted.

Flower's own ``start_server`` (flwr 1.x, grpc-bidi; why this transport: README "Fleet
learning") runs the rounds. :class:`LoggedFedAvg` is FedAvg unchanged (its sampling, weighting
by training samples and aggregation are Flower's); the overrides only record what each round
saw: which robots answered, which declined and why (a closed gate), the bytes they sent, their
held-out errors of the aggregate, and the round's wall time. The server never sees episodes, a
base or a robot's rule: it averages what the robots choose to send.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.server import ServerConfig, start_server
from flwr.server.strategy import FedAvg


def _robot(metrics: dict[str, Any] | None, fallback: str) -> str:
    value = (metrics or {}).get("robot")
    return str(value) if value is not None else fallback


def _declined(failure: Any) -> dict[str, str]:
    """A failed answer as {robot, reason}: a robot's decline says ``"<robot>: <why>"``."""
    if isinstance(failure, BaseException):
        return {"robot": "?", "reason": f"{type(failure).__name__}: {failure}"}
    proxy, res = failure
    robot, sep, why = (res.status.message or str(res.status.code)).partition(": ")
    return {"robot": robot, "reason": why} if sep else {"robot": proxy.cid, "reason": robot}


class LoggedFedAvg(FedAvg):
    """FedAvg with a round log (module docstring); ``on_round(entry)`` sees each finished one."""

    def __init__(self, rounds: int, on_round: Callable[[dict[str, Any]], None], **kw: Any):
        super().__init__(
            on_fit_config_fn=self._fit_config,
            on_evaluate_config_fn=self._eval_config,
            accept_failures=True,
            **kw,
        )
        self.rounds = rounds
        self.on_round = on_round
        self.log: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None

    def _fit_config(self, server_round: int) -> dict[str, Any]:
        self._close_round()
        self._current = {"round": server_round, "started_unix": time.time()}
        self._t0 = time.monotonic()
        return {"server_round": server_round, "rounds": self.rounds}

    def _eval_config(self, server_round: int) -> dict[str, Any]:
        return {"server_round": server_round, "rounds": self.rounds}

    def _close_round(self) -> None:
        if self._current is not None:
            self._current["wall_s"] = round(time.monotonic() - self._t0, 3)
            self.log.append(self._current)
            self.on_round(self._current)
            self._current = None

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
        """FedAvg's aggregation; records who answered, who declined and the bytes."""
        entry = self._current if self._current is not None else {"round": server_round}
        sent = {}
        for proxy, res in results:
            sent[_robot(res.metrics, proxy.cid)] = int(sum(len(t) for t in res.parameters.tensors))
        entry["trained"] = sorted(sent)
        entry["update_bytes"] = sent
        entry["declined"] = [_declined(f) for f in failures]
        entry["fit_done_s"] = round(time.monotonic() - self._t0, 3)
        return super().aggregate_fit(server_round, results, failures)

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> Any:
        """FedAvg's weighted loss; records each robot's held-out error of the aggregate."""
        entry = self._current if self._current is not None else {"round": server_round}
        entry["heldout_mse"] = {
            _robot(res.metrics, proxy.cid): {
                "aggregate": float(res.loss),
                "base": res.metrics.get("base_mse"),
            }
            for proxy, res in results
        }
        entry["not_scored"] = [_declined(f) for f in failures]
        out = super().aggregate_evaluate(server_round, results, failures)
        if server_round >= self.rounds:
            self._close_round()
        return out


def serve(
    address: str,
    rounds: int,
    min_clients: int,
    round_timeout_s: float,
    max_message_bytes: int,
    certificates: tuple[bytes, bytes, bytes] | None,
    on_round: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds on ``address`` and return the round log. Every round samples all
    connected robots (at least ``min_clients``, waited for); the starting weights come from one
    robot (fresh LoRA, i.e. the base: every robot makes the same)."""
    strategy = LoggedFedAvg(
        rounds,
        on_round,
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=min_clients,
        min_evaluate_clients=min_clients,
        min_available_clients=min_clients,
    )
    start_server(
        server_address=address,
        config=ServerConfig(num_rounds=rounds, round_timeout=round_timeout_s),
        strategy=strategy,
        grpc_max_message_length=max_message_bytes,
        certificates=certificates,
    )
    strategy._close_round()  # a last round whose evaluation got no answers at all
    return strategy.log
