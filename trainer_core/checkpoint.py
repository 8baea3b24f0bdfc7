"""Resume checkpoints: everything needed to continue a preempted job exactly, without pickle.

Layout of ``<run_dir>/checkpoint/`` (staged in a dot-directory and renamed into place):
``lora.safetensors`` (adapter weights), ``optimizer.safetensors`` (per-parameter optimiser
tensors), ``rng.safetensors`` (torch and numpy generator states) and ``state.json`` (step,
data cursor, logged losses, optimiser hyper-parameters, Python's RNG state and the
fingerprint). The fingerprint hashes the training data and every setting that changes the
trajectory; a checkpoint whose fingerprint differs from the new job's is discarded, not used.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trainer_core.fsio import atomic_write_json, fsync_dir, fsync_tree
from trainer_core.spec import JobSpec
from trainer_core.train import LoopState

FORMAT = 1
STATE_FILE = "state.json"
LORA_FILE = "lora.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the job starts afresh and says why."""


def fingerprint(spec: JobSpec, episode_hashes: list[str], base_sha256: str) -> str:
    """What must be equal for a resume to continue the same trajectory. Budgets, threads and
    device are left out: a resumed job may get a different budget."""
    job = spec.job
    identity = {
        "episodes": episode_hashes,
        "base_sha256": base_sha256,
        "features": spec.features.model_dump(mode="json"),
        "policy": spec.policy.model_dump(mode="json", exclude={"base_path"}),
        "lora": spec.lora.model_dump(mode="json"),
        "job": {
            k: getattr(job, k)
            for k in (
                "batch_size",
                "drop_last",
                "learning_rate",
                "weight_decay",
                "grad_clip",
                "seed",
                "log_every_steps",
            )
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, per_param in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(per_param)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    target: Path,
    lora: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    fp: str,
) -> None:
    """Write a complete checkpoint to ``target`` via a staging directory and one rename."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(lora, str(staging / LORA_FILE))
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_file(opt_tensors, str(staging / OPTIMIZER_FILE))
    np_state = np.random.get_state()
    save_file(
        {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        },
        str(staging / RNG_FILE),
    )
    py_state = random.getstate()
    atomic_write_json(
        staging / STATE_FILE,
        {
            "format": FORMAT,
            "fingerprint": fp,
            "step": state.step,
            "epoch": state.epoch,
            "batch": state.batch,
            "losses": state.losses,
            "loss_first": state.loss_first,
            "optimizer": opt_meta,
            "rng": {
                "numpy": {
                    "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]),
                    "cached_gaussian": float(np_state[4]),
                },
                "python": [py_state[0], list(py_state[1]), py_state[2]],
            },
        },
    )
    fsync_tree(staging)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    fsync_dir(target.parent)


@dataclass
class Checkpoint:
    """A loaded checkpoint, not yet applied."""

    path: Path
    state: LoopState
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    meta: dict[str, Any]
    rng: dict[str, torch.Tensor]


def load_checkpoint(path: Path, fp: str) -> Checkpoint:
    """Read a checkpoint and check it belongs to this job; raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path}: format {meta.get('format')} != {FORMAT}")
        if meta.get("fingerprint") != fp:
            raise CheckpointError(
                f"checkpoint {path} was made for other data or settings (fingerprint differs)"
            )
        state = LoopState(
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            batch=int(meta["batch"]),
            losses=[float(v) for v in meta["losses"]],
            loss_first=meta["loss_first"],
        )
        return Checkpoint(
            path=path,
            state=state,
            lora=load_file(str(path / LORA_FILE)),
            optimizer=_optimizer_from_files(
                load_file(str(path / OPTIMIZER_FILE)), meta["optimizer"]
            ),
            meta=meta,
            rng=load_file(str(path / RNG_FILE)),
        )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc!r}") from None


def restore_rng(ckpt: Checkpoint) -> None:
    """Put the torch, numpy and Python generators back where they were at the checkpoint."""
    torch.set_rng_state(ckpt.rng["torch"])
    np_meta = ckpt.meta["rng"]["numpy"]
    np.random.set_state(
        (
            "MT19937",
            ckpt.rng["numpy_keys"].numpy().astype(np.uint32),
            np_meta["pos"],
            np_meta["has_gauss"],
            np_meta["cached_gaussian"],
        )
    )
    version, internal, gauss = ckpt.meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
