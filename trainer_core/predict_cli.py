"""``continuon-trainer predict [RELEASE] EPISODE``: actions as the robot runtime would get them.

Loads the base and the current release (or the named one) exactly as the runtime does (base
checked against its card, adapter checked against the base's sha256), preprocesses the episode's
frames with the image spec the release's card records, and prints one line per step: the
predicted raw actions next to the recorded ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _release_dir(config: Any, name: str | None) -> Path:
    adapters = config.adapters_dir
    return adapters / "current" if name is None else adapters / "releases" / name


def load_release(config: Any, name: str | None) -> tuple[Any, Any, Any, Path]:
    """The base and the current (or named) release loaded as the runtime does: (base, model,
    normalizer, release dir). Raises BaseError / LoraError saying what does not fit."""
    from trainer_core.base import load_base
    from trainer_core.lora import LoraError, load_adapter, read_card

    release_dir = _release_dir(config, name)
    base = load_base(config.policy.base_path, config.policy, config.features)
    if not release_dir.exists():
        raise LoraError(f"no release at {release_dir} (nothing promoted yet?)")
    card_features = read_card(release_dir).get("features", {}).get("images")
    wanted = config.features.model_dump(mode="json").get("images")
    if card_features is not None and card_features != wanted:
        raise LoraError(f"{release_dir}: trained on images {card_features}, config has {wanted}")
    model, normalizer, _ = load_adapter(base.model, release_dir, base.sha256)
    return base, model, normalizer, release_dir


def predict_command(args: Any, config: Any) -> int:
    """Print the release's actions for every step of one episode; exit 1 with a reason."""
    import torch

    from trainer_core.base import BaseError
    from trainer_core.evaluate import Policy, predict
    from trainer_core.features import read_split
    from trainer_core.lora import LoraError

    names = list(args.target)
    release = names[0] if len(names) == 2 else None
    episode = Path(names[-1])
    try:
        _, model, normalizer, release_dir = load_release(config, release)
    except (BaseError, LoraError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 1
    split = read_split([episode], config.features, config.ingest)
    if split.skipped:
        print(f"predict: error: {next(iter(split.skipped.values()))}", file=sys.stderr)
        return 1
    data = split.arrays
    pred = predict(
        Policy(model, normalizer), data.obs, torch.device("cpu"), lambda: False, data.frames
    )
    act_names = config.features.action_names
    print(f"release {release_dir.resolve().name} on {episode} ({len(data)} steps)")
    for i, (p, r) in enumerate(zip(pred, data.act, strict=True)):
        cols = "  ".join(
            f"{n}={v:+.4f} (recorded {w:+.4f})" for n, v, w in zip(act_names, p, r, strict=True)
        )
        print(f"step {i}: {cols}")
    return 0
