"""One fleet round in the job child: start from the fleet's global LoRA weights, train this
robot's update within the job budgets, write it as ``<run_dir>/update.safetensors``.

The child is the ordinary job child (``python -m trainer_core.job <run>/spec.json``, the spec's
``fleet_start`` set), so it is preempted, budgeted and supervised exactly as a local job: SIGTERM
stops it within one step. What differs: no shadow evaluation and no candidate (the update alone
is the output; the aggregate is judged later, as a candidate, on every robot), and the inputs are
scaled with the BASE's normaliser, not this robot's training statistics, so that an averaged
update means the same thing on every robot of the fleet.

The weight files hold only the LoRA tensors, keyed by their peft names; :func:`read_weights` and
:func:`write_weights` use ``safetensors.numpy`` so the Flower side never imports torch for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer_core.fsio import atomic_write_bytes

UPDATE_FILE = "update.safetensors"
START_FILE = "global.safetensors"


def write_weights(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """LoRA tensors to a safetensors file, atomically (the other process reads it whole)."""
    from safetensors.numpy import save

    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """LoRA tensors from a safetensors file (no pickle, no torch)."""
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def run_round(recipe: Any) -> None:
    """The round, phase by phase, on a :class:`trainer_core.job.Recipe`; fills its result."""
    import torch

    from trainer_core.job import InvalidJob, emit
    from trainer_core.lora import LoraError, load_lora_state, lora_state

    spec, result = recipe.spec, recipe.result
    recipe.setup()
    recipe.load_data()
    recipe.load_models()
    recipe.normalizer = recipe.base.normalizer  # the fleet's shared units (module docstring)
    recipe.fp = f"fleet-round:{spec.run_id}"  # never resumed: a round starts from the global
    try:
        start = {k: torch.from_numpy(v) for k, v in read_weights(spec.fleet_start).items()}
        load_lora_state(recipe.model, {k: v.to(recipe.device) for k, v in start.items()})
    except (OSError, ValueError, LoraError) as exc:  # safetensors raises its own ValueError kinds
        raise InvalidJob(f"fleet global weights {spec.fleet_start} unusable: {exc}") from None
    if not recipe.train():
        return
    update = {k: v.float().numpy() for k, v in lora_state(recipe.model).items()}
    target = spec.run_dir / UPDATE_FILE
    write_weights(target, update)
    result.candidate_path = target
    nbytes = sum(a.nbytes for a in update.values())
    result.notes.append(f"fleet update: {len(update)} LoRA tensors, {nbytes} bytes")
    emit({"event": "fleet_update", "path": str(target), "bytes": nbytes})
