"""The transformer family: tokens per feature group, routing modes, LoRA on q/k/v/o_proj.

Each routing mode trains through the real job entry point and is shadow-evaluated; a routing
ignores the inputs it leaves out (perturbing them leaves every output bit-identical).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safety.config import SafetyConfig
from trainer_core.base import identity_normalizer, load_base, save_base
from trainer_core.config import (
    FeatureGroup,
    FeaturesConfig,
    IngestConfig,
    JobConfig,
    LoraConfig,
    PolicyConfig,
)
from trainer_core.job import main
from trainer_core.lora import LoraError, attach_lora
from trainer_core.policies import build_policy, linear_module_names
from trainer_core.spec import ExitCode, JobResult, JobSpec
from trainer_core.synth import write_synthetic_episodes
from trainer_core.transformer import RoutingError

WAVE_DIM = 8
ROUTINGS = ("hybrid", "wave_only", "attention_only")
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def features_with_wave() -> FeaturesConfig:
    """The default Donkeycar features plus a WaveCore-style embedding group."""
    base = FeaturesConfig()
    wave = FeatureGroup(
        path="observation.wave_embedding", names=["wave"], size=WAVE_DIM, kind="embedding"
    )
    return base.model_copy(update={"observation": [*base.observation, wave]})


def add_wave_embeddings(episodes: list[Path]) -> None:
    """Store an ``encode_for_policy()``-like vector in every step (a fixed random projection of
    the observation, so it carries the same information)."""
    proj = np.random.default_rng(7).normal(size=(WAVE_DIM, 3))
    for ep in episodes:
        steps_file = ep / "steps" / "000000.jsonl"
        lines = []
        for line in steps_file.read_text().splitlines():
            step = json.loads(line)
            speed, bearing = step["observation"]["robot_state"]["joint_positions"]
            dist = float(step["step_metadata"]["human_distance_m"])
            step["observation"]["wave_embedding"] = np.tanh(proj @ [speed, bearing, dist]).tolist()
            lines.append(json.dumps(step))
        steps_file.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def wave_episodes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    eps = write_synthetic_episodes(tmp_path_factory.mktemp("wave"), 8, 60, seed=3)
    add_wave_embeddings(eps)
    return eps


@pytest.mark.parametrize("routing", ROUTINGS)
def test_routing_ignores_the_inputs_it_leaves_out(routing: str) -> None:
    features = features_with_wave()
    torch.manual_seed(0)
    model = build_policy(
        3 + WAVE_DIM, 2, PolicyConfig(family="transformer", routing=routing), features
    )
    model.eval()
    x = torch.randn(16, 3 + WAVE_DIM)
    rlds_changed, wave_changed = x.clone(), x.clone()
    rlds_changed[:, :3] += torch.randn(16, 3) * 3
    wave_changed[:, 3:] += torch.randn(16, WAVE_DIM) * 3
    with torch.no_grad():
        out, out_rlds, out_wave = model(x), model(rlds_changed), model(wave_changed)
    if routing == "wave_only":
        assert torch.equal(out, out_rlds)  # RLDS observation changes are ignored
        assert not torch.allclose(out, out_wave)
    elif routing == "attention_only":
        assert torch.equal(out, out_wave)  # embedding changes are ignored
        assert not torch.allclose(out, out_rlds)
    else:
        assert not torch.allclose(out, out_rlds) and not torch.allclose(out, out_wave)


def test_attention_projections_are_lora_targets_and_mlp_on_request() -> None:
    model = build_policy(3, 2, PolicyConfig(family="transformer"), FeaturesConfig())
    names = linear_module_names(model)
    for proj in ATTENTION:
        assert f"layers.0.self_attn.{proj}" in names
    assert "layers.1.mlp.up_proj" in names
    peft = attach_lora(model, LoraConfig(target_modules=[*ATTENTION, "up_proj", "down_proj"]))
    lora = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert any("mlp.up_proj.lora_A" in n for n in lora) and any("o_proj.lora_B" in n for n in lora)
    assert all("lora_" in n for n in lora)  # the base stays frozen
    with pytest.raises(LoraError, match=r"\['fc_9'\] match no Linear module"):
        attach_lora(
            build_policy(3, 2, PolicyConfig(family="transformer"), FeaturesConfig()),
            LoraConfig(target_modules=["fc_9"]),
        )


def test_a_routing_without_its_inputs_is_refused_with_the_reason() -> None:
    with pytest.raises(RoutingError, match=r"'wave_only' needs an observation group of kind emb"):
        build_policy(
            3, 2, PolicyConfig(family="transformer", routing="wave_only"), FeaturesConfig()
        )


@pytest.mark.parametrize("routing", ROUTINGS)
def test_each_routing_trains_and_is_shadow_evaluated(
    routing: str, wave_episodes: list[Path], tmp_path: Path
) -> None:
    features = features_with_wave()
    policy = PolicyConfig(family="transformer", routing=routing, d_model=16, n_layers=1)
    torch.manual_seed(0)
    base = tmp_path / "base" / "policy.safetensors"
    model = build_policy(len(features.observation_names), 2, policy, features)
    save_base(model, base, policy, features, identity_normalizer(features), "init")
    assert load_base(base, policy, features).card.arch["routing"] == routing
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = JobSpec(
        run_id="run",
        run_dir=run_dir,
        train_episodes=wave_episodes[:6],
        eval_episodes=wave_episodes[6:],
        base_path=base,
        features=features,
        policy=policy,
        lora=LoraConfig(target_modules=ATTENTION),
        job=JobConfig(max_steps=120, batch_size=32, learning_rate=3e-3),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    code = main([str(run_dir / "spec.json")])
    result = JobResult.model_validate_json((run_dir / "result.json").read_text())
    assert code == ExitCode.DONE and result.status == "done", result.reason
    assert result.metrics is not None and result.metrics.eval_steps == 120  # shadow-evaluated
    assert result.metrics.candidate.mse < result.metrics.baseline.mse
    card = json.loads((run_dir / "candidate" / "card.json").read_text())
    assert card["family"] == "transformer" and card["policy"]["routing"] == routing
    assert card["device"] == "cpu" and card["dtype"] == "float32"
