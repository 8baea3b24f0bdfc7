"""The training loop: in-memory tensors, seeded shuffles, AdamW, budgets checked every step.

Read it top to bottom. The model is tiny, so the loop is overhead-bound: no per-step Python
beyond the essentials, and ``.item()`` (a device sync) only on log steps. Everything needed to
resume exactly lives in :class:`LoopState` plus the optimiser and RNG states: the shuffle order
is a pure function of (seed, epoch), so a cursor (epoch, batch) pins the data position.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer_core.config import JobConfig
from trainer_core.inputs import ModelInputs, batch_of

Emit = Callable[[dict[str, Any]], None]


@dataclass
class LoopState:
    """Where training is: steps done, data cursor, logged losses."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of this epoch already taken
    losses: list[float] = field(default_factory=list)
    loss_first: float | None = None


@dataclass
class Stop:
    """Why the loop stopped early: ``kind`` is ``preempted`` or ``budget``."""

    kind: str
    reason: str


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Budget:
    """The step-granular checks: preemption flag, wall-clock deadline, peak RSS.

    ``t0`` is the child's start (``time.monotonic()``), so the wall budget covers start-up too.
    """

    def __init__(self, job: JobConfig, t0: float, preempted: Callable[[], bool]) -> None:
        self.deadline = t0 + job.max_wall_time_s
        self.max_wall_time_s = job.max_wall_time_s
        self.max_rss_mb = job.max_rss_mb
        self.t0 = t0
        self.preempted = preempted
        self.last = time.monotonic()
        self.max_step_s = 0.0
        self.stopped_at_s: float | None = None

    def check(self) -> Stop | None:
        """Call once per step; returns a :class:`Stop` when the job must end now."""
        now = time.monotonic()
        self.max_step_s = max(self.max_step_s, now - self.last)
        self.last = now
        stop = None
        if self.preempted():
            stop = Stop("preempted", "preempted by SIGTERM")
        elif now >= self.deadline:
            stop = Stop(
                "budget",
                f"max_wall_time_s {self.max_wall_time_s:g} reached ({now - self.t0:.2f} s)",
            )
        else:
            rss = peak_rss_mb()
            if rss > self.max_rss_mb:
                stop = Stop("budget", f"peak RSS {rss:.0f} MB over max_rss_mb {self.max_rss_mb:g}")
        if stop is not None:
            self.stopped_at_s = now - self.t0
        return stop


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The shuffle of one epoch: a pure function of (seed, epoch), so resuming needs no state."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def make_optimizer(params: list[nn.Parameter], job: JobConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` with the job's learning rate and weight decay."""
    return torch.optim.AdamW(params, lr=job.learning_rate, weight_decay=job.weight_decay)


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor | ModelInputs,
    y: torch.Tensor,
    job: JobConfig,
    state: LoopState,
    budget: Budget,
    emit: Emit,
    bf16: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Stop | None:
    """Train until ``job.max_steps`` (returns None) or a budget/preemption stop (returns it).

    ``x``/``y`` are normalised observations (a tensor, or :class:`ModelInputs` with frames)
    and actions, already on the model's device;
    ``loss_fn`` (a plug-in's) replaces the mean squared error.
    """
    loss_fn = loss_fn or F.mse_loss
    n = len(x)
    batch_size = min(job.batch_size, n)
    batches_per_epoch = n // batch_size if job.drop_last else math.ceil(n / batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if bf16 and x.device.type == "cuda"
        else contextlib.nullcontext()
    )
    perm = epoch_permutation(n, job.seed, state.epoch, x.device)
    model.train()
    t_log, step_log = time.monotonic(), state.step
    while state.step < job.max_steps:
        if state.batch >= batches_per_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
            perm = epoch_permutation(n, job.seed, state.epoch, x.device)
        idx = perm[state.batch * batch_size : (state.batch + 1) * batch_size]
        state.batch += 1

        args, target = batch_of(x, y, idx, state.epoch * 1_000_003 + state.batch)
        with autocast:
            loss = loss_fn(model(*args).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, job.grad_clip)
        optimizer.step()
        state.step += 1

        if state.step == 1 or state.step % job.log_every_steps == 0 or state.step == job.max_steps:
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"loss became {value} at step {state.step}")
            if state.loss_first is None:
                state.loss_first = value
            state.losses.append(value)
            now = time.monotonic()
            emit(
                {
                    "event": "progress",
                    "step": state.step,
                    "max_steps": job.max_steps,
                    "loss": value,
                    "elapsed_s": round(now - budget.t0, 3),
                    "samples_per_s": round(
                        (state.step - step_log) * batch_size / max(now - t_log, 1e-9), 1
                    ),
                }
            )
            t_log, step_log = now, state.step
        stop = budget.check()
        if stop is not None:
            return stop
    return None
