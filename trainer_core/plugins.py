"""Bring your own model: policy families from outside this project.

``policy.family`` may be ``python:package.module:builder`` or the name of an entry point in the
group ``continuon_trainer.policies`` (declared by an installed package). The builder is called
as ``builder(features, policy)`` with the :class:`~trainer_core.config.FeaturesConfig` and the
:class:`~trainer_core.config.PolicyConfig` (its free-form ``options`` included) and returns one
of:

- an ``nn.Module`` mapping normalised observations ``(B, O)`` to normalised actions ``(B, A)``;
- a mapping ``{"model": module, "loss": fn, "load_base": fn}`` (``loss`` and ``load_base``
  optional), or the tuple ``(module, loss)`` / ``(module, loss, load_base)``.

``loss(pred, target) -> scalar tensor`` replaces the mean squared error in training.
``load_base(model, tensors)`` puts the base checkpoint's tensors (always read from safetensors,
or a legacy ``.pt`` through ``torch.load(weights_only=True)``) into the model, for a plug-in
whose checkpoint names differ from its module's; without it the state dict is loaded strictly.

A builder that cannot be imported, raises, or returns anything else is a :class:`PluginError`
naming the family and what went wrong: the job fails ``invalid`` with that reason, the daemon
goes on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import nn

from trainer_core.config import FeaturesConfig, PolicyConfig

ENTRY_POINT_GROUP = "continuon_trainer.policies"
EXTRAS_ATTR = "continuon_extras"

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BaseLoader = Callable[[nn.Module, dict[str, torch.Tensor]], None]


class PluginError(ValueError):
    """A plug-in family cannot be found, built, or returned something unusable."""


@dataclass(frozen=True)
class Extras:
    """What a plug-in may add to its model: a training loss and a base loader."""

    loss: Loss | None = None
    load_base: BaseLoader | None = None


def is_plugin(family: str) -> bool:
    """True for a family that is not built in (a ``python:`` path or an entry point)."""
    from trainer_core.config import BUILTIN_FAMILIES

    return family not in BUILTIN_FAMILIES


def find_builder(family: str) -> Callable[..., Any]:
    """The builder callable a plug-in family names; raises :class:`PluginError` saying why not."""
    if family.startswith("python:"):
        module_name, _, attr = family.removeprefix("python:").partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(
                f"policy.family {family!r}: cannot import {module_name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        builder = getattr(module, attr, None)
        if builder is None:
            raise PluginError(f"policy.family {family!r}: {module_name} has no {attr!r}")
    else:
        found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == family]
        if not found:
            known = sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
            raise PluginError(
                f"policy.family {family!r} is neither built in nor an installed entry point "
                f"of {ENTRY_POINT_GROUP!r} (installed: {known})"
            )
        try:
            builder = found[0].load()
        except Exception as exc:
            raise PluginError(
                f"policy.family {family!r}: entry point {found[0].value} cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not callable(builder):
        raise PluginError(f"policy.family {family!r}: {builder!r} is not callable")
    return builder


def _unpack(family: str, built: Any) -> tuple[nn.Module, Extras]:
    if isinstance(built, nn.Module):
        return built, Extras()
    if isinstance(built, Mapping):
        model, loss, loader = built.get("model"), built.get("loss"), built.get("load_base")
    elif isinstance(built, tuple) and len(built) in (2, 3):
        model, loss, loader = (*built, None)[:3]
    else:
        raise PluginError(
            f"policy.family {family!r}: the builder returned {type(built).__name__}; expected an "
            "nn.Module, a (module, loss[, load_base]) tuple or a {'model': ...} mapping"
        )
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"policy.family {family!r}: the builder's model is {type(model).__name__}, "
            "not an nn.Module"
        )
    for name, fn in (("loss", loss), ("load_base", loader)):
        if fn is not None and not callable(fn):
            raise PluginError(f"policy.family {family!r}: {name} {fn!r} is not callable")
    return model, Extras(loss=loss, load_base=loader)


def build_plugin(
    n_obs: int, n_act: int, cfg: PolicyConfig, features: FeaturesConfig | None
) -> nn.Module:
    """Build a plug-in policy; its :class:`Extras` ride on the module (see :func:`extras`)."""
    builder = find_builder(cfg.family)
    try:
        built = builder(features, cfg)
    except Exception as exc:
        raise PluginError(
            f"policy.family {cfg.family!r}: the builder raised {type(exc).__name__}: {exc}"
        ) from None
    model, extra = _unpack(cfg.family, built)
    object.__setattr__(model, EXTRAS_ATTR, extra)  # not a submodule, not in the state dict
    return model


def extras(model: nn.Module) -> Extras:
    """The plug-in extras of a model built by :func:`build_plugin` (empty for built-ins)."""
    return getattr(model, EXTRAS_ATTR, None) or Extras()
