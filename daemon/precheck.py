"""Checks that refuse a job before it starts, for what only an operator can fix.

Pure functions of the configuration and what was read from disk; the service calls them while
armed, so a mismatch shows as the reason the daemon is blocked instead of surfacing only after
a whole job has run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer_core.config import BUILTIN_FAMILIES, LANGUAGE_MODEL_PREFIXES, PolicyConfig


def is_language_model_name(name: str) -> bool:
    """Whether a manifest ``model_name`` names a language model (gemma-3n, llama-3.2, ...)."""
    return name.strip().lower().startswith(LANGUAGE_MODEL_PREFIXES)


def manifest_model_mismatch(manifest: dict[str, Any] | None, policy: PolicyConfig) -> str | None:
    """Why the manifest's model cannot be served by the configured policy, or None.

    The manifest's ``model_name`` must equal ``policy.model_name``; a language model name
    (``gemma-3n``) needs a language-model family (``hf-causal-lm`` or a plug-in), since an
    adapter of a small numeric policy would be loaded by the runtime as a Gemma adapter.
    A missing manifest is not this check's business (the store reports it).
    """
    if manifest is None:
        return None
    named = manifest.get("model_name")
    if not isinstance(named, str) or not named:
        return f"the manifest has no model_name string (got {named!r})"
    if named != policy.model_name:
        return (
            f"the manifest names model {named!r} but policy.model_name is "
            f"{policy.model_name!r} (family {policy.family!r}): set policy.model_name to "
            f"{named!r} only if this policy serves that model"
        )
    numeric = policy.family in BUILTIN_FAMILIES and policy.family != "hf-causal-lm"
    if is_language_model_name(named) and numeric:
        return (
            f"the manifest names {named!r}, a language model, but policy.family is "
            f"{policy.family!r}, a numeric policy: use policy.family hf-causal-lm (or a "
            "plug-in) for a language model"
        )
    return None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest as a mapping; None when absent or unreadable (the store says why)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
