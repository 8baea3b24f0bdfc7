"""Train a robot's LoRA adapter off the robot: the job child's recipe under ``torchrun``.

::

    continuon-trainer export --out BUNDLE                          # on the robot
    torchrun --nproc_per_node=N -m trainer_core.distributed BUNDLE --out ADAPTER [--steps S]
    continuon-trainer adapters import ADAPTER                      # on the robot again

The same :class:`~trainer_core.job.Recipe` phases as on the robot (setup, load_data,
load_models, train, evaluate, save_candidate), with three differences:

* **Data parallel**: the model is wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on
  CUDA) for the train phase; a ``DistributedSampler`` over the bundle's *train episodes* gives
  each rank its episodes (every rank fits the normaliser on all of them, so they agree). The
  batch size is per rank: one step sees ``N x job.batch_size`` samples.
* **Collective budgets**: the wall-time/RSS/SIGTERM checks are all-reduced every step, so every
  rank stops at the same step (a rank leaving alone would hang the others in the all-reduce).
* **Rank 0 writes**: it evaluates against the bundle's release (the robot's current one) on
  the bundle's held-out episodes (an indication only: the robot judges again on its own), saves
  the candidate exactly as the job child does, and seals it (sha256 checksums in its card) at
  ``--out``. Its run files (spec.json, result.json) go to ``<out>.run/``.

Seeds are the job's on every rank (identical LoRA initialisation; DDP broadcasts rank 0's
anyway). Without ``torchrun`` (no ``WORLD_SIZE``) it runs as one process, without DDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from trainer_core.bundle import BundleError, read_bundle, seal_adapter
from trainer_core.fsio import staged_dir
from trainer_core.job import (
    CANDIDATE_DIR,
    InvalidJob,
    PreemptedNow,
    Preemption,
    Recipe,
    _write_result,
    emit,
)
from trainer_core.spec import JobResult, JobSpec

STOP_KINDS = ("", "budget", "preempted")  # all-reduced with MAX: any rank's stop wins


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the run (torchrun's environment)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> World:
        """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process without them."""
        return cls(
            int(environ.get("RANK", 0)),
            int(environ.get("WORLD_SIZE", 1)),
            int(environ.get("LOCAL_RANK", 0)),
        )

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process (DDP and collectives are used)."""
        return self.size > 1


def shard_episodes(n: int, world: World, seed: int) -> list[int]:
    """The train episode indices of this rank: torch's DistributedSampler (shuffled by the
    seed, padded so every rank has as many)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(
        range(n), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed
    )
    return sorted(set(sampler))


def episode_rows(episode_start: Any, chosen: list[int]) -> Any:
    """Row indices (numpy) of the chosen episodes, given each row's start-of-episode flag."""
    import numpy as np

    episode_of_row = np.cumsum(episode_start) - 1
    return np.flatnonzero(np.isin(episode_of_row, chosen))


def spec_from_bundle(
    bundle_dir: Path, run_dir: Path, overrides: dict[str, Any], device: str
) -> JobSpec:
    """The job the bundle describes, its paths pointing into the bundle."""
    b = read_bundle(bundle_dir)
    cfg = b.meta["config"]
    policy = {**cfg["policy"], "base_path": str(b.base_path)}
    job = {**cfg["job"], **{k: v for k, v in overrides.items() if v is not None}}
    job["device"] = device
    return JobSpec.model_validate(
        {
            "run_id": run_dir.name,
            "run_dir": str(run_dir),
            "train_episodes": [str(p) for p in b.paths("train")],
            "eval_episodes": [str(p) for p in b.paths("eval")],
            "base_path": str(b.base_path),
            "baseline_adapter": str(b.release_dir) if b.release_dir else None,
            "baseline_id": b.release_id,
            "features": cfg["features"],
            "policy": policy,
            "lora": cfg["lora"],
            "job": job,
            "ingest": cfg["ingest"],
            "safety": cfg["safety"],
        }
    )


class CollectiveBudget:
    """The job's :class:`~trainer_core.train.Budget`, decided for all ranks at once."""

    def __init__(self, local: Any) -> None:
        self.local = local

    def __getattr__(self, name: str) -> Any:  # t0, max_step_s, stopped_at_s: the local one's
        return getattr(self.local, name)

    def check(self) -> Any:
        """Every rank's check, all-reduced (MAX): one rank's stop stops them all, same step."""
        import torch
        import torch.distributed as dist

        from trainer_core.train import Stop

        stop = self.local.check()
        kind = torch.tensor([STOP_KINDS.index(stop.kind) if stop else 0])
        dist.all_reduce(kind, op=dist.ReduceOp.MAX)
        if int(kind) == 0:
            return None
        if stop is None:
            stop = Stop(STOP_KINDS[int(kind)], f"{STOP_KINDS[int(kind)]}: stopped by another rank")
            self.local.stopped_at_s = time.monotonic() - self.local.t0
        return stop


