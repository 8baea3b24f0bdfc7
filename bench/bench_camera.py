"""Benchmark the camera path: decoding, the frame cache, the cnn training loop, child memory.

    .venv/bin/python bench/bench_camera.py [--frames 20000] [--steps 30]

1. Decode frames/s: ``trainer_core.frames.decode`` (Pillow, JPEG draft mode) vs Pillow's plain
   open/convert/resize, same synthetic 120x160 JPEGs, to 120x160 and to 60x80.
2. Training samples/s, cnn at 120x160, batch 64: ``train_loop`` over cached frames vs a bare
   PyTorch loop over the same model and the same frames in memory (benchlib.py, alternated,
   medians); threads 1/2/4; the trunk-feature cache (LoRA above the trunk) vs training through
   the frozen trunk.
3. Fresh processes over ``--frames`` cached 120x160 frames: the job child's path (LoRA above a
   frozen trunk: read every frame, train through the trunk, cache trunk features, an eval pass)
   and full-cnn training (base pretraining): peak RSS after each phase, the cache size on disk.
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

sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchlib import figure, loop_vs_bare, print_figures, run_train_loop  # noqa: E402


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


def bench_decode(data: list[bytes]) -> list[dict]:
    from PIL import Image

    from trainer_core.frames import decode
    from trainer_core.image_config import ImageFeature

    figures = []
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
        print(f"decode {tag}: chosen (draft mode) {chosen:,.0f} frames/s, plain {plain:,.0f}")
        figures += [
            figure(f"decode_fps_chosen_{tag}", chosen, "frames/s"),
            figure(f"decode_fps_pillow_plain_{tag}", plain, "frames/s"),
        ]
    return figures


def _model():
    from trainer_core.cnn import CNNPolicy
    from trainer_core.config import LoraConfig, PolicyConfig
    from trainer_core.lora import attach_lora

    torch.manual_seed(0)
    base = CNNPolicy(0, 2, PolicyConfig(family="cnn", hidden=[100, 50]))
    return attach_lora(base, LoraConfig(target_modules=["dense.0", "dense.1", "head"]))


def bench_loop(frames: np.ndarray, steps: int, repeats: int) -> list[dict]:
    from trainer_core.config import JobConfig
    from trainer_core.frame_cache import FrameStore
    from trainer_core.inputs import ModelInputs, trunk_features

    n, batch = len(frames), 64
    figures: list[dict] = []
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.u8"
        path.write_bytes(frames.tobytes())
        store = FrameStore(frames.shape[1:], [path])
        y = torch.randn(n, 2)
        job = JobConfig(
            max_steps=steps, batch_size=batch, log_every_steps=10**6, max_wall_time_s=1e9,
            max_rss_mb=1e9,
        )  # fmt: skip
        x = ModelInputs(torch.zeros(n, 0), frames=store)
        empty = torch.zeros(batch, 0)

        def in_memory(idx: torch.Tensor):  # the bare loop: same frames, already in memory
            return (empty[: len(idx)], torch.from_numpy(frames[idx.numpy()])), y[idx]

        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            ours, bare = loop_vs_bare(_model, x, y, in_memory, job, repeats)
            rates[threads] = ours
            print(f"cnn threads={threads}: train_loop {ours:,.1f} samples/s, bare {bare:,.1f}, "
                  f"ratio {ours / bare:.3f}")  # fmt: skip
            figures += [
                figure(f"cnn_train_sps_job_t{threads}", ours, "samples/s"),
                figure(f"cnn_train_sps_bare_t{threads}", bare, "samples/s"),
                figure(f"cnn_train_ratio_t{threads}", ours / bare, "ratio", ">= 0.9",
                       ours / bare >= 0.9),
            ]  # fmt: skip
        default = JobConfig().threads
        print(
            f"cnn: fastest thread count {max(rates, key=rates.get)}, job.threads default {default}"
        )
        torch.set_num_threads(default)
        model = _model()
        t = time.perf_counter()
        feats = trunk_features(model.get_base_model(), store, torch.device("cpu"))
        trunk_s = time.perf_counter() - t
        many = job.model_copy(update={"max_steps": steps * 20})
        cached = (
            many.max_steps
            * batch
            / run_train_loop(model, ModelInputs(torch.zeros(n, 0), feats=feats), y, many)
        )
        through = rates[default]
        print(f"trunk-feature cache: {cached:,.0f} samples/s vs {through:,.1f} through the trunk")
        figures += [
            figure(f"cnn_train_sps_trunk_cached_t{default}", cached, "samples/s"),
            figure("trunk_cache_speedup", cached / through, "x"),
            figure("trunk_features_s_per_1000_frames", trunk_s / n * 1000, "s"),
        ]
    return figures


RSS_CHILD = r"""
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[3])
from trainer_core.cnn import CNNPolicy
from trainer_core.config import JobConfig, LoraConfig, PolicyConfig
from trainer_core.evaluate import FRAME_CHUNK
from trainer_core.frame_cache import FrameStore
from trainer_core.inputs import ModelInputs, trunk_features
from trainer_core.lora import attach_lora


