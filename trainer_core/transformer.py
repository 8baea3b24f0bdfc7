"""The ``transformer`` policy family: a small encoder over observation tokens.

The flat normalised observation vector ``(B, O)`` is split into tokens by feature group, in the
order of the feature spec: each group becomes one token through its own ``Linear`` (a numeric
group of 2 values and a 64-wide embedding both end up ``d_model`` wide), plus a learned
per-token position. ``routing`` picks which tokens the encoder sees:

- ``attention_only``: the RLDS observation groups (``kind: numeric``) only;
- ``wave_only``: the embedding groups (``kind: embedding``, e.g. WaveCore
  ``encode_for_policy()`` vectors) only;
- ``hybrid``: both.

Inputs a routing leaves out are never read, so changing them cannot change an output (the tests
prove it by perturbing them). Each encoder block is pre-norm self-attention with projections
named ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (what the legacy ``lora_layers`` name) and an
MLP ``mlp.up_proj``/``mlp.down_proj``; the mean of the tokens goes to the action ``head``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer_core.config import FeaturesConfig, PolicyConfig

ROUTED_KINDS = {
    "hybrid": ("numeric", "embedding"),
    "attention_only": ("numeric",),
    "wave_only": ("embedding",),
}


class RoutingError(ValueError):
    """The routing needs a kind of feature group the spec does not have."""


@dataclass(frozen=True)
class TokenSlice:
    """One token: a feature group's columns ``[start, stop)`` of the observation vector."""

    path: str
    kind: str
    start: int
    stop: int


def token_slices(features: FeaturesConfig, routing: str) -> list[TokenSlice]:
    """The groups the routing feeds to the encoder, as column ranges of the flat vector."""
    slices, start = [], 0
    for group in features.observation:
        stop = start + len(group.names)
        if group.kind in ROUTED_KINDS[routing]:
            slices.append(TokenSlice(group.path, group.kind, start, stop))
        start = stop
    if not slices:
        kinds = " or ".join(ROUTED_KINDS[routing])
        raise RoutingError(
            f"policy.routing {routing!r} needs an observation group of kind {kinds}; the "
            "feature spec "
            f"has {[f'{g.path} ({g.kind})' for g in features.observation]}"
        )
    return slices


class Attention(nn.Module):
    """Multi-head self-attention with separately named projections (LoRA targets)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the token axis of ``x`` ``(B, T, D)``."""
        b, t, d = x.shape
        h = self.n_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """The block's feed-forward part (``up_proj``/``down_proj``; LoRA targets if asked)."""

    def __init__(self, d_model: int, ffn: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, ffn)
        self.down_proj = nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GELU between the two projections."""
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, d_model: int, n_heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual attention + MLP step over the tokens."""
        x = x + self.self_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerPolicy(nn.Module):
    """Observation groups -> tokens -> encoder -> mean pool -> action head."""

    def __init__(
        self,
        slices: list[TokenSlice],
        n_act: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ffn: int,
    ) -> None:
        super().__init__()
        self.slices = slices
        self.tokenizers = nn.ModuleList(nn.Linear(s.stop - s.start, d_model) for s in slices)
        self.position = nn.Parameter(torch.randn(len(slices), d_model) * 0.02)
        self.layers = nn.ModuleList(Block(d_model, n_heads, ffn) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_act)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, O)`` -> ``(B, T, D)``: one token per routed feature group."""
        toks = [
            tok(x[:, s.start : s.stop]) for tok, s in zip(self.tokenizers, self.slices, strict=True)
        ]
        return torch.stack(toks, dim=1) + self.position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Actions (normalised) for a batch of normalised observations."""
        h = self.tokens(x)
        for block in self.layers:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


def build_transformer(
    n_obs: int, n_act: int, cfg: PolicyConfig, features: FeaturesConfig | None
) -> TransformerPolicy:
    """The registry's builder: token layout from the feature spec, sizes from ``cfg``."""
    if features is None or len(features.observation_names) != n_obs:
        raise RoutingError("the transformer family needs the feature spec its inputs come from")
    return TransformerPolicy(
        token_slices(features, cfg.routing), n_act, cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.ffn
    )
