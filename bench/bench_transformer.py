"""Benchmark the transformer family and the tiny causal LM.

    .venv/bin/python bench/bench_transformer.py [--full] [--device cpu|cuda]

1. ``train_loop`` samples/s on the transformer family (LoRA on q/k/v/o_proj) against the bare
   hand-written loop of benchlib.py over the same model, alternated in one process; the ratio
   is the figure (target >= 0.9).
2. Peak RSS of a fresh process that builds the family, attaches LoRA and trains (what a job
   child costs beyond the interpreter and torch).
3. Tokens/s of the tiny random Gemma 3n of tests/test_hf_lm.py: LoRA training tokens/s and
   greedy generation tokens/s. On CUDA with bf16 when ``--device cuda`` and supported.
Last stdout line: the JSON figures object (bench protocol).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from benchlib import figure, loop_vs_bare, print_figures, tensor_batches  # noqa: E402

from trainer_core.config import FeaturesConfig, JobConfig, LoraConfig, PolicyConfig  # noqa: E402
from trainer_core.lora import attach_lora  # noqa: E402
from trainer_core.policies import build_policy  # noqa: E402

RATIO_TARGET = 0.9
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def transformer(device: torch.device) -> torch.nn.Module:
    model = build_policy(3, 2, PolicyConfig(family="transformer"), FeaturesConfig())
    return attach_lora(model, LoraConfig(target_modules=ATTENTION)).to(device)


def loop_ratio(steps: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """(ours samples/s, bare samples/s), medians of alternated repeats."""
    torch.manual_seed(0)
    n, batch = 4096, 64
    x, y = torch.randn(n, 3, device=device), torch.randn(n, 2, device=device)
    job = JobConfig(max_steps=steps, batch_size=batch, max_wall_time_s=1e9, max_rss_mb=1e9)
    return loop_vs_bare(
        lambda: transformer(device), x, y, tensor_batches(x, y), job, repeats, device
    )


def rss_child(steps: int) -> float:
    """Peak RSS (MB) of a fresh process training the family for ``steps`` steps."""
    code = (
        "import sys, resource; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "import bench_transformer as b, torch;"
        "b.loop_ratio(int(sys.argv[3]), 1, torch.device('cpu'));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(REPO / "bench"), str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def lm_tokens_per_s(device: torch.device, steps: int) -> tuple[float, float, str]:
    """(training tokens/s, generation tokens/s, dtype) for the tiny Gemma 3n."""
    from transformers import AutoModelForCausalLM

    from tests.test_hf_lm import ATTENTION as LM_TARGETS
    from tests.test_hf_lm import tiny_gemma3n
    from trainer_core.hf_lm import attach_lm_lora, shifted_token_loss

    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_gemma3n(Path(tmp) / "m")
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model = attach_lm_lora(model, LoraConfig(target_modules=LM_TARGETS)).to(device)
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (8, 32), device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    t = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss = shifted_token_loss(model(input_ids=ids).logits, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_rate = steps * ids.numel() / (time.perf_counter() - t)
    model.eval()
    seq = ids[:1, :4]
    t = time.perf_counter()
    with torch.no_grad(), autocast:
        for _ in range(24):
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    gen_rate = 24 / (time.perf_counter() - t)
    return train_rate, gen_rate, "bfloat16" if bf16 else "float32"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: benchmarking on cpu")
        args.device = "cpu"
    device = torch.device(args.device)
    torch.set_num_threads(JobConfig().threads)
    steps, repeats = (1000, 5) if args.full else (200, 3)
    ours, bare = loop_ratio(steps, repeats, device)
    ratio = ours / bare
    print(f"transformer: train_loop {ours:,.0f} samples/s, bare {bare:,.0f}, ratio {ratio:.3f}")
    rss = rss_child(steps)
    print(f"transformer: peak RSS of a fresh training process {rss:.0f} MB")
    train_tps, gen_tps, dtype = lm_tokens_per_s(device, 20 if args.full else 8)
    print(
        f"tiny Gemma 3n ({dtype}): train {train_tps:,.0f} tokens/s, greedy {gen_tps:.1f} tokens/s"
    )
    figures = [
        figure("transformer_samples_per_s", ours, "samples/s"),
        figure(
            "transformer_loop_vs_bare_ratio",
            ratio,
            "ratio",
            f">= {RATIO_TARGET}",
            ratio >= RATIO_TARGET,
        ),
        figure("transformer_peak_rss_mb", rss, "MB"),
        figure(f"lm_train_tokens_per_s_{args.device}", train_tps, "tokens/s"),
        figure(f"lm_greedy_tokens_per_s_{args.device}", gen_tps, "tokens/s"),
        figure(
            "this_process_peak_rss_mb",
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "MB",
        ),
    ]
    print_figures(figures)


if __name__ == "__main__":
    main()
