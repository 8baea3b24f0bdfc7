"""The canonical episode every reader produces, whatever layout it came from.

Plain Python containers only (no numpy, no torch): the daemon validates episodes in its own
process, which must stay light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    """One RLDS step. ``observation``/``action``/``step_metadata`` keep the producer's nesting,
    with keys in snake_case (layout E's camelCase is converted by its reader)."""

    observation: dict[str, Any]
    action: dict[str, Any]
    reward: float = 0.0
    is_first: bool = False
    is_last: bool = False
    is_terminal: bool = False
    step_metadata: dict[str, Any] = field(default_factory=dict)

    def as_mapping(self) -> dict[str, Any]:
        """The step as one mapping, so feature paths such as ``step_metadata.human_distance_m``
        or ``action.command`` resolve against it."""
        return {
            "observation": self.observation,
            "action": self.action,
            "reward": self.reward,
            "is_first": self.is_first,
            "is_last": self.is_last,
            "is_terminal": self.is_terminal,
            "step_metadata": self.step_metadata,
        }


@dataclass
class Episode:
    """A whole episode: ``episode_id`` is stable across re-reads (it fixes the train/eval split),
    ``source`` the file or directory it came from, ``layout`` one of A-E (architecture §4)."""

    episode_id: str
    metadata: dict[str, Any]
    steps: list[Step]
    source: str
    layout: str
