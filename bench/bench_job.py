"""Benchmark the training job: loop overhead, thread count, child start-up and peak RSS.

    .venv/bin/python bench/bench_job.py [--full] [--device cpu|cuda]

1. ``train_loop`` samples/s against a bare hand-written PyTorch loop doing the same math
   (same peft-wrapped model, batch, in-memory data, AdamW, grad clipping), alternated in one
   process, at 1 and 2 torch threads; the ratio at the default thread count is the figure.
2. A real child (``python -m trainer_core.job``) on synthetic episodes: spawn to first
   training step (read from its progress lines), and its peak RSS from result.json.
Last stdout line: the JSON figures object (bench protocol).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from safety.config import SafetyConfig  # noqa: E402
from trainer_core.base import pretrain_base  # noqa: E402
from trainer_core.config import (  # noqa: E402
    FeaturesConfig,
    IngestConfig,
    JobConfig,
    LoraConfig,
    PolicyConfig,
)
from trainer_core.lora import attach_lora, trainable_parameters  # noqa: E402
from trainer_core.policies import build_policy  # noqa: E402
from trainer_core.spec import JobSpec  # noqa: E402
from trainer_core.synth import write_synthetic_episodes  # noqa: E402
from trainer_core.train import Budget, LoopState, make_optimizer, train_loop  # noqa: E402

STARTUP_TARGET_S = 6.0
RSS_TARGET_MB = 600.0
RATIO_TARGET = 0.9


def bare_loop(model, opt, x, y, steps: int, batch: int, clip: float, seed: int) -> None:
    """What a person would write by hand: the reference for the overhead ratio."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(x)
    per_epoch = n // batch
    epoch, b = 0, 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        if b >= per_epoch:
            epoch, b = epoch + 1, 0
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        idx = perm[b * batch : (b + 1) * batch]
        b += 1
        loss = F.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    loss.item()


def loop_ratio(threads: int, steps: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """(ours samples/s, bare samples/s), medians of alternated repeats."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n, batch = 4096, 64
    x = torch.randn(n, 3, device=device)
    y = torch.randn(n, 2, device=device)
    job = JobConfig(max_steps=steps, batch_size=batch, max_wall_time_s=1e9, max_rss_mb=1e9)
    ours, bare = [], []
    for r in range(repeats):
        for which in ("ours", "bare"):
            model = attach_lora(build_policy(3, 2, PolicyConfig()), LoraConfig()).to(device)
            opt = make_optimizer(trainable_parameters(model), job)
            t = time.perf_counter()
            if which == "ours":
                train_loop(
                    model,
                    opt,
                    x,
                    y,
                    job,
                    LoopState(),
                    Budget(job, t, lambda: False),
                    lambda e: None,
                )
            else:
                bare_loop(model, opt, x, y, steps, batch, job.grad_clip, r)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = steps * batch / (time.perf_counter() - t)
            (ours if which == "ours" else bare).append(rate)
    return statistics.median(ours), statistics.median(bare)


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
    for threads in (1, 2):
        ours, bare = loop_ratio(threads, steps, repeats, device)
        rates[threads] = (ours, bare)
        print(
            f"threads={threads}: train_loop {ours:,.0f} samples/s, bare loop {bare:,.0f} "
            f"samples/s, ratio {ours / bare:.3f}"
        )
        figures.append(
            {
                "name": f"loop_samples_per_s_{threads}_threads",
                "value": round(ours, 1),
                "unit": "samples/s",
                "target": "informational",
                "pass": None,
            }
        )
    ours, bare = rates[default_threads]
    figures.append(
        {
            "name": "loop_vs_bare_ratio",
            "value": round(ours / bare, 3),
            "unit": "ratio",
            "target": f">= {RATIO_TARGET}",
            "pass": ours / bare >= RATIO_TARGET,
        }
    )
    print(f"default job.threads = {default_threads}")
    with tempfile.TemporaryDirectory() as tmp:
        startup, rss, result = child_run(Path(tmp), 300, args.device)
    print(
        f"child: spawn to first step {startup:.2f} s (its own startup_s "
        f"{result['timings'].get('startup_s')}), peak RSS {rss:.0f} MB, status "
        f"{result['status']}, {result['steps']} steps, device {result['device']}"
    )
    figures += [
        {
            "name": "child_startup_s",
            "value": round(startup, 3),
            "unit": "s",
            "target": f"<= {STARTUP_TARGET_S}",
            "pass": startup <= STARTUP_TARGET_S,
        },
        {
            "name": "child_peak_rss_mb",
            "value": round(rss, 1),
            "unit": "MB",
            "target": f"<= {RSS_TARGET_MB}",
            "pass": rss <= RSS_TARGET_MB,
        },
    ]
    print(json.dumps({"figures": figures}))


if __name__ == "__main__":
    main()
