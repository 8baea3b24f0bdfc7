"""Benchmark the camera path: decoding, the frame cache, the cnn training loop, child memory.

    .venv/bin/python bench/bench_camera.py [--frames 20000] [--steps 30]

1. Decode frames/s: ``trainer_core.frames.decode`` (Pillow, JPEG draft mode) vs Pillow's plain
   open/convert/resize, same synthetic 120x160 JPEGs, to 120x160 and to 60x80.
2. Training samples/s, cnn at 120x160, batch 64: ``train_loop`` over cached frames vs a bare
   PyTorch loop over the same model and the same frames in memory; threads 1/2/4; the
   trunk-feature cache (LoRA above the trunk) vs training through the frozen trunk.
3. A fresh process gathers random batches from ``--frames`` cached 120x160 frames and runs the
   cnn on them: its peak RSS and the cache size on disk.
Last stdout line: the JSON figures object (bench protocol).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def jpegs(n: int) -> list[bytes]:
    from PIL import Image

    from trainer_core.synth_camera import render

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(render(0.1 * np.sin(i), 0.2 * np.cos(i), 0.2, _opts())).save(
            buf, format="JPEG", quality=90
        )
        out.append(buf.getvalue())
    return out


def _opts():
    from trainer_core.synth_camera import CameraOptions

    return CameraOptions()


def bench_decode(data: list[bytes]) -> dict:
    from PIL import Image

    from trainer_core.frames import decode
    from trainer_core.image_config import ImageFeature

    figures = {}
    for size in ((120, 160), (60, 80)):
        spec = ImageFeature(size=size)
        t = time.perf_counter()
        for d in data:
            decode(d, spec, "bench")
        chosen = len(data) / (time.perf_counter() - t)
        t = time.perf_counter()
        for d in data:
            img = Image.open(io.BytesIO(d)).convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            np.asarray(img)
        plain = len(data) / (time.perf_counter() - t)
        tag = f"{size[0]}x{size[1]}"
        figures[f"decode_fps_chosen_{tag}"] = round(chosen)
        figures[f"decode_fps_pillow_plain_{tag}"] = round(plain)
    return figures


def _model():
    from trainer_core.cnn import CNNPolicy
    from trainer_core.config import LoraConfig, PolicyConfig
    from trainer_core.lora import attach_lora

    torch.manual_seed(0)
    base = CNNPolicy(0, 2, PolicyConfig(family="cnn", hidden=[100, 50]))
    for p in base.parameters():
        p.requires_grad_(False)
    return attach_lora(base, LoraConfig(target_modules=["dense.0", "dense.1", "head"]))


def bench_loop(frames: np.ndarray, steps: int) -> dict:
    from trainer_core.config import JobConfig
    from trainer_core.frame_cache import FrameStore
    from trainer_core.inputs import ModelInputs, trunk_features
    from trainer_core.train import Budget, LoopState, make_optimizer, train_loop

    n = len(frames)
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.u8"
        path.write_bytes(frames.tobytes())
        store = FrameStore(frames.shape[1:], [path])
        y = torch.randn(n, 2)
        job = JobConfig(max_steps=steps, log_every_steps=10**6)
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            model = _model()
            x = ModelInputs(torch.zeros(n, 0), frames=store)
            t = time.perf_counter()
            train_loop(
                model,
                make_optimizer([p for p in model.parameters() if p.requires_grad], job),
                x,
                y,
                job,
                LoopState(),
                Budget(job, time.monotonic(), lambda: False),
                lambda e: None,
            )
            loop = steps * 64 / (time.perf_counter() - t)
            # The bare loop: same model, same frames (in memory), same optimiser and clip.
            model = _model()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=3e-3)
            gen = torch.Generator().manual_seed(0)
            t = time.perf_counter()
            for _ in range(steps):
                idx = torch.randint(0, n, (64,), generator=gen)
                out = model(torch.zeros(64, 0), torch.from_numpy(frames[idx.numpy()]))
                loss = F.mse_loss(out, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            bare = steps * 64 / (time.perf_counter() - t)
            figures[f"train_sps_job_t{threads}"] = round(loop, 1)
            figures[f"train_sps_bare_t{threads}"] = round(bare, 1)
            figures[f"train_ratio_t{threads}"] = round(loop / bare, 3)
        torch.set_num_threads(2)
        model = _model()
        t = time.perf_counter()
        feats = trunk_features(model.get_base_model(), store, torch.device("cpu"))
        trunk_s = time.perf_counter() - t
        x = ModelInputs(torch.zeros(n, 0), feats=feats)
        many = steps * 20
        job = JobConfig(max_steps=many, log_every_steps=10**6)
        t = time.perf_counter()
        train_loop(
            model,
            make_optimizer([p for p in model.parameters() if p.requires_grad], job),
            x,
            y,
            job,
            LoopState(),
            Budget(job, time.monotonic(), lambda: False),
            lambda e: None,
        )
        cached = many * 64 / (time.perf_counter() - t)
        figures["train_sps_trunk_cached_t2"] = round(cached, 1)
        figures["trunk_cache_speedup_t2"] = round(cached / figures["train_sps_job_t2"], 1)
        figures["trunk_features_s_per_1000_frames"] = round(trunk_s / n * 1000, 3)
    return figures


RSS_CHILD = r"""
import json, os, resource, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[3])
from trainer_core.frame_cache import FrameStore
from trainer_core.cnn import CNNPolicy
from trainer_core.config import PolicyConfig
torch.set_num_threads(2)
store = FrameStore((3, 120, 160), [sys.argv[1]])
model = CNNPolicy(0, 2, PolicyConfig(family="cnn", hidden=[100, 50]))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
rng = np.random.default_rng(0)
n = len(store)
for epoch_pass in range(int(sys.argv[2])):
    idx = rng.integers(0, n, 64)
    loss = model(torch.zeros(64, 0), torch.from_numpy(store.gather(idx))).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
# touch every frame once, as an epoch (or the trunk cache) does
for start in range(0, n, 256):
    store.gather(np.arange(start, min(start + 256, n)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"frames": n, "peak_rss_mb": peak}))
"""


def bench_rss(n_frames: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.u8"
        row = np.random.default_rng(0).integers(0, 255, 3 * 120 * 160, dtype=np.uint8).tobytes()
        with open(path, "wb") as f:
            for _ in range(n_frames):
                f.write(row)
        done = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, str(path), str(steps), str(REPO)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        return {
            "rss_frames": n_frames,
            "rss_peak_child_mb": round(out["peak_rss_mb"], 1),
            "cache_size_mb": round(path.stat().st_size / 2**20, 1),
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    from trainer_core.frames import decode
    from trainer_core.image_config import ImageFeature

    data = jpegs(200)
    figures = bench_decode(data)
    frames = np.stack([decode(d, ImageFeature(), "bench") for d in data])
    figures.update(bench_loop(frames, args.steps))
    figures.update(bench_rss(args.frames, args.steps))
    for k, v in figures.items():
        print(f"{k:40s} {v}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
