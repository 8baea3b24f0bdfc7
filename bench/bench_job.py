"""Benchmark the training job: loop overhead, thread count, child start-up and peak RSS.

    .venv/bin/python bench/bench_job.py [--full] [--device cpu|cuda]

1. ``train_loop`` samples/s against a bare hand-written PyTorch loop doing the same math
   (benchlib.py: same LoRA-wrapped model, batch, in-memory data, AdamW, grad clipping),
   alternated in one process, at 1, 2 and 4 torch threads (the sweep job.threads' default is
   chosen from); the ratio at the default thread count is the figure.
2. A real child (``python -m trainer_core.job``) on synthetic episodes: spawn to first
   training step (read from its progress lines), and its peak RSS from result.json.
Last stdout line: the JSON figures object (bench protocol).
"""

from __future__ import annotations

import argparse
import json
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

from safety.config import SafetyConfig  # noqa: E402
from trainer_core.base import pretrain_base  # noqa: E402
from trainer_core.config import (  # noqa: E402
    FeaturesConfig,
    IngestConfig,
    JobConfig,
    LoraConfig,
    PolicyConfig,
)
from trainer_core.lora import attach_lora  # noqa: E402
from trainer_core.policies import build_policy  # noqa: E402
from trainer_core.spec import JobSpec  # noqa: E402
from trainer_core.synth import write_synthetic_episodes  # noqa: E402

STARTUP_TARGET_S = 4.0
RSS_TARGET_MB = 600.0
RATIO_TARGET = 0.9


def loop_ratio(threads: int, steps: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """(ours samples/s, bare samples/s), medians of alternated repeats."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n, batch = 4096, 64
    x = torch.randn(n, 3, device=device)
    y = torch.randn(n, 2, device=device)
    job = JobConfig(max_steps=steps, batch_size=batch, max_wall_time_s=1e9, max_rss_mb=1e9)

    def make() -> torch.nn.Module:
        return attach_lora(build_policy(3, 2, PolicyConfig()), LoraConfig()).to(device)

    return loop_vs_bare(make, x, y, tensor_batches(x, y), job, repeats, device)


def child_run(root: Path, steps: int, device: str) -> tuple[float, float, dict]:
    """Spawn a real job child; return (spawn-to-first-step s, peak RSS MB, result)."""
    eps = write_synthetic_episodes(root / "eps", 12, 100, seed=1, steering_bias=0.3)
    base = root / "base" / "policy.safetensors"
    pretrain_base(
        write_synthetic_episodes(root / "base_eps", 8, 100, seed=0),
        base,
        PolicyConfig(),
        FeaturesConfig(),
        JobConfig(),
        IngestConfig(),
        steps=300,
        seed=0,
    )
    run_dir = root / "run"
    run_dir.mkdir()
    spec = JobSpec(
        run_id="bench",
        run_dir=run_dir,
        train_episodes=eps[:9],
        eval_episodes=eps[9:],
        base_path=base,
        features=FeaturesConfig(),
        policy=PolicyConfig(),
        lora=LoraConfig(),
        job=JobConfig(max_steps=steps, device=device),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    t = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer_core.job", str(run_dir / "spec.json")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    first_step = None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "progress" and first_step is None:
            first_step = time.monotonic() - t
    proc.wait()
    result = json.loads((run_dir / "result.json").read_text())
    return first_step or float("nan"), result["peak_rss_mb"], result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: benchmarking on cpu")
        args.device = "cpu"
    device = torch.device(args.device)
    steps, repeats = (2000, 5) if args.full else (300, 3)
    default_threads = JobConfig().threads
    figures = []
    rates = {}
    for threads in (1, 2, 4):
        ours, bare = loop_ratio(threads, steps, repeats, device)
        rates[threads] = (ours, bare)
        print(
            f"threads={threads}: train_loop {ours:,.0f} samples/s, bare loop {bare:,.0f} "
            f"samples/s, ratio {ours / bare:.3f}"
        )
        figures.append(figure(f"loop_samples_per_s_{threads}_threads", ours, "samples/s"))
    best = max(rates, key=lambda t: rates[t][0])
    print(f"default job.threads = {default_threads}; fastest in this sweep: {best}")
    ours, bare = rates[default_threads]
    ratio = ours / bare
    figures.append(figure("loop_vs_bare_ratio", ratio, "ratio", f">= {RATIO_TARGET}",
                          ratio >= RATIO_TARGET))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        startup, rss, result = child_run(Path(tmp), 300, args.device)
    print(
        f"child: spawn to first step {startup:.2f} s (its own startup_s "
        f"{result['timings'].get('startup_s')}), peak RSS {rss:.0f} MB, status "
        f"{result['status']}, {result['steps']} steps, device {result['device']}"
    )
    figures += [
        figure("child_startup_s", startup, "s", f"<= {STARTUP_TARGET_S}",
               startup <= STARTUP_TARGET_S),
        figure("child_peak_rss_mb", rss, "MB", f"<= {RSS_TARGET_MB}", rss <= RSS_TARGET_MB),
    ]  # fmt: skip
    print_figures(figures)


if __name__ == "__main__":
    main()
