"""Robot signals -> one gate decision with reasons. Pure Python; never imports torch."""

from gating.config import GateConfig
from gating.gate import Gate, GateDecision, build_gate
from gating.sources import Reading

__all__ = ["Gate", "GateConfig", "GateDecision", "Reading", "build_gate"]