class DistributedRecipe(Recipe):
    """The job's recipe with a data-parallel train phase (see the module docstring)."""

    def __init__(self, world: World, *args: Any) -> None:
        super().__init__(*args)
        self.world = world
        self.shard: Any = None

    def setup(self) -> None:
        """Threads, seeds and device as on the robot; on CUDA, this rank's own GPU."""
        import torch

        super().setup()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.world.local_rank)
            self.device = torch.device("cuda", self.world.local_rank)
            self.placement = dataclasses.replace(self.placement, device=self.device)

    def load_data(self) -> None:
        """Every rank reads the whole train split (one normaliser for all), then keeps its
        sampler's episodes for training."""
        super().load_data()
        arrays = self.train_split.arrays
        if arrays.frames is not None:
            raise InvalidJob("camera bundles are not supported by trainer_core.distributed yet")
        n = len(self.train_split.paths)
        if n < self.world.size:
            raise InvalidJob(f"{n} train episodes for {self.world.size} processes")
        rows = episode_rows(arrays.episode_start, shard_episodes(n, self.world, self.spec.job.seed))
        self.shard = dataclasses.replace(
            arrays,
            obs=arrays.obs[rows],
            act=arrays.act[rows],
            proximity=arrays.proximity[rows],
            episode_start=arrays.episode_start[rows],
        )
        self.result.notes.append(
            f"rank {self.world.rank}/{self.world.size}: {len(rows)} of {len(arrays)} samples"
        )

    def make_budget(self) -> Any:
        """The local checks, made collective when there are several ranks."""
        local = super().make_budget()
        return CollectiveBudget(local) if self.world.distributed else local

    def train(self) -> bool:
        """The recipe's train phase on this rank's shard, the model wrapped in DDP."""
        full, model = self.train_split, self.model
        self.train_split = dataclasses.replace(full, arrays=self.shard)
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        try:
            return super().train()
        finally:
            self.train_split, self.model = full, model

    def _preempted(self, reason: str) -> None:
        """No resume checkpoint off the robot (v1): the run is simply started again."""
        self.result.status, self.result.reason = "preempted", reason


def publish_adapter(candidate: Path, out: Path, extra: dict[str, Any]) -> None:
    """Copy the job's candidate to ``out`` with ``extra`` in its card, sealed, renamed into
    place (a folder at ``out`` is always a whole adapter)."""
    with staged_dir(out) as staging:
        shutil.copytree(candidate, staging, dirs_exist_ok=True)
        card_path = staging / "card.json"
        card = json.loads(card_path.read_text(encoding="utf-8"))
        card.update(extra)
        card_path.write_text(json.dumps(card, indent=2), encoding="utf-8")
        seal_adapter(staging)


def train_bundle(
    bundle: Path, out: Path, overrides: dict[str, Any], world: World, preempt: Preemption
) -> JobResult:
    """The whole run on this rank; rank 0 returns the result with the adapter at ``out``."""
    import torch
    import torch.distributed as dist

    t0 = time.monotonic()
    cuda = torch.cuda.is_available() and overrides.pop("device", "auto") != "cpu"
    backend = "nccl" if cuda else "gloo"
    if world.distributed:
        dist.init_process_group(backend)
    run_dir = out.parent / f"{out.name}.run" / f"rank{world.rank}"
    result = JobResult(run_id=out.name, status="crashed")
    try:
        spec = spec_from_bundle(bundle, run_dir, overrides, "cuda" if cuda else "cpu")
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe = DistributedRecipe(world, spec, result, t0, preempt)
        recipe.setup()
        recipe.load_data()
        recipe.load_models()
        trained = recipe.train()
        if world.distributed:
            dist.barrier()
        if world.rank != 0 or not trained:
            return result
        if not recipe.evaluate():
            return result
        recipe.save_candidate()
        steps = result.steps - result.resumed_from_step
        samples = steps * min(spec.job.batch_size, len(recipe.shard)) * world.size
        publish_adapter(
            spec.run_dir / CANDIDATE_DIR,
            out,
            {
                "trained_off_robot": {
                    "bundle": str(Path(bundle).absolute()),
                    "bundle_release": spec.baseline_id,
                    "processes": world.size,
                    "backend": backend if world.distributed else "none",
                    "global_batch": min(spec.job.batch_size, len(recipe.shard)) * world.size,
                    "samples_per_s": round(samples / max(result.timings["train_s"], 1e-9), 1),
                }
            },
        )
        return result
    finally:
        if run_dir.is_dir():
            _write_result(run_dir, result)
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer_core.distributed BUNDLE --out DIR`` (under torchrun or alone)."""
    import signal

    parser = argparse.ArgumentParser(prog="python -m trainer_core.distributed")
    parser.add_argument("bundle", type=Path, help="from `continuon-trainer export --out`")
    parser.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the bundle's job)")
    parser.add_argument("--batch-size", type=int, help="per process (default: the bundle's)")
    parser.add_argument("--learning-rate", type=float, help="default: the bundle's")
    parser.add_argument("--seed", type=int, help="default: the bundle's")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: 1)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument(
        "--max-wall-time-s", type=float, default=86_400.0, help="stop (all ranks) after this"
    )
    parser.add_argument("--max-rss-mb", type=float, default=1e9, help="per process")
    args = parser.parse_args(argv)
    world = World.from_env()
    out = args.out.absolute()
    if out.exists():  # every rank looks: one leaving alone would hang the others
        print(f"{out} exists: choose a new folder", file=sys.stderr)
        return 2
    preempt = Preemption()
    preempt.abort_immediately = False  # collectives need every rank to reach the same step
    signal.signal(signal.SIGTERM, preempt.handler)
    overrides = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "threads": args.threads,
        "max_wall_time_s": args.max_wall_time_s,
        "max_rss_mb": args.max_rss_mb,
        "device": args.device,
    }
    try:
        result = train_bundle(args.bundle, out, overrides, world, preempt)
    except (BundleError, InvalidJob) as exc:
        print(f"rank {world.rank}: {exc}", file=sys.stderr)
        return 3
    except PreemptedNow:
        return 5
    if world.rank != 0:
        return 0
    if not out.is_dir():
        print(f"no adapter: {result.status}: {result.reason}", file=sys.stderr)
        return 1
    emit({"event": "adapter", "path": str(out), "steps": result.steps, "status": result.status})
    print(f"wrote adapter {out}; on the robot: continuon-trainer adapters import {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