def phase_peak():
    # VmHWM since the last reset, then reset it (clear_refs 5): each mark is that phase's peak
    with open("/proc/self/status") as f:
        kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return kb / 1024

torch.set_num_threads(JobConfig().threads)
store = FrameStore((3, 120, 160), [sys.argv[1]])
n, steps, mode = len(store), int(sys.argv[2]), sys.argv[4]
marks = {"interpreter_torch_imports": phase_peak()}
model = CNNPolicy(0, 2, PolicyConfig(family="cnn", hidden=[100, 50]))
if mode == "lora":  # the job child: LoRA above a frozen trunk
    model = attach_lora(model, LoraConfig(target_modules=["dense.0", "dense.1", "head"]))
marks["torch_and_model"] = phase_peak()
# an epoch's worth of reads: every frame once, as the trunk cache or an epoch does
for start in range(0, n, 256):
    store.gather(np.arange(start, min(start + 256, n)))
marks["all_frames_read"] = phase_peak()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
rng = np.random.default_rng(0)
for _ in range(steps):  # frames through the trunk each step (augmentation on)
    idx = rng.integers(0, n, 64)
    loss = model(torch.zeros(64, 0), torch.from_numpy(store.gather(idx))).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
marks["train_batch_64"] = phase_peak()
if mode == "lora":
    sub = FrameStore((3, 120, 160), [sys.argv[5]])  # 1024 frames: the peak is per chunk
    trunk_features(model.get_base_model(), sub, torch.device("cpu"))
    marks["trunk_features"] = phase_peak()
    x = ModelInputs(torch.zeros(1024, 0), frames=sub)
    with torch.no_grad():
        for start in range(0, 1024, FRAME_CHUNK):
            model(*x.rows(start, start + FRAME_CHUNK))
    marks["eval_pass"] = phase_peak()
print(json.dumps({"frames": n, "peak_rss_mb": max(marks.values()), "marks": marks}))
"""


def bench_rss(n_frames: int, steps: int) -> list[dict]:
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.u8"
        row = np.random.default_rng(0).integers(0, 255, 3 * 120 * 160, dtype=np.uint8).tobytes()
        with open(path, "wb") as f:
            for _ in range(n_frames):
                f.write(row)
        head = Path(tmp) / "head.u8"
        head.write_bytes(row * 1024)
        for mode in ("lora", "full"):
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    RSS_CHILD,
                    str(path),
                    str(steps),
                    str(REPO),
                    mode,
                    str(head),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            out = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"rss ({mode}, {n_frames} frames): peak {out['peak_rss_mb']:.0f} MB; per phase "
                  + ", ".join(f"{k} {v:.0f}" for k, v in out["marks"].items()))  # fmt: skip
            name = "rss_peak_child_mb" if mode == "lora" else "rss_peak_full_cnn_training_mb"
            figures.append(figure(name, out["peak_rss_mb"], "MB", "<= 700",
                                  out["peak_rss_mb"] <= 700))  # fmt: skip
        size = path.stat().st_size / 2**20
    print(f"cache size on disk for {n_frames} frames: {size:.0f} MB")
    figures.append(figure("cache_size_mb", size, "MB"))
    return figures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--full", action="store_true")  # run_all.py passes it on; sizes stay
    args = ap.parse_args()
    from trainer_core.frames import decode
    from trainer_core.image_config import ImageFeature

    data = jpegs(200)
    figures = bench_decode(data)
    frames = np.stack([decode(d, ImageFeature(), "bench") for d in data])
    figures += bench_loop(frames, args.steps, args.repeats)
    figures += bench_rss(args.frames, args.steps)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
