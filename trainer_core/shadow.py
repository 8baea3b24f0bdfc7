"""Shadow evaluation of an adapter made elsewhere (``adapters import``, a fleet aggregate).

The job child runs this instead of training when ``spec.candidate_adapter`` is set: the same
:class:`~trainer_core.job.Recipe` phases minus training. The base is loaded and verified, the
imported adapter is loaded onto it (refused when its card names another base), the baseline
(the current release, or the bare base) replays the robot's own held-out episodes beside it,
and ``<run_dir>/candidate`` is staged from the imported files with the robot's metrics in its
card, so the daemon judges and promotes it exactly as a candidate it trained itself.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from trainer_core.fsio import atomic_write_json
from trainer_core.job import (
    CANDIDATE_DIR,
    InvalidJob,
    PreemptedNow,
    Preemption,
    Recipe,
    _publish,
    _stage_dir,
)
from trainer_core.spec import JobResult, JobSpec

ADAPTER_PARTS = ("adapter_config.json", "adapter_model.safetensors", "normalizer.json")


class ShadowRecipe(Recipe):
    """Load the imported adapter as the candidate; evaluate; stage it with the robot's metrics."""

    def load_models(self) -> None:
        """The base, the imported adapter on it (with its own normaliser), and the baseline."""
        from trainer_core.base import BaseError, load_base
        from trainer_core.lora import LoraError, load_adapter

        spec = self.spec
        assert spec.candidate_adapter is not None
        try:
            self.base = load_base(spec.base_path, spec.policy, spec.features)
            fresh = load_base(spec.base_path, spec.policy, spec.features).model
            model, self.normalizer, self.card = load_adapter(
                fresh, spec.candidate_adapter, self.base.sha256
            )
            self.model = model.to(self.device)
            self.load_baseline()
        except (BaseError, LoraError) as exc:
            raise InvalidJob(str(exc)) from None
        hashes = self.card.get("episode_hashes")
        if isinstance(hashes, list) and all(isinstance(h, str) for h in hashes):
            self.result.episode_hashes = hashes  # what it was trained on, for the lineage

    def _preempted(self, reason: str) -> None:
        """Nothing to resume: an evaluation is simply run again."""
        self.result.status, self.result.reason = "preempted", reason

    def save_candidate(self) -> None:
        """Stage the imported files unchanged, the card with the robot's metrics added."""
        spec, result = self.spec, self.result
        assert spec.candidate_adapter is not None
        staging = _stage_dir(spec.run_dir, CANDIDATE_DIR)
        for name in ADAPTER_PARTS:
            shutil.copyfile(spec.candidate_adapter / name, staging / name)
        card: dict[str, Any] = dict(self.card)
        card.update(
            origin_metrics=self.card.get("metrics"),  # what it scored where it was made
            metrics=self.metrics.model_dump(mode="json"),  # what it scored here: the judged one
            shadow_run_id=spec.run_id,
            shadow_timings=dict(result.timings),
        )
        atomic_write_json(staging / "card.json", card)
        target = spec.run_dir / CANDIDATE_DIR
        _publish(staging, target)
        result.candidate_path = target


def run_shadow(spec: JobSpec, result: JobResult, t0: float, preempt: Preemption) -> None:
    """The shadow job: setup, bounds, models, evaluation, candidate. SIGTERM aborts at once
    (there is no training state to keep)."""
    recipe = ShadowRecipe(spec, result, t0, preempt)
    recipe.setup()
    if spec.policy.family == "hf-causal-lm":
        raise InvalidJob("importing hf-causal-lm adapters is not supported")
    from trainer_core.job import emit

    emit({"event": "phase", "phase": "load"})
    recipe.resolve_bounds()
    recipe.load_models()
    if preempt.requested:
        raise PreemptedNow
    t = time.monotonic()
    result.timings["startup_s"] = round(t - t0, 3)
    if not recipe.evaluate():
        return
    result.status, result.reason = "done", "imported adapter evaluated (no training)"
    recipe.save_candidate()
