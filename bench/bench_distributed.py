"""Data-parallel scaling of the cloud entry point (``trainer_core.distributed``).

    .venv/bin/python bench/bench_distributed.py [--full] [--steps N] [--family mlp|transformer]

A robot root with synthetic episodes is exported as a bundle, then
``torchrun --standalone --nproc_per_node=P -m trainer_core.distributed`` trains it for P = 1 and
P = 2 (gloo on CPU, one torch thread per process, the same per-process batch, so two processes
see twice the samples per step). The figure is samples/s of the train phase as the adapter's
card reports it (steps x global batch / train seconds, collectives included), and the ratio
2-process / 1-process (ideal 2.0 with two free cores; this machine's cores are shared).
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

import yaml  # noqa: E402

CLI = [sys.executable, "-m", "daemon.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def run(cmd: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:6]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def make_bundle(work: Path, family: str, episodes: int) -> Path:
    root = work / "robot"
    (root / "rlds" / "episodes").mkdir(parents=True)
    config = root / "trainer.yaml"
    cfg: dict = {"policy": {"family": family}}
    if family == "transformer":
        cfg["lora"] = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    config.write_text(yaml.safe_dump(cfg))
    base = ["--root", str(root), "--config", str(config)]
    run([*CLI, *base, "base", "init"])
    run([*CLI, *base, "synth", "--out", str(root / "rlds" / "episodes"),
         "--episodes", str(episodes), "--steps", "200"])  # fmt: skip
    run([*CLI, *base, "export", "--out", str(work / "bundle")])
    return work / "bundle"


def train(bundle: Path, out: Path, procs: int, steps: int, batch: int) -> dict:
    t = time.monotonic()
    run([*TORCHRUN, f"--nproc_per_node={procs}", "-m", "trainer_core.distributed", str(bundle),
         "--out", str(out), "--steps", str(steps), "--batch-size", str(batch),
         "--threads", "1", "--device", "cpu"])  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    off = card["trained_off_robot"]
    off["wall_s"] = round(time.monotonic() - t, 1)
    off["train_s"] = card["timings"]["train_s"]
    return off


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="more steps")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int, default=64, help="per process")
    ap.add_argument("--family", default="mlp", choices=("mlp", "transformer"))
    args, _ = ap.parse_known_args()
    steps = args.steps or (3000 if args.full else 600)
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        work = Path(tmp)
        bundle = make_bundle(work, args.family, 24)
        rates = {}
        for procs in (1, 2):
            off = train(bundle, work / f"adapter{procs}", procs, steps, args.batch)
            rates[procs] = off["samples_per_s"]
            print(
                f"{procs} process(es), {args.family}: {off['samples_per_s']:.0f} samples/s "
                f"(global batch {off['global_batch']}, {steps} steps, train {off['train_s']} s, "
                f"wall incl. start-up {off['wall_s']} s, backend {off['backend']})"
            )
            figures.append(
                {
                    "name": f"{args.family} samples/s, {procs} process(es)",
                    "value": off["samples_per_s"],
                    "unit": "samples/s",
                    "target": "",
                    "pass": None,
                }
            )
        ratio = rates[2] / rates[1]
        print(f"scaling 2 vs 1 process: x{ratio:.2f}")
        figures.append(
            {
                "name": f"{args.family} DDP scaling 2 vs 1 process (gloo, CPU)",
                "value": round(ratio, 3),
                "unit": "x",
                "target": "reported (2 shared cores)",
                "pass": None,
            }
        )
    print(json.dumps({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
