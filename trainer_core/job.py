"""The job child: ``python -m trainer_core.job <run_dir>/spec.json``.

One bounded, preemptible run: read the train split, load and verify the base, attach LoRA,
resume if an earlier checkpoint fits, train within the budgets, replay the held-out split
through baseline and candidate (shadow evaluation), stage the candidate, write ``result.json``
atomically, exit with an :class:`~trainer_core.spec.ExitCode`. Progress is JSON lines on stdout.

SIGTERM before training starts aborts at once (nothing to save); during training it sets a flag
the loop checks after every step, then a resume checkpoint is written; during evaluation the
flag is checked between chunks and the training state is checkpointed. Torch is imported only
after the signal handler is in place, so even a slow start-up can be preempted.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from trainer_core.fsio import atomic_write_json, fsync_dir, fsync_tree
from trainer_core.spec import (
    CANDIDATE_DIR,
    CHECKPOINT_DIR,
    RESULT_FILE,
    ExitCode,
    JobResult,
    JobSpec,
)

EXIT_FOR_STATUS = {
    "done": ExitCode.DONE,
    "budget": ExitCode.BUDGET,
    "preempted": ExitCode.PREEMPTED,
    "invalid": ExitCode.INVALID,
    "crashed": ExitCode.CRASHED,
}


class InvalidJob(Exception):
    """The spec, base or data cannot make a job; retrying the same input will not help."""


class PreemptedNow(BaseException):
    """SIGTERM before training began: unwind at once (BaseException so nothing swallows it)."""


class Preemption:
    """SIGTERM/SIGINT handling that depends on the phase: abort during start-up, flag later."""

    def __init__(self) -> None:
        self.requested = False
        self.abort_immediately = True

    def handler(self, signum: int, frame: Any) -> None:
        """SIGTERM handler: note the request; abort at once while training has not begun."""
        self.requested = True
        if self.abort_immediately:
            raise PreemptedNow

    def __call__(self) -> bool:
        return self.requested


def emit(event: dict[str, Any]) -> None:
    """One JSON progress line on stdout; a vanished reader must not crash the job."""
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        print(json.dumps(event), flush=True)


def _stage_dir(run_dir: Path, name: str) -> Path:
    staging = run_dir / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, target: Path) -> None:
    """Rename a fully written, fsynced staging tree into place (a reader sees all or nothing)."""
    for f in staging.iterdir():
        f.chmod(0o644)  # peft writes its weights 0600; the robot runtime must read them
    fsync_tree(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    fsync_dir(target.parent)


def adapter_card(spec: JobSpec, run_id: str, base_sha256: str) -> dict[str, Any]:
    """What every adapter's ``card.json`` says about where it comes from (kind, base, configs);
    the maker adds its own numbers (a job: steps, metrics, timings; a fleet: its rounds)."""
    return {
        "kind": "continuon-lora-adapter",
        "run_id": run_id,
        "created_unix": time.time(),
        "base_path": str(spec.base_path),
        "base_sha256": base_sha256,
        "policy": spec.policy.model_dump(mode="json"),
        "features": spec.features.model_dump(mode="json"),
        "lora": spec.lora.model_dump(mode="json"),
    }


def frame_cache_for(spec: JobSpec) -> Path | None:
    """The shared decoded-frame cache of a camera job (``<state>/frames``), else None."""
    from trainer_core.frame_cache import cache_dir_for

    return cache_dir_for(spec.run_dir) if spec.features.images else None


class Recipe:
    """The job's phases, in order, sharing one state (torchtune style): :meth:`setup`,
    :meth:`load_data`, :meth:`load_models`, :meth:`resume`, :meth:`train`, :meth:`evaluate`,
    :meth:`save_candidate`. Each fills ``result`` as it goes, so a crash still reports what
    happened. Torch is imported inside the phases: only after the SIGTERM handler exists (torch
    and peft take seconds to import)."""

    def __init__(self, spec: JobSpec, result: JobResult, t0: float, preempt: Preemption) -> None:
        self.spec, self.result, self.t0, self.preempt = spec, result, t0, preempt
        self.device: Any = None
        self.placement: Any = None  # trainer_core.device.Placement
        self.train_split: Any = None  # trainer_core.features.Split
        self.normalizer: Any = None
        self.base: Any = None  # trainer_core.base.LoadedBase
        self.model: Any = None
        self.baseline: Any = None  # trainer_core.evaluate.Policy
        self.baseline_kind = "base"
        self.optimizer: Any = None
        self.state: Any = None  # trainer_core.train.LoopState
        self.fp = ""
        self.metrics: Any = None
        self.bounds: dict[str, tuple[float, float]] = {}  # every action name's, from load_data
        self.safety = spec.safety  # with those bounds filled in, from load_data

    def setup(self) -> None:
        """Threads, device and seeds."""
        import random

        import numpy as np
        import torch

        from trainer_core.device import DeviceError, pick_device

        job = self.spec.job
        torch.set_num_threads(job.threads)
        try:
            self.placement = pick_device(job)
        except DeviceError as exc:
            raise InvalidJob(str(exc)) from None
        self.device = self.placement.device
        self.result.device = self.device.type
        random.seed(job.seed)
        np.random.seed(job.seed)
        torch.manual_seed(job.seed)

    def load_data(self) -> None:
        """Read the train split (skipping bad episodes with their reasons) and fit the
        normaliser; the result reports what was actually read (its content hashes)."""
        from trainer_core.episode_risk import episode_risk
        from trainer_core.features import Normalizer, read_split

        spec, result = self.spec, self.result
        emit({"event": "phase", "phase": "load"})
        self.resolve_bounds()
        train = read_split(
            spec.train_episodes,
            spec.features,
            spec.ingest,
            self.safety.proximity_path,
            frame_cache_for(spec),
            self.bounds,
        )
        result.skipped.update(train.skipped)
        if len(train.arrays) == 0:
            first = "; ".join(f"{p}: {r}" for p, r in list(train.skipped.items())[:3])
            raise InvalidJob(
                f"no usable train episodes ({len(spec.train_episodes)} given"
                + (f"; {first}" if first else "")
                + ")"
            )
        result.train_episodes = len(train.paths)
        result.train_samples = len(train.arrays)
        result.episode_hashes = train.hashes
        self.train_split = train
        if train.arrays.frames is not None:  # keep this job's frames, drop the oldest others
            from trainer_core.frame_cache import prune

            prune(frame_cache_for(spec), keep=train.arrays.frames.parts)
        result.episode_risk = episode_risk(train, list(spec.features.action_names), self.safety)
        obs_names, act_names = spec.features.observation_names, spec.features.action_names
        self.normalizer = Normalizer.fit(train.arrays, obs_names, act_names)

    def resolve_bounds(self) -> None:
        """Every action name bounded (safety.clamp_bounds, else features.bounds), or no job."""
        from trainer_core.features import action_bounds, bounded_safety

        spec = self.spec
        try:
            self.bounds = action_bounds(spec.features, spec.safety.clamp_bounds)
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None
        self.safety = bounded_safety(spec.features, spec.safety)

    def load_models(self) -> None:
        """The base with LoRA attached (to train), and the baseline to judge it against."""
        from trainer_core.base import BaseError, load_base
        from trainer_core.lora import LoraError, attach_lora
        from trainer_core.train import LoopState

        spec, device = self.spec, self.device
        try:
            self.base = load_base(spec.base_path, spec.policy, spec.features)
            self.model = attach_lora(self.base.model, spec.lora).to(device)
            self.load_baseline()
        except (BaseError, LoraError) as exc:
            raise InvalidJob(str(exc)) from None
        self.optimizer = self._fresh_optimizer()
        self.state = LoopState()

    def load_baseline(self) -> None:
        """The release (or bare base) the candidate is judged against, on a fresh base copy."""
        from trainer_core.base import load_base
        from trainer_core.evaluate import Policy
        from trainer_core.lora import load_adapter

        spec, device = self.spec, self.device
        fresh = load_base(spec.base_path, spec.policy, spec.features).model
        if spec.baseline_adapter is not None:
            model, norm, _ = load_adapter(fresh, spec.baseline_adapter, self.base.sha256)
            self.baseline = Policy(model.to(device), norm)
            self.baseline_kind = f"adapter:{spec.baseline_id or spec.baseline_adapter.name}"
        else:
            self.baseline = Policy(fresh.to(device), self.base.normalizer)
            self.baseline_kind = "base"

    def _fresh_optimizer(self) -> Any:
        from trainer_core.lora import trainable_parameters
        from trainer_core.train import make_optimizer

        return make_optimizer(trainable_parameters(self.model), self.spec.job)

    def resume(self) -> None:
        """Continue from the spec's checkpoint if it belongs to this job; a checkpoint that
        fails half-way through being applied leaves no trace."""
        import random

        import numpy as np
        import torch

        from trainer_core import checkpoint as ckpt_mod
        from trainer_core.lora import LoraError, load_lora_state, lora_state

        spec, result, device = self.spec, self.result, self.device
        self.fp = ckpt_mod.fingerprint(spec, self.train_split.hashes, self.base.sha256)
        if spec.resume_from is None:
            return
        fresh = (
            lora_state(self.model),
            torch.get_rng_state(),
            np.random.get_state(),
            random.getstate(),
        )
        try:
            ckpt = ckpt_mod.load_checkpoint(spec.resume_from, self.fp)
            load_lora_state(self.model, {k: v.to(device) for k, v in ckpt.lora.items()})
            self.optimizer.load_state_dict(ckpt.optimizer)
            ckpt_mod.restore_rng(ckpt)
            self.state = ckpt.state
            result.resumed_from_step = self.state.step
            result.notes.append(f"resumed from {spec.resume_from} at step {self.state.step}")
        except (ckpt_mod.CheckpointError, LoraError, ValueError, KeyError, RuntimeError) as exc:
            load_lora_state(self.model, {k: v.to(device) for k, v in fresh[0].items()})
            self.optimizer = self._fresh_optimizer()
            torch.set_rng_state(fresh[1])
            np.random.set_state(fresh[2])
            random.setstate(fresh[3])
            result.notes.append(f"resume checkpoint discarded: {exc}")

    def camera_inputs(self, x: Any) -> Any:
        """Frames joined to the numeric inputs (camera policies); trunk features once per frame
        when LoRA lies above a frozen trunk (the note and its time go in the result)."""
        from trainer_core.inputs import training_inputs

        spec, t = self.spec, time.monotonic()
        x, note = training_inputs(
            self.model,
            self.train_split.arrays,
            x,
            spec.features,
            spec.lora.target_modules,
            self.normalizer,
            spec.job.seed,
        )
        if note:
            self.result.notes.append(note)
            self.result.timings["trunk_cache_s"] = round(time.monotonic() - t, 3)
        return x

    def train(self) -> bool:
        """Train within the budgets; False when there is nothing to evaluate (preempted, with a
        resume checkpoint written, or no step ran)."""
        import torch

        from trainer_core.plugins import extras
        from trainer_core.train import train_loop

        result, job, state = self.result, self.spec.job, self.state
        arrays = self.train_split.arrays
        x = torch.from_numpy(self.normalizer.norm_obs(arrays.obs)).to(self.device)
        y = torch.from_numpy(self.normalizer.norm_act(arrays.act)).to(self.device)
        x = self.camera_inputs(x)
        self.preempt.abort_immediately = False
        if self.preempt.requested:  # arrived between the last check and here
            raise PreemptedNow
        emit({"event": "phase", "phase": "train"})
        t_train = time.monotonic()
        result.timings["startup_s"] = round(t_train - self.t0, 3)
        budget = self.make_budget()
        stop = train_loop(
            self.model,
            self.optimizer,
            x,
            y,
            job,
            state,
            budget,
            emit,
            bf16=self.placement.bf16,
            loss_fn=extras(self.base.model).loss,
        )
        result.timings["train_s"] = round(time.monotonic() - t_train, 3)
        result.timings["max_step_s"] = round(budget.max_step_s, 4)
        if budget.stopped_at_s is not None:
            result.timings["stopped_at_s"] = round(budget.stopped_at_s, 3)
        result.steps = state.step
        result.losses = state.losses
        result.loss_first = state.loss_first
        result.loss_last = state.losses[-1] if state.losses else None
        if stop is not None and stop.kind == "preempted":
            self._preempted(stop.reason)
            return False
        result.status = "budget" if stop is not None else "done"
        result.reason = stop.reason if stop is not None else ""
        if state.step == 0:
            result.reason += "; no step ran, no candidate"
            return False
        return True

    def make_budget(self) -> Any:
        """The step-granular budget checks (trainer_core.distributed makes them collective)."""
        from trainer_core.train import Budget

        return Budget(self.spec.job, self.t0, self.preempt)

    def _preempted(self, reason: str) -> None:
        """Write the resume checkpoint and report the preemption."""
        from trainer_core import checkpoint as ckpt_mod
        from trainer_core.lora import lora_state

        target = self.spec.run_dir / CHECKPOINT_DIR
        ckpt_mod.save_checkpoint(
            target, lora_state(self.model), self.optimizer, self.state, self.fp
        )
        self.result.checkpoint_path = target
        emit({"event": "checkpoint", "step": self.state.step, "path": str(target)})
        self.result.status, self.result.reason = "preempted", reason

    def evaluate(self) -> bool:
        """Shadow evaluation: replay the held-out split through baseline and candidate. False
        when preempted meanwhile (checked between episodes read and between forward chunks)."""
        from trainer_core.evaluate import EvalInterrupted, Policy, shadow_eval
        from trainer_core.features import read_split

        spec, result = self.spec, self.result
        emit({"event": "phase", "phase": "eval"})
        t_eval = time.monotonic()
        evals = read_split(
            spec.eval_episodes,
            spec.features,
            spec.ingest,
            self.safety.proximity_path,
            frame_cache_for(spec),
            self.bounds,
            stop=self.preempt,
        )
        result.skipped.update(evals.skipped)
        try:
            if self.preempt.requested:  # while the held-out episodes were read
                raise EvalInterrupted
            self.metrics = shadow_eval(
                evals.arrays,
                evals.episodes,
                self.baseline,
                self.baseline_kind,
                Policy(self.model, self.normalizer),
                self.base.normalizer,
                self.safety,
                self.device,
                self.preempt,
            )
        except EvalInterrupted:
            self._preempted("preempted by SIGTERM during evaluation")
            return False
        if self.preempt.requested:
            # Scored, but the gate closed meanwhile: no candidate now. The resumed job starts
            # at this step and evaluates again, against the release current by then.
            self._preempted("preempted by SIGTERM at the end of evaluation")
            return False
        # The rule's evidence check needs to know how much of the held-out set was left out
        # for recordings outside their bounds (what remains may be a biased remainder).
        self.metrics = self.metrics.model_copy(update={"eval_out_of_bounds": evals.out_of_bounds})
        result.metrics = self.metrics
        result.timings["eval_s"] = round(time.monotonic() - t_eval, 3)
        return True

    def save_candidate(self) -> None:
        """Stage the adapter with its card and publish it as ``<run_dir>/candidate``."""
        from trainer_core.lora import save_adapter
        from trainer_core.train import peak_rss_mb

        spec, result = self.spec, self.result
        staging = _stage_dir(spec.run_dir, CANDIDATE_DIR)
        card = {
            **adapter_card(spec, spec.run_id, self.base.sha256),
            "job": spec.job.model_dump(mode="json"),
            "episode_hashes": self.train_split.hashes,
            "train_samples": len(self.train_split.arrays),
            "steps": self.state.step,
            "status": result.status,
            "loss_first": result.loss_first,
            "loss_last": result.loss_last,
            "metrics": self.metrics.model_dump(mode="json"),
            "timings": dict(result.timings),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "device": self.device.type,
            "family": spec.policy.family,
            "dtype": self.placement.dtype,
        }
        save_adapter(self.model, staging, self.normalizer, card)
        target = spec.run_dir / CANDIDATE_DIR
        _publish(staging, target)
        result.candidate_path = target


def run(spec: JobSpec, result: JobResult, t0: float, preempt: Preemption) -> None:
    """The whole job, phase by phase; fills ``result`` as it goes."""
    if spec.candidate_adapter is not None:  # made elsewhere: judge it, train nothing
        from trainer_core.shadow import run_shadow

        run_shadow(spec, result, t0, preempt)
        return
    if spec.fleet_start is not None:  # one fleet round: the update is the output, no candidate
        from trainer_core.fleet_round import run_round

        run_round(Recipe(spec, result, t0, preempt))
        return
    recipe = Recipe(spec, result, t0, preempt)
    recipe.setup()
    if spec.policy.family == "hf-causal-lm":  # a language model: its own data and evaluation
        from trainer_core.hf_lm import run_lm_job

        run_lm_job(spec, result, t0, preempt, emit)
        return
    recipe.load_data()
    recipe.load_models()
    recipe.resume()
    if not recipe.train():
        return
    if not recipe.evaluate():
        return
    recipe.save_candidate()


def _write_result(run_dir: Path, result: JobResult) -> None:
    try:
        atomic_write_json(run_dir / RESULT_FILE, result.model_dump(mode="json"))
    except ValueError:  # a NaN somewhere: report the failure rather than no result at all
        result.metrics = None
        result.status = "crashed"
        result.reason = f"result not JSON-safe (non-finite number); was: {result.reason}"
        atomic_write_json(run_dir / RESULT_FILE, result.model_dump(mode="json"))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (also written into nothing else: see result.json)."""
    t0 = time.monotonic()
    preempt = Preemption()
    previous = {s: signal.signal(s, preempt.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(argv, t0, preempt)
    finally:
        for sig, handler in previous.items():  # matters only when called in-process (tests)
            signal.signal(sig, handler)


def _main(argv: list[str] | None, t0: float, preempt: Preemption) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainer_core.job <run_dir>/spec.json", file=sys.stderr)
        return int(ExitCode.INVALID)
    spec_path = Path(args[0]).resolve()
    run_dir = spec_path.parent
    result = JobResult(run_id=run_dir.name, status="crashed")
    spec: JobSpec | None = None
    try:
        try:
            spec = JobSpec.model_validate_json(spec_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidJob(f"spec {spec_path} unusable: {exc}") from None
        finally:
            emit(
                {
                    "event": "started",
                    "pid": os.getpid(),
                    "max_steps": spec.job.max_steps if spec else 0,
                }
            )
        result.run_id = spec.run_id
        run_dir = spec.run_dir
        run(spec, result, t0, preempt)
    except PreemptedNow:
        result.status, result.reason = "preempted", "preempted by SIGTERM before training began"
        if spec is not None and spec.resume_from is not None and spec.resume_from.is_dir():
            result.checkpoint_path = spec.resume_from  # still the one to resume from
    except InvalidJob as exc:
        result.status, result.reason = "invalid", str(exc)
    except Exception as exc:
        result.status = "crashed"
        result.reason = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    # No more aborting: the result must be written whatever arrives now.
    preempt.abort_immediately = False
    result.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    result.timings["total_s"] = round(time.monotonic() - t0, 3)
    if result.status in ("invalid", "crashed", "preempted"):
        result.candidate_path = None
    _write_result(run_dir, result)
    emit(
        {
            "event": "finished",
            "status": result.status,
            "steps": result.steps,
            "reason": result.reason,
        }
    )
    return int(EXIT_FOR_STATUS[result.status])


if __name__ == "__main__":
    # One module, not two: code imported later (trainer_core.shadow, hf_lm) that raises
    # ``trainer_core.job.InvalidJob`` must raise the class this ``__main__`` catches.
    sys.modules.setdefault("trainer_core.job", sys.modules[__name__])
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and fsynced; skip interpreter teardown, which with torch, peft and
    # transformers loaded takes seconds and would break the one-second preemption promise.
    os._exit(exit_code)
