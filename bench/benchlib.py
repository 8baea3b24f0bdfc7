"""What the training benchmarks share: the bare reference loop, the alternated timer, figures.

    from benchlib import bare_loop, loop_vs_bare, figure, print_figures

``loop_vs_bare`` times ``train_loop`` against :func:`bare_loop` (what a person would write by
hand: same model, batch, data, AdamW, grad clipping) alternately in one process and returns the
medians, so drifting machine load hits both alike. Not a ``bench_*.py``: run_all.py skips it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

BatchOf = Callable[[torch.Tensor], tuple[tuple[Any, ...], torch.Tensor]]


def tensor_batches(x: torch.Tensor, y: torch.Tensor) -> BatchOf:
    """``batch_of`` for a plain (observations, actions) pair of tensors."""
    return lambda idx: ((x[idx],), y[idx])


def bare_loop(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    n: int,
    batch_of: BatchOf,
    steps: int,
    batch: int,
    clip: float,
    seed: int,
) -> None:
    """The hand-written reference: seeded shuffles per epoch, MSE, AdamW step, grad clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_epoch = n // batch
    epoch, b = 0, 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        if b >= per_epoch:
            epoch, b = epoch + 1, 0
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        args, target = batch_of(perm[b * batch : (b + 1) * batch])
        b += 1
        loss = F.mse_loss(model(*args), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    loss.item()


def run_train_loop(model: torch.nn.Module, x: Any, y: torch.Tensor, job: Any) -> float:
    """Seconds for ``train_loop`` to run ``job.max_steps`` steps on a fresh optimiser."""
    from trainer_core.train import Budget, LoopState, make_optimizer, train_loop

    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], job)
    t = time.perf_counter()
    train_loop(model, opt, x, y, job, LoopState(), Budget(job, t, lambda: False), lambda e: None)
    return time.perf_counter() - t


def loop_vs_bare(
    make_model: Callable[[], torch.nn.Module],
    x: Any,
    y: torch.Tensor,
    batch_of: BatchOf,
    job: Any,
    repeats: int,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """(train_loop samples/s, bare loop samples/s): medians of ``repeats`` alternated runs."""
    from trainer_core.train import make_optimizer

    steps, batch = job.max_steps, min(job.batch_size, len(y))
    ours, bare = [], []
    for r in range(repeats):
        for which in ("ours", "bare"):
            model = make_model()
            if which == "ours":
                seconds = run_train_loop(model, x, y, job)
            else:
                opt = make_optimizer([p for p in model.parameters() if p.requires_grad], job)
                t = time.perf_counter()
                bare_loop(model, opt, len(y), batch_of, steps, batch, job.grad_clip, r)
                seconds = time.perf_counter() - t
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize()
            (ours if which == "ours" else bare).append(steps * batch / seconds)
    return statistics.median(ours), statistics.median(bare)


def figure(
    name: str, value: float, unit: str, target: str = "informational", ok: bool | None = None
) -> dict:
    """One entry of the bench protocol's figures list."""
    return {"name": name, "value": round(value, 3), "unit": unit, "target": target, "pass": ok}


def print_figures(figures: list[dict]) -> None:
    """The bench protocol's last stdout line."""
    print(json.dumps({"figures": figures}))
