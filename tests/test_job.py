"""The training job, run in-process through its real entry point ``trainer_core.job.main``.

Real torch training on small models and real files: synthetic episodes, a base pretrained on
unshifted ones, LoRA adapters trained on shifted or unsafe ones. The child-process behaviour
(SIGTERM, fresh-process reload) is in ``test_job_child.py``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety.config import PromotionConfig, SafetyConfig
from safety.rule import decide
from trainer_core.base import BaseError, card_path, load_base, pretrain_base, save_base
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig
from trainer_core.job import main
from trainer_core.spec import ExitCode, JobResult, JobSpec
from trainer_core.synth import write_synthetic_episodes

PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class World:
    root: Path
    base: Path
    shift: list[Path]  # steering bias 0.3: what adapters learn
    unsafe: list[Path]
    plain: list[Path]  # same behaviour as the base's data


def build_world(root: Path) -> World:
    """Episodes and a base pretrained on unshifted ones (shared by every job test)."""
    base_eps = write_synthetic_episodes(root / "base_eps", 16, 100, seed=0)
    base = root / "base" / "policy.safetensors"
    pretrain_base(
        base_eps,
        base,
        PolicyConfig(),
        FeaturesConfig(),
        JobConfig(),
        IngestConfig(),
        steps=800,
        seed=0,
    )
    return World(
        root=root,
        base=base,
        shift=write_synthetic_episodes(root / "shift", 12, 100, seed=1, steering_bias=0.3),
        unsafe=write_synthetic_episodes(root / "unsafe", 8, 100, seed=2, unsafe=True),
        plain=write_synthetic_episodes(root / "plain", 6, 100, seed=5),
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def write_spec(
    run_dir: Path,
    train: list[Path],
    evals: list[Path],
    base: Path,
    *,
    policy: PolicyConfig | None = None,
    lora: LoraConfig | None = None,
    resume_from: Path | None = None,
    baseline: Path | None = None,
    features: FeaturesConfig | None = None,
    **job: Any,
) -> Path:
    """A spec.json in a fresh run directory, as the daemon would write it."""
    run_dir.mkdir(parents=True)
    spec = JobSpec(
        run_id=run_dir.name,
        run_dir=run_dir,
        train_episodes=train,
        eval_episodes=evals,
        base_path=base,
        baseline_adapter=baseline,
        baseline_id=baseline.name if baseline else None,
        resume_from=resume_from,
        features=features or FeaturesConfig(),
        policy=policy or PolicyConfig(),
        lora=lora or LoraConfig(),
        job=JobConfig(**job),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    path = run_dir / "spec.json"
    path.write_text(spec.model_dump_json(indent=1))
    return path


def run_job(spec_path: Path) -> tuple[int, JobResult]:
    code = main([str(spec_path)])
    return code, JobResult.model_validate_json((spec_path.parent / "result.json").read_text())


@pytest.fixture(scope="module")
def shifted_run(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, JobResult]:
    run_dir = tmp_path_factory.mktemp("runs") / "shifted"
    return run_job(write_spec(run_dir, world.shift[:9], world.shift[9:], world.base, max_steps=300))


def test_adapter_on_shifted_episodes_beats_the_base(shifted_run) -> None:
    code, result = shifted_run
    assert code == ExitCode.DONE and result.status == "done", result.reason
    assert result.steps == 300 and result.train_episodes == 9 and result.train_samples == 900
    assert result.loss_last < 0.25 * result.loss_first  # the loss goes down
    m = result.metrics
    assert m is not None and m.eval_steps == 300 and m.baseline_kind == "base"
    # Held-out shifted episodes: at least 30% lower action error than the bare base.
    assert m.candidate.mse <= 0.7 * m.baseline.mse
    assert m.candidate.mse_per_name["steering"] <= 0.7 * m.baseline.mse_per_name["steering"]
    assert decide(m, PromotionConfig()).promote
    cand = result.candidate_path
    assert cand is not None and cand.name == "candidate"
    assert sorted(p.name for p in cand.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "card.json",
        "normalizer.json",
    ]
    card = json.loads((cand / "card.json").read_text())
    assert (
        card["base_sha256"] == json.loads(card_path(Path(card["base_path"])).read_text())["sha256"]
    )
    assert card["episode_hashes"] == result.episode_hashes and len(result.episode_hashes) == 9
    assert card["metrics"]["candidate"]["mse"] == m.candidate.mse
    assert not list(cand.parent.glob(".*"))  # no staging left behind


def test_nothing_in_a_run_is_pickled(shifted_run) -> None:
    _, result = shifted_run
    run_dir = result.candidate_path.parent
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for f in files:
        assert f.suffix not in {".pt", ".pth", ".pkl", ".pickle", ".bin"}, f
        head = f.read_bytes()[:2]
        assert head not in PICKLE_PROTOCOLS, f
        assert b"data.pkl" not in f.read_bytes(), f  # a torch.save zip


def test_the_baseline_adapter_is_scored_as_it_was_as_candidate(
    world: World, shifted_run, tmp_path: Path
) -> None:
    """A release used as baseline gives exactly the numbers it had as a candidate."""
    _, first = shifted_run
    code, result = run_job(
        write_spec(
            tmp_path / "next",
            world.shift[:9],
            world.shift[9:],
            world.base,
            baseline=first.candidate_path,
            max_steps=20,
        )
    )
    assert code == ExitCode.DONE, result.reason
    assert result.metrics.baseline_kind == "adapter:candidate"
    assert result.metrics.baseline == first.metrics.candidate


def test_max_steps_stops_at_50(world: World, tmp_path: Path) -> None:
    code, result = run_job(
        write_spec(tmp_path / "r", world.plain[:4], world.plain[4:], world.base, max_steps=50)
    )
    assert code == ExitCode.DONE and result.steps == 50
    assert len(result.losses) == 1 + 50 // 10  # step 1, then every log_every_steps


def test_wall_time_budget_stops_within_one_step(world: World, tmp_path: Path) -> None:
    code, result = run_job(
        write_spec(
            tmp_path / "r",
            world.plain[:4],
            world.plain[4:],
            world.base,
            max_steps=10_000_000,
            max_wall_time_s=2.0,
        )
    )
    assert code == ExitCode.BUDGET and result.status == "budget"
    assert "max_wall_time_s 2" in result.reason
    stopped, one_step = result.timings["stopped_at_s"], result.timings["max_step_s"]
    assert 2.0 <= stopped <= 2.0 + one_step + 1e-3, result.timings
    assert result.candidate_path is not None and result.metrics is not None  # >= 1 step ran


def test_rss_budget_far_too_low_stops_with_budget(world: World, tmp_path: Path) -> None:
    code, result = run_job(
        write_spec(tmp_path / "r", world.plain[:4], world.plain[4:], world.base, max_rss_mb=10)
    )
    assert code == ExitCode.BUDGET and result.status == "budget"
    assert result.steps == 1 and "max_rss_mb 10" in result.reason and "RSS" in result.reason


def _corrupt(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "corrupt" / "policy.safetensors"
    path.parent.mkdir()
    shutil.copy(world.base, path)
    shutil.copy(card_path(world.base), card_path(path))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _truncated_with_matching_card(world: World, tmp_path: Path) -> Path:
    """Not a safetensors file at all, though its card's sha256 is right for it."""
    path = tmp_path / "trunc" / "policy.safetensors"
    path.parent.mkdir()
    path.write_bytes(world.base.read_bytes()[:40])
    card = json.loads(card_path(world.base).read_text())
    import hashlib

    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    card_path(path).write_text(json.dumps(card))
    return path


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("corrupt_base", "corrupt or replaced"),
        ("truncated_base", "not a readable safetensors file"),
        ("missing_base", "does not exist"),
        ("missing_card", "card"),
        ("mismatched_sizes", "hidden: base has [64, 64], config wants [32, 32]"),
        ("no_data", "no usable train episodes"),
        ("lora_targets", "['q_proj', 'v_proj'] match no Linear module"),
    ],
)
def test_invalid_inputs_exit_invalid_without_candidate(
    world: World, tmp_path: Path, case: str, fragment: str
) -> None:
    base, train, policy, lora = world.base, world.plain[:4], None, None
    if case == "corrupt_base":
        base = _corrupt(world, tmp_path)
    elif case == "truncated_base":
        base = _truncated_with_matching_card(world, tmp_path)
    elif case == "missing_base":
        base = tmp_path / "nope.safetensors"
    elif case == "missing_card":
        base = tmp_path / "nocard" / "policy.safetensors"
        base.parent.mkdir()
        shutil.copy(world.base, base)
    elif case == "mismatched_sizes":
        policy = PolicyConfig(hidden=[32, 32])
    elif case == "no_data":
        train = [tmp_path / "empty-episode", tmp_path / "also-missing"]
    elif case == "lora_targets":
        lora = LoraConfig(target_modules=["q_proj", "v_proj"])
    run_dir = tmp_path / "run"
    code, result = run_job(
        write_spec(run_dir, train, world.plain[4:], base, policy=policy, lora=lora, max_steps=20)
    )
    assert code == ExitCode.INVALID and result.status == "invalid"
    assert fragment in result.reason, result.reason
    assert result.candidate_path is None and not (run_dir / "candidate").exists()
    if case == "lora_targets":
        assert "layers.0" in result.reason and "head" in result.reason  # what does exist
    if case == "no_data":
        assert set(result.skipped) == {str(p) for p in train}


