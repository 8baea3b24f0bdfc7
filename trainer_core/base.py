"""The frozen base policy: a safetensors checkpoint plus a JSON card beside it.

The card (``<base>.json``) says what the weights are: family, sizes, activation, the feature
names it maps between, the normaliser of the data it was trained on, and the sha256 of the
weights file. Loading checks all of it against the configuration and refuses a corrupt or
mismatched base with a :class:`BaseError` that says what differs. ``continuon-trainer base init``
makes fresh weights; ``base pretrain`` trains all weights on a folder of episodes (no base can
be downloaded on a robot).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from trainer_core.basefile import weights_path
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, PolicyConfig
from trainer_core.features import Normalizer, read_split
from trainer_core.fsio import atomic_write_bytes, atomic_write_json, sha256_file
from trainer_core.inputs import training_inputs
from trainer_core.policies import build_policy
from trainer_core.train import Budget, LoopState, make_optimizer, train_loop


class BaseError(ValueError):
    """The base checkpoint is missing, corrupt or does not match the configuration."""


class BaseCard(BaseModel):
    """What a base checkpoint is; stored as JSON beside the weights."""

    model_config = ConfigDict(extra="forbid")

    family: str
    hidden: list[int]
    activation: str
    arch: dict[str, Any] = {}  # PolicyConfig.arch(): what else shapes this family's weights
    observation_names: list[str]
    action_names: list[str]
    normalizer: dict[str, Any]  # Normalizer.to_json() of the data the base was trained on
    sha256: str  # of the weights file
    created_by: str  # "init" or "pretrain"
    training: dict[str, Any] = {}
    images: list[dict[str, Any]] = []  # the frame preprocessing (without augmentation) it saw


@dataclass
class LoadedBase:
    """A base policy loaded for use: the module, its card, normalizer and file sha256."""

    model: nn.Module
    card: BaseCard
    normalizer: Normalizer
    sha256: str


def card_path(base_path: Path) -> Path:
    """Where a base's card lives: beside it, ``.json`` for its suffix."""
    return Path(base_path).with_suffix(".json")


def identity_normalizer(features: FeaturesConfig) -> Normalizer:
    """Mean 0, std 1: the normaliser of a base that has seen no data yet."""
    o, a = len(features.observation_names), len(features.action_names)
    return Normalizer(
        features.observation_names,
        features.action_names,
        np.zeros(o, np.float32),
        np.ones(o, np.float32),
        np.zeros(a, np.float32),
        np.ones(a, np.float32),
    )


def save_base(
    model: nn.Module,
    base_path: Path,
    policy: PolicyConfig,
    features: FeaturesConfig,
    normalizer: Normalizer,
    created_by: str,
    training: dict[str, Any] | None = None,
) -> BaseCard:
    """Write weights then card, each atomically; the card's sha256 names these exact bytes."""
    base_path = Path(base_path)
    if base_path.suffix == ".pt":  # never safetensors bytes under a pickle's name
        base_path = base_path.with_suffix(".safetensors")
    base_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save_safetensors_bytes(state, metadata={"family": policy.family})
    atomic_write_bytes(base_path, data)
    card = BaseCard(
        family=policy.family,
        hidden=list(policy.hidden),
        activation=policy.activation,
        arch=policy.arch(),
        observation_names=features.observation_names,
        action_names=features.action_names,
        normalizer=normalizer.to_json(),
        sha256=hashlib.sha256(data).hexdigest(),
        created_by=created_by,
        training=training or {},
        images=_image_specs(features),
    )
    atomic_write_json(card_path(base_path), card.model_dump(mode="json"))
    return card


def _read_card(base_path: Path) -> BaseCard:
    path = card_path(base_path)
    try:
        return BaseCard.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise BaseError(f"base card {path} is missing (every base needs its card)") from None
    except (OSError, ValueError, ValidationError) as exc:
        raise BaseError(f"base card {path} is unreadable: {exc}") from None


