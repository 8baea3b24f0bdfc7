"""hf-causal-lm: a tiny random Gemma 3n causal LM (config, weights and tokenizer all built
offline) trains a LoRA adapter from episodes' instructions and planner text; held-out token loss
drops, the fixed prompt set does not regress, and the adapter reloads identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.precheck import manifest_model_mismatch
from safety.config import PromotionConfig, SafetyConfig
from safety.rule import decide
from trainer_core.config import (
    FeaturesConfig,
    IngestConfig,
    JobConfig,
    LanguageConfig,
    LoraConfig,
    PolicyConfig,
    PromptCase,
)
from trainer_core.hf_lm import LMError, episode_instruction, model_dir, regressions, step_pair
from trainer_core.spec import ExitCode, JobResult, JobSpec
from trainer_core.synth import write_synthetic_episodes

TASKS = {
    "follow the person": "drive forward slowly",
    "stop now": "brake and wait",
    "turn left": "steer left gently",
    "turn right": "steer right gently",
}
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def tiny_gemma3n(folder: Path) -> Path:
    """A random two-layer Gemma 3n and a word-level tokenizer, saved as a local model dir."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig, PreTrainedTokenizerFast

    words = sorted({w for pair in TASKS.items() for text in pair for w in text.split()} | {"###"})
    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
        eos_token="[EOS]",
    )  # fmt: skip
    config = Gemma3nTextConfig(
        vocab_size=len(vocab), vocab_size_per_layer_input=len(vocab), hidden_size=32,
        hidden_size_per_layer_input=8, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        sliding_window=32, layer_types=["sliding_attention", "full_attention"],
        activation_sparsity_pattern=[0.0, 0.0], num_kv_shared_layers=0, altup_num_inputs=2,
        laurel_rank=4, pad_token_id=0, bos_token_id=2, eos_token_id=3, initializer_range=0.3,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    Gemma3nForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def language_episodes(out: Path, n: int, seed: int) -> list[Path]:
    """Synthetic Donkeycar episodes with an instruction and the planner text the robot logged:
    even ones carry the instruction per step, odd ones as an ``instruction:`` tag."""
    episodes = write_synthetic_episodes(out, n, 12, seed=seed)
    for i, ep in enumerate(episodes):
        instruction, plan = list(TASKS.items())[(i + seed) % len(TASKS)]
        steps_file = ep / "steps" / "000000.jsonl"
        steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
        for step in steps:
            step["action"]["planner"] = plan
            if i % 2 == 0:
                step["step_metadata"]["language_instruction"] = instruction
        steps_file.write_text("\n".join(json.dumps(s) for s in steps) + "\n")
        if i % 2:
            meta = json.loads((ep / "metadata.json").read_text())
            meta["tags"].append(f"instruction:{instruction}")
            (ep / "metadata.json").write_text(json.dumps(meta))
    return episodes


def lm_policy(folder: Path) -> PolicyConfig:
    return PolicyConfig(
        family="hf-causal-lm",
        model_name="gemma-3n",
        model_dir=folder,
        language=LanguageConfig(
            prompts=[PromptCase(prompt=k, expected=v) for k, v in TASKS.items()],
            max_new_tokens=6,
        ),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobResult, Path, PolicyConfig]:
    from trainer_core.job import main

    work = tmp_path_factory.mktemp("lm")
    policy = lm_policy(tiny_gemma3n(work / "gemma3n"))
    train = language_episodes(work / "train", 8, seed=0)
    evals = language_episodes(work / "eval", 4, seed=1)
    run_dir = work / "run"
    run_dir.mkdir()
    spec = JobSpec(
        run_id="run",
        run_dir=run_dir,
        train_episodes=train,
        eval_episodes=evals,
        base_path=work / "unused.safetensors",
        features=FeaturesConfig(),
        policy=policy,
        lora=LoraConfig(target_modules=ATTENTION, r=8, alpha=16),
        job=JobConfig(
            max_steps=100, batch_size=8, learning_rate=2e-2, threads=2, log_every_steps=25
        ),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    code = main([str(run_dir / "spec.json")])
    result = JobResult.model_validate_json((run_dir / "result.json").read_text())
    assert code == ExitCode.DONE, result.reason
    return result, run_dir / "candidate", policy


@pytest.mark.slow
def test_tiny_gemma3n_learns_the_planner_text_and_is_promotable(trained) -> None:
    result, candidate, _ = trained
    m = result.metrics
    assert m is not None and m.eval_episodes == 4 and len(m.episodes) == 4
    assert m.eval_steps == sum(e.steps for e in m.episodes) > 48  # target tokens
    assert m.candidate.mse < 0.5 * m.baseline.mse  # held-out token loss drops
    checks = {c.name: c for c in m.family_checks}
    assert checks["prompt_set"].ok, checks["prompt_set"].text  # no prompt regressed
    decision = decide(m, PromotionConfig(min_eval_steps=20))  # the paired bootstrap
    assert decision.promote, decision.reasons
    card = json.loads((candidate / "card.json").read_text())
    assert card["family"] == "hf-causal-lm" and card["device"] == "cpu"
    right = [o == want for o, want in zip(card["prompt_outputs"], TASKS.values(), strict=True)]
    assert sum(right) >= 2, card["prompt_outputs"]  # it learned plans (the random base: none)
    adapter = json.loads((candidate / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"


@pytest.mark.slow
def test_the_adapter_reloads_with_peft_identically(trained, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer_core.hf_lm import encode, episode_token_losses, greedy, read_language

    result, candidate, policy = trained
    base = AutoModelForCausalLM.from_pretrained(policy.model_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, str(candidate))
    tokenizer = AutoTokenizer.from_pretrained(policy.model_dir, local_files_only=True)
    outputs = [greedy(model, tokenizer, p, 6, torch.device("cpu")) for p in TASKS]
    assert outputs == json.loads((candidate / "card.json").read_text())["prompt_outputs"]
    evals = read_language(
        sorted((candidate.parent.parent / "eval").iterdir()), IngestConfig(), policy.language
    )
    encoded = [encode(tokenizer, ep, policy.language.max_length) for ep in evals.episodes]
    losses = episode_token_losses(model, encoded, torch.device("cpu"), lambda: False)
    pooled = sum(n for n, _ in losses) / sum(t for _, t in losses)
    assert pooled == pytest.approx(result.metrics.candidate.mse, abs=1e-5)


def test_a_hub_id_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(LMError, match=r"looks like a Hugging Face hub id.*local files only"):
        model_dir(PolicyConfig(family="hf-causal-lm", model_dir="google/gemma-3n-E2B-it"))
    with pytest.raises(LMError, match=r"has no config\.json"):
        model_dir(PolicyConfig(family="hf-causal-lm", model_dir=tmp_path))


def test_training_pairs_come_from_the_episode_language() -> None:
    cfg = LanguageConfig(summary_paths=["step_metadata.human_distance_m"])
    step = {
        "observation": {},
        "action": {"planner": {"goal": "dock"}, "dialog": "hello"},
        "step_metadata": {"language_instruction": "go home", "human_distance_m": "2.5"},
    }
    assert step_pair(step, None, cfg) == ("go home human_distance_m=2.5", '{"goal": "dock"}')
    no_text = {"observation": {}, "action": {"command": [0.1]}, "step_metadata": {}}
    assert step_pair(no_text, "x", cfg) is None
    assert episode_instruction({"tags": ["pi5", "instruction:follow me"]}) == "follow me"
    assert episode_instruction({"language_instruction": "park"}) == "park"
    assert regressions([1, 0, 1], [1, 1, 0]) == [2]


def test_a_gemma_manifest_is_accepted_for_this_family() -> None:
    manifest = {"model_name": "gemma-3n"}
    assert (
        manifest_model_mismatch(
            manifest, PolicyConfig(family="hf-causal-lm", model_name="gemma-3n")
        )
        is None
    )
    assert "a language model" in manifest_model_mismatch(
        manifest, PolicyConfig(family="mlp", model_name="gemma-3n")
    )