def test_bad_episodes_are_skipped_with_reasons(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad-episode.json"
    bad.write_text("{not json")
    code, result = run_job(
        write_spec(
            tmp_path / "r", [*world.plain[:3], bad], world.plain[4:], world.base, max_steps=5
        )
    )
    assert code == ExitCode.DONE and result.train_episodes == 3
    assert list(result.skipped) == [str(bad)] and result.skipped[str(bad)]


def test_no_eval_steps_gives_zero_eval_metrics_the_rule_rejects(world: World, tmp_path: Path):
    code, result = run_job(write_spec(tmp_path / "r", world.plain[:4], [], world.base, max_steps=5))
    assert code == ExitCode.DONE and result.metrics.eval_steps == 0
    decision = decide(result.metrics, PromotionConfig())
    assert not decision.promote and not decision.checks["evidence"]
    assert decision.decisive == "evidence" and decision.reasons[0].startswith("FAIL evidence")


def test_out_of_bounds_episodes_are_not_trained_on_by_default(world: World, tmp_path: Path):
    """``features.out_of_bounds: skip``: the reason names the episode, step, path and name."""
    code, result = run_job(
        write_spec(tmp_path / "r", world.unsafe[:6], world.plain[:3], world.base, max_steps=5)
    )
    assert code == ExitCode.INVALID and result.status == "invalid"
    assert set(result.skipped) == {str(p) for p in world.unsafe[:6]}
    reason = result.skipped[str(world.unsafe[0])]
    assert "step 1: action.command throttle=1.591 outside its bounds [-1, 1]" in reason
    assert "out_of_bounds: skip" in reason


def test_unsafe_adapter_is_rejected_for_its_block_rate(world: World, tmp_path: Path) -> None:
    """Clipped reckless driving (aim at the person, full throttle) is learnt, and blocked."""
    clip = FeaturesConfig(out_of_bounds="clip")
    code, result = run_job(
        write_spec(
            tmp_path / "r",
            world.unsafe[:5],
            world.unsafe[5:],
            world.base,
            features=clip,
            max_steps=300,
        )
    )
    assert code == ExitCode.DONE, result.reason
    m = result.metrics
    assert m.candidate.mse < m.baseline.mse  # it imitates the reckless driver better...
    assert m.candidate.block_rate > m.baseline.block_rate  # ...and so gets blocked more
    decision = decide(m, PromotionConfig())
    assert not decision.promote
    assert decision.checks["improvement"]
    assert not decision.checks["block_rate"] or not decision.checks["block_cap"]
    assert decision.decisive in ("clamp_rate", "clamp_cap", "warn_rate", "warn_cap", "block_rate")


def test_legacy_pt_base_is_read_with_weights_only(world: World, tmp_path: Path) -> None:
    """A legacy .pt state dict is accepted; a .pt that would need arbitrary unpickling is not."""
    loaded = load_base(world.base, PolicyConfig(), FeaturesConfig())
    legacy = tmp_path / "legacy.pt"
    torch.save(loaded.model.state_dict(), legacy)  # the legacy format under test, written here
    import hashlib

    card = json.loads(card_path(world.base).read_text())
    card["sha256"] = hashlib.sha256(legacy.read_bytes()).hexdigest()
    card_path(legacy).write_text(json.dumps(card))
    again = load_base(legacy, PolicyConfig(), FeaturesConfig())
    x = torch.randn(5, 3)
    assert torch.equal(again.model(x), loaded.model(x))

    hostile = tmp_path / "hostile.pt"
    torch.save({"w": torch.zeros(1), "obj": _NotATensor()}, hostile)
    card["sha256"] = hashlib.sha256(hostile.read_bytes()).hexdigest()
    card_path(hostile).write_text(json.dumps(card))
    with pytest.raises(BaseError, match="cannot be read safely"):
        load_base(hostile, PolicyConfig(), FeaturesConfig())


class _NotATensor:
    pass


def test_base_init_card_describes_the_weights(tmp_path: Path) -> None:
    from trainer_core.base import identity_normalizer
    from trainer_core.policies import build_policy

    feats = FeaturesConfig()
    model = build_policy(3, 2, PolicyConfig())
    out = tmp_path / "b.safetensors"
    card = save_base(model, out, PolicyConfig(), feats, identity_normalizer(feats), "init")
    assert card.observation_names == ["speed", "target_bearing", "human_distance_m"]
    loaded = load_base(out, PolicyConfig(), feats)
    assert loaded.sha256 == card.sha256
    np.testing.assert_array_equal(loaded.normalizer.obs_std, np.ones(3, np.float32))


def test_base_commands_refuse_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from daemon.config import load_config
    from trainer_core.base import init_command, pretrain_command

    config, _ = load_config(None, root=str(tmp_path))
    out = tmp_path / "base" / "policy.safetensors"
    init = argparse.Namespace(out=out, seed=0, force=False)
    assert init_command(init, config) == 0
    first = out.read_bytes()
    assert init_command(argparse.Namespace(out=out, seed=1, force=False), config) == 1
    assert "current releases (adapters) were all trained on it" in capsys.readouterr().err
    assert out.read_bytes() == first
    pretrain = argparse.Namespace(out=out, episodes=tmp_path / "none", steps=1, seed=0, force=False)
    assert pretrain_command(pretrain, config) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == first
    assert init_command(argparse.Namespace(out=out, seed=1, force=True), config) == 0
    assert out.read_bytes() != first