def _image_specs(features: FeaturesConfig) -> list[dict[str, Any]]:
    return [i.model_dump(mode="json", exclude={"augment"}) for i in features.images]


def _check_matches(card: BaseCard, policy: PolicyConfig, features: FeaturesConfig) -> None:
    want = {
        "images": _image_specs(features),
        "family": policy.family,
        "hidden": list(policy.hidden),
        "activation": policy.activation,
        "arch": policy.arch(),
        "observation_names": features.observation_names,
        "action_names": features.action_names,
    }
    diffs = [
        f"{k}: base has {getattr(card, k)!r}, config wants {v!r}"
        for k, v in want.items()
        if getattr(card, k) != v
    ]
    if diffs:
        raise BaseError("base does not match the configuration: " + "; ".join(diffs))


def _read_weights(base_path: Path) -> dict[str, torch.Tensor]:
    if base_path.suffix == ".pt":
        # Legacy only, for a base the operator points at; never anything that can run code.
        try:
            state = torch.load(base_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BaseError(f"legacy base {base_path} cannot be read safely: {exc}") from None
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise BaseError(f"legacy base {base_path} is not a flat state dict of tensors")
        return state
    try:
        return load_safetensors_bytes(base_path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise BaseError(f"base {base_path} is not a readable safetensors file: {exc}") from None


def load_base(base_path: Path, policy: PolicyConfig, features: FeaturesConfig) -> LoadedBase:
    """Load and verify a base; raises :class:`BaseError` saying what is wrong."""
    from trainer_core.plugins import extras

    base_path = weights_path(base_path)
    if not base_path.is_file():
        raise BaseError(
            f"base checkpoint {base_path} does not exist "
            "(create one: continuon-trainer base init | base pretrain)"
        )
    card = _read_card(base_path)
    digest = sha256_file(base_path)
    if digest != card.sha256:
        raise BaseError(
            f"base {base_path} has sha256 {digest}, its card says {card.sha256}: "
            "corrupt or replaced"
        )
    _check_matches(card, policy, features)
    try:
        normalizer = Normalizer.from_json(card.normalizer)
    except ValueError as exc:
        raise BaseError(f"base card {card_path(base_path)}: {exc}") from None
    model = build_fresh(policy, features)
    tensors = _read_weights(base_path)
    loader = extras(model).load_base
    try:
        if loader is not None:
            loader(model, tensors)
        else:
            model.load_state_dict(tensors, strict=True)
    except Exception as exc:  # a plug-in's loader may raise anything: a clear reason, no crash
        raise BaseError(f"base {base_path} weights do not fit the policy: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return LoadedBase(model=model, card=card, normalizer=normalizer, sha256=digest)


def build_fresh(policy: PolicyConfig, features: FeaturesConfig) -> nn.Module:
    """A freshly initialised policy; a family that cannot be built is a :class:`BaseError`."""
    try:
        model = build_policy(
            len(features.observation_names), len(features.action_names), policy, features
        )
    except ValueError as exc:
        raise BaseError(str(exc)) from None
    if not isinstance(model, nn.Module):
        raise BaseError(f"policy.family {policy.family!r} built {type(model).__name__}")
    return model


def episode_paths(folder: Path) -> list[Path]:
    """The entries directly inside ``folder`` that look like episodes (staging ones left out)."""
    from trainer_core.rlds import is_episode_path

    return sorted(p for p in Path(folder).iterdir() if is_episode_path(p))


def pretrain_base(
    episodes: list[Path],
    out: Path,
    policy: PolicyConfig,
    features: FeaturesConfig,
    job: JobConfig,
    ingest: IngestConfig,
    steps: int,
    seed: int,
    log: Any = None,
    frame_cache: Path | None = None,
) -> BaseCard:
    """Train every weight of a fresh base on ``episodes``; write it and its card to ``out``."""
    split = read_split(episodes, features, ingest, frame_cache=frame_cache)
    for path, reason in split.skipped.items():
        if log:
            log(f"skipped {path}: {reason}")
    if len(split.arrays) == 0:
        raise BaseError(f"no usable episodes among {len(episodes)} given")
    torch.set_num_threads(job.threads)
    torch.manual_seed(seed)
    normalizer = Normalizer.fit(split.arrays, features.observation_names, features.action_names)
    model = build_fresh(policy, features)
    x = torch.from_numpy(normalizer.norm_obs(split.arrays.obs))
    y = torch.from_numpy(normalizer.norm_act(split.arrays.act))
    x, _ = training_inputs(model, split.arrays, x, features, None, normalizer, seed)
    cfg = job.model_copy(
        update={"max_steps": steps, "seed": seed, "max_wall_time_s": 1e9, "max_rss_mb": 1e9}
    )
    state = LoopState()
    t0 = time.monotonic()

    def emit(event: dict[str, Any]) -> None:
        if log and (event["step"] % 500 == 0 or event["step"] == steps):
            log(f"step {event['step']}: loss {event['loss']:.4f}")

    train_loop(
        model,
        make_optimizer(list(model.parameters()), cfg),
        x,
        y,
        cfg,
        state,
        Budget(cfg, t0, lambda: False),
        emit,
    )
    training = {
        "steps": state.step,
        "seed": seed,
        "episodes": len(split.paths),
        "samples": len(split.arrays),
        "loss_first": state.loss_first,
        "loss_last": state.losses[-1] if state.losses else None,
        "train_s": round(time.monotonic() - t0, 3),
    }
    return save_base(model, out, policy, features, normalizer, "pretrain", training)


def _safetensors_name(out: Path) -> Path:
    """Where a new base goes: a legacy ``.pt`` name gets its weights beside it (and says so)."""
    out = Path(out)
    if out.suffix != ".pt":
        return out
    beside = out.with_suffix(".safetensors")
    print(
        f"note: {out.name} is a legacy torch-pickle name; the base is safetensors, written "
        f"beside it as {beside} (the trainer reads it from there for base_path {out})"
    )
    return beside


def refuse_overwrite(out: Path, force: bool) -> bool:
    """True (after saying why on stderr) when ``out`` exists and ``--force`` was not given."""
    if force or not Path(out).exists():
        return False
    print(
        f"error: a base already exists at {out}. The current releases (adapters) were all "
        "trained on it: replacing it would invalidate every one of them. Pass --force to "
        "replace it anyway.",
        file=sys.stderr,
    )
    return True


def init_command(args: Any, config: Any) -> int:
    """``continuon-trainer base init``: fresh seeded weights sized from the feature spec."""
    out = _safetensors_name(args.out or config.policy.base_path)
    if refuse_overwrite(out, getattr(args, "force", False)):
        return 1
    torch.manual_seed(args.seed)
    features = config.features
    try:
        model = build_fresh(config.policy, features)
    except BaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    card = save_base(
        model,
        out,
        config.policy,
        features,
        identity_normalizer(features),
        "init",
        {"seed": args.seed},
    )
    print(f"wrote base {out} (sha256 {card.sha256[:12]}) and its card {card_path(out)}")
    return 0


def pretrain_command(args: Any, config: Any) -> int:
    """``continuon-trainer base pretrain``: train a base on the episodes in a folder."""
    out = _safetensors_name(args.out or config.policy.base_path)
    if refuse_overwrite(out, getattr(args, "force", False)):
        return 1
    try:
        card = pretrain_base(
            episode_paths(args.episodes),
            out,
            config.policy,
            config.features,
            config.job,
            config.ingest,
            steps=args.steps,
            seed=args.seed,
            log=lambda line: print(line, flush=True),
            frame_cache=config.paths.state / "frames" if config.features.images else None,
        )
    except (BaseError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    t = card.training
    print(
        f"wrote base {out} (sha256 {card.sha256[:12]}): {t['steps']} steps on "
        f"{t['episodes']} episodes, loss {t['loss_first']:.4f} -> {t['loss_last']:.4f}"
    )
    return 0
