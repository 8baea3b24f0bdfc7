"""Typed configuration for what trainer_core owns: ingest limits, features, policy, LoRA, job.

Each package owns the pydantic models of its own config sections (architecture §2);
``daemon.config`` composes them into the whole file. Paths here may be relative: the daemon
resolves them against the configured root before anything uses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer_core.image_config import ImageFeature


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class IngestConfig(_Section):
    """Limits that keep a hostile or broken episode from costing more than it is worth."""

    max_file_mb: float = Field(256.0, gt=0)
    max_steps: int = Field(100_000, gt=0)
    max_line_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_depth: int = Field(32, gt=0)
    settle_s: float = Field(5.0, ge=0, description="an episode unchanged this long is complete")


class FeatureGroup(_Section):
    """One dotted step path mapped to one or more named values.

    ``path`` is resolved in the step mapping (``observation...``, ``action...``,
    ``step_metadata...``, ``reward``); a list value yields ``len(names)`` values, a scalar one.
    Numbers given as strings (continuonos' ``step_metadata``) are parsed.
    """

    path: str = Field(min_length=1)
    names: list[str] = Field(min_length=1)
    kind: Literal["numeric", "embedding"] = Field(
        "numeric",
        description="embedding: a vector a model wrote into the step (e.g. WaveCore "
        "encode_for_policy()); token-based families route it separately from numeric groups",
    )
    size: int | None = Field(
        None, gt=0, description="with one name: expand it to name_0 .. name_<size-1>"
    )

    @model_validator(mode="after")
    def _expand_names(self) -> FeatureGroup:
        # A 64-wide embedding should not need 64 names written out.
        if self.size is not None and len(self.names) == 1 and self.size > 1:
            self.names = [f"{self.names[0]}_{i}" for i in range(self.size)]
        if self.size is not None and len(self.names) != self.size:
            raise ValueError(f"size {self.size} but {len(self.names)} names")
        return self


class FeaturesConfig(_Section):
    """The named observation and action vectors a policy sees, with per-name bounds."""

    observation: list[FeatureGroup] = Field(  # may be [] when images are given
        default_factory=lambda: [
            FeatureGroup(
                path="observation.robot_state.joint_positions",
                names=["speed", "target_bearing"],
            ),
            FeatureGroup(path="step_metadata.human_distance_m", names=["human_distance_m"]),
        ]
    )
    action: list[FeatureGroup] = Field(
        default_factory=lambda: [
            FeatureGroup(path="action.command", names=["steering", "throttle"])
        ]
    )
    images: list[ImageFeature] = Field(
        default_factory=list,
        max_length=1,
        description="camera frames the policy sees (one stream); see trainer_core/frames.py",
    )
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"steering": (-1.0, 1.0), "throttle": (-1.0, 1.0)}
    )
    out_of_bounds: Literal["skip", "clip"] = Field(
        "skip",
        description="a recorded action outside its bounds (safety.clamp_bounds, else these): "
        "skip = the episode is not trained on (the reason names file, step and name); "
        "clip = the action is clipped into its bounds",
    )

    @model_validator(mode="after")
    def _names_unique(self) -> FeaturesConfig:
        for side in ("observation", "action"):
            names = [n for g in getattr(self, side) for n in g.names]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{side} feature names repeat: {dupes}")
        if not self.observation and not self.images:
            raise ValueError(
                "a policy needs an observation: features.observation and features.images "
                "are both empty (it would learn only the mean action)"
            )
        for name, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ValueError(f"bounds.{name}: low must be < high (got [{lo}, {hi}])")
        return self

    @property
    def observation_names(self) -> list[str]:
        """Every observation feature name, in model input order."""
        return [n for g in self.observation for n in g.names]

    @property
    def action_names(self) -> list[str]:
        """Every action name, in model output order."""
        return [n for g in self.action for n in g.names]


class PromptCase(_Section):
    """One fixed prompt of the hf-causal-lm regression set and the output it should give."""

    prompt: str = Field(min_length=1)
    expected: str


class LanguageConfig(_Section):
    """hf-causal-lm: how training pairs come out of episodes, and the fixed prompt set.

    The prompt is the instruction (the first of ``instruction_paths`` in the step, else the
    episode's ``language_instruction`` or an ``instruction:`` tag) plus ``name=value`` for each
    of ``summary_paths``; the target is the first of ``target_paths`` the step carries (text, or
    JSON for a structured planner/tool call).
    """

    instruction_paths: list[str] = Field(
        default_factory=lambda: [
            "observation.language_instruction",
            "step_metadata.language_instruction",
            "action.language_instruction",
        ]
    )
    summary_paths: list[str] = Field(default_factory=list)
    target_paths: list[str] = Field(
        default_factory=lambda: ["action.planner", "action.dialog", "action.tool_calls"],
        min_length=1,
    )
    max_length: int = Field(128, gt=8, description="tokens per pair; longer pairs are cut")
    prompts: list[PromptCase] = Field(
        default_factory=list, description="fixed prompts whose outputs must not regress"
    )
    scorer: str = Field(
        "exact", description="exact (whitespace-normalised match) or python:module:function"
    )
    max_new_tokens: int = Field(24, gt=0)


BUILTIN_FAMILIES = ("mlp", "transformer", "hf-causal-lm", "cnn")
# Names known to be language models: a manifest naming one is served only by a language-model
# family (hf-causal-lm, or a plug-in), never by a small numeric policy.
LANGUAGE_MODEL_PREFIXES = ("gemma", "llama", "qwen", "phi", "mistral", "smollm", "gpt")


class PolicyConfig(_Section):
    """The frozen base policy: a registry family and its sizes, and where its checkpoint lives.

    ``family`` is a built-in (``mlp``, ``transformer``, ``hf-causal-lm``), a plug-in
    ``python:package.module:builder``, or the name of an installed entry point in the group
    ``continuon_trainer.policies`` (trainer_core/plugins.py).
    """

    family: str = Field("mlp", min_length=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["relu", "gelu", "tanh", "silu"] = "gelu"
    # transformer family (trainer_core/transformer.py)
    d_model: int = Field(32, gt=0, description="transformer: token width")
    n_heads: int = Field(2, gt=0, description="transformer: attention heads")
    n_layers: int = Field(2, gt=0, description="transformer: encoder blocks")
    ffn: int = Field(64, gt=0, description="transformer: MLP width inside each block")
    routing: Literal["hybrid", "wave_only", "attention_only"] = Field(
        "hybrid",
        description="transformer: which tokens the encoder sees: embedding groups only "
        "(wave_only), numeric observation groups only (attention_only), or both",
    )
    # hf-causal-lm family (trainer_core/hf_lm.py)
    model_dir: Path | None = Field(
        None, description="hf-causal-lm: a local directory with config.json and weights"
    )
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    options: dict[str, Any] = Field(
        default_factory=dict, description="free-form settings a plug-in builder reads"
    )
    conv: list[int] = Field(
        default_factory=lambda: [24, 32, 64, 64],
        description="cnn: output channels of each trunk conv (Donkeycar-class pilot)",
    )
    base_path: Path = Path("model/base/policy.safetensors")
    model_name: str = Field(
        "continuon-mlp-policy",
        min_length=1,
        description="the manifest's model_name this policy serves; promotion refuses a "
        "manifest naming another model",
    )

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(h <= 0 for h in v):
            raise ValueError(f"must be a non-empty list of sizes > 0 (got {v})")
        return v

    @field_validator("family")
    @classmethod
    def _family_form(cls, v: str) -> str:
        if v.startswith("python:"):
            module, _, attr = v.removeprefix("python:").partition(":")
            if not module or not attr:
                raise ValueError(f"a plug-in family is python:package.module:builder (got {v!r})")
        return v

    @model_validator(mode="after")
    def _heads_divide(self) -> PolicyConfig:
        if self.family == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        return self

    def arch(self) -> dict[str, Any]:
        """The settings that shape the weights of this family (what a base card must match)."""
        if self.family == "transformer":
            keys = ("d_model", "n_heads", "n_layers", "ffn", "routing")
            return {k: getattr(self, k) for k in keys}
        if self.family not in BUILTIN_FAMILIES:
            return {"options": dict(self.options)}
        return {}


class LoraConfig(_Section):
    """peft LoRA on named modules of the base policy."""

    target_modules: list[str] = Field(default_factory=lambda: ["layers.0", "layers.1"])
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class JobConfig(_Section):
    """One training job: data selection, optimiser and the budgets the child honours."""

    min_episodes: int = Field(
        4, gt=0, description="fewest train episodes the daemon plans a job with"
    )
    max_episodes: int = Field(256, gt=0, description="newest N train episodes are used")
    max_eval_episodes: int = Field(
        256,
        gt=0,
        description="held-out episodes a candidate is judged on: the newest half and a fixed "
        "sample of the older ones (bounds the eval time and the daemon's memory)",
    )
    eval_fraction: float = Field(0.25, gt=0, lt=1, description="share of episodes held out")
    batch_size: int = Field(64, gt=0)
    drop_last: bool = True
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    max_steps: int = Field(300, gt=0)
    max_wall_time_s: float = Field(300.0, gt=0)
    max_rss_mb: float = Field(1024.0, gt=0)
    threads: int = Field(1, gt=0, description="torch intra-op threads; small MLPs want few")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu", description="auto: CUDA when torch sees one (a Jetson), else the CPU"
    )
    bf16: bool = Field(False, description="bf16 autocast where the device supports it")
    log_every_steps: int = Field(10, gt=0)
    grace_s: float = Field(5.0, gt=0, description="SIGTERM to SIGKILL, and budget overrun slack")
