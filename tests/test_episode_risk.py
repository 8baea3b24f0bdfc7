"""Per-episode recorded-action stats name the unsafe training episodes (real synth episodes)."""

from __future__ import annotations

from pathlib import Path

from daemon.lineage import risk_reason
from safety.config import SafetyConfig
from trainer_core.config import FeaturesConfig, IngestConfig
from trainer_core.episode_risk import episode_risk
from trainer_core.features import read_split
from trainer_core.synth import write_synthetic_episodes


def test_unsafe_episodes_come_first(tmp_path: Path) -> None:
    safe = write_synthetic_episodes(tmp_path / "safe", 3, 60, seed=1)
    unsafe = write_synthetic_episodes(tmp_path / "unsafe", 2, 60, seed=2, unsafe=True)
    features, safety = FeaturesConfig(), SafetyConfig()
    split = read_split([*safe, *unsafe], features, IngestConfig(), safety.proximity_path)
    risky = episode_risk(split, list(features.action_names), safety)
    assert risky, "the unsafe episodes have out-of-bounds or near-person actions"
    assert {r["path"] for r in risky[:2]} == {str(p) for p in unsafe}
    top = risky[0]
    assert top["out_of_bounds"] > 0 or top["acting_near_person"] > 0
    line = risk_reason(risky)[0]
    assert line.startswith("NOTE episodes") and str(unsafe[0]) in line
    assert risk_reason([]) == []
