"""``continuon-trainer demo``: the real daemon, end to end, on the embedded default.

The demo plays the robot: it pretrains a small base on synthetic "factory" episodes, writes a
continuonos-style manifest and mode file, starts the real service (``continuon-trainer run``) as a
subprocess, drops episodes recorded after a change in the robot's behaviour (a steering bias)
into the watched folder, switches the robot to teleop during the first job (the job is
preempted) and back to idle (it resumes), and prints the outcome. Everything lives in the demo
root, which a second run starts afresh. Heavy work happens in child processes, as in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon.config import TrainerConfig
from daemon.status import read_status
from trainer_core.config import PolicyConfig
from trainer_core.fsio import atomic_write_json
from trainer_core.spec import RESULT_FILE, JobResult

MARKER = ".continuon-demo"
TIMEOUT_S = 240.0
DEMO_SHIFT = {"steering_bias": 0.3}  # what changed on the robot since the base was trained


def manifest_template(
    root: Path, model_name: str = PolicyConfig.model_fields["model_name"].default
) -> dict[str, Any]:
    """A manifest shaped like continuonos' Pi 5 sample, pointing into the demo root."""
    model = root / "model"
    return {
        "model_name": model_name,
        "runtime": {"engine": "continuon_mlp", "backend": "cpu", "quantization": "none"},
        "paths": {
            "base_model": str(model / "base" / "policy.safetensors"),
            "adapter_dir": str(model / "adapters" / "current"),
            "adapter": str(model / "adapters" / "current" / "adapter_model.safetensors"),
        },
        "adapter_meta": {"type": "lora", "rank": 8, "alpha": 16},
        "safety": {
            "path": "continuonbrain.trainer.safety_head_wavecore",
            "clamp_bounds": {"steering": [-1.0, 1.0], "throttle": [-1.0, 1.0]},
            "warn_threshold": 0.25,
            "block_threshold": 0.6,
            "envelope": {"status": "nominal", "radius_m": 1.2, "decay": 0.12},
        },
        "notes": "Written by `continuon-trainer demo`.",
    }


def write_mode(root: Path, mode: str) -> None:
    """What continuonos writes when the robot changes mode."""
    now = time.time()
    atomic_write_json(
        root / ".robot_mode",
        {
            "mode": mode,
            "timestamp": now,
            "config": {
                "mode": mode,
                "timestamp": now,
                "allow_motion": mode != "idle",
                "record_episodes": False,
                "run_inference": False,
                "self_train": False,
                "metadata": {},
            },
        },
    )


class Demo:
    """One demo run in ``root``; ``say`` prints progress."""

    def __init__(self, cfg: TrainerConfig, root: Path) -> None:
        self.cfg = cfg
        self.root = root
        self.log_path = root / "daemon.log"
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self.daemon: subprocess.Popen[bytes] | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def cli(self, *args: str) -> None:
        """Run a continuon-trainer verb in a child process (torch stays out of this one)."""
        cmd = [sys.executable, "-m", "daemon.cli", "--root", str(self.root), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def prepare(self) -> None:
        if self.root.exists():
            if not (self.root / MARKER).exists() and any(self.root.iterdir()):
                raise RuntimeError(f"{self.root} exists and is not a demo root; not touching it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        (self.root / MARKER).write_text("made by continuon-trainer demo\n")
        start = time.monotonic()
        self.say("writing 24 synthetic factory episodes and pretraining the base policy ...")
        factory = self.root / "factory-episodes"
        self.cli("synth", "--out", str(factory), "--episodes", "24", "--seed", "1")
        self.cli("base", "pretrain", "--episodes", str(factory), "--steps", "1500")
        self.timings["pretrain_s"] = time.monotonic() - start
        self.cfg.paths.manifest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.cfg.paths.manifest, manifest_template(self.root, self.cfg.policy.model_name)
        )
        write_mode(self.root, "idle")

    def start_daemon(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon owns it from here
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--root", str(self.root), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.say(f"daemon started (pid {self.daemon.pid}); log: {self.log_path}")

    def status(self) -> dict[str, Any]:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited ({self.daemon.returncode}); see {self.log_path}")
        return read_status(self.cfg.status_path) or {}

    def wait_for(self, what: str, predicate: Any, show_job: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        last = ""
        # On a terminal one line redraws in place; in a log, a line per change of what shows
        # (the progress bar's 30 ticks at most).
        live = sys.stdout.isatty()
        while time.monotonic() < deadline:
            snap = self.status()
            if predicate(snap):
                if last and live:
                    print(flush=True)
                return snap
            line = shown = snap.get("status_line", "")
            if show_job and snap.get("job"):
                job = snap["job"]
                bar = "#" * int(30 * job["step"] / max(1, job["max_steps"]))
                shown = f"{job['phase']:9} [{bar:<30}]"
                line = f"{shown} {job['step']}/{job['max_steps']}"
                if isinstance(job.get("loss"), int | float):
                    line += f" loss {job['loss']:.4f}"
            if live and line != last:
                print(f"\r  {line[:100]:<100}", end="", flush=True)
                last = line
            elif not live and shown != last:
                print(f"  {line}", flush=True)
                last = shown
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}; see {self.log_path}")

    def run(self) -> dict[str, Any]:
        self.prepare()
        self.start_daemon()
        episodes = self.cfg.paths.episodes
        self.say(f"robot records 32 episodes with a steering bias into {episodes} ...")
        self.cli(
            "synth",
            "--out",
            str(episodes),
            "--episodes",
            "32",
            "--seed",
            "2",
            "--steering-bias",
            str(DEMO_SHIFT["steering_bias"]),
        )
        start = time.monotonic()
        self.wait_for(
            "the first job", lambda s: bool(s.get("job")) and s["job"]["step"] > 0, show_job=True
        )
        self.timings["detect_to_first_step_s"] = time.monotonic() - start
        self.say("the operator takes the wheel: mode manual_control (teleop)")
        write_mode(self.root, "manual_control")
        flip = time.monotonic()
        self.wait_for("preemption", lambda s: not s.get("job"))
        self.timings["preemption_s"] = time.monotonic() - flip
        self.say(
            f"job preempted in {self.timings['preemption_s']:.2f} s; robot idle again in 2 s ..."
        )
        time.sleep(2)
        write_mode(self.root, "idle")
        self.wait_for("the resumed job", lambda s: bool(s.get("job")), show_job=True)
        self.say("job resumed from its checkpoint")
        snap = self.wait_for(
            "a decision",
            lambda s: any(
                d["verdict"] in ("promoted", "rejected", "failed")
                for d in s.get("last_decisions", [])
            ),
            show_job=True,
        )
        self.timings["total_s"] = time.monotonic() - self.t0
        return snap

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()


def summary(cfg: TrainerConfig, snap: dict[str, Any], timings: dict[str, float]) -> str:
    """The final table: baseline vs candidate, safety, decision, release, paths, timings."""
    decision = next(
        d for d in snap["last_decisions"] if d["verdict"] in ("promoted", "rejected", "failed")
    )
    rows: list[tuple[str, str]] = []
    result_path = cfg.runs_dir / decision["job_id"] / RESULT_FILE
    result = (
        JobResult.model_validate_json(result_path.read_bytes()) if result_path.exists() else None
    )
    m = result.metrics if result else None
    if m is not None:
        rows += [
            ("eval steps / episodes", f"{m.eval_steps} / {m.eval_episodes}"),
            (f"action error, baseline ({m.baseline_kind})", f"{m.baseline.mse:.4f}"),
            ("action error, candidate", f"{m.candidate.mse:.4f}"),
            (
                "clamp rate, baseline / candidate",
                f"{m.baseline.clamp_rate:.3f} / {m.candidate.clamp_rate:.3f}",
            ),
            (
                "block rate, baseline / candidate",
                f"{m.baseline.block_rate:.3f} / {m.candidate.block_rate:.3f}",
            ),
            (
                "warn rate, baseline / candidate",
                f"{m.baseline.warn_rate:.3f} / {m.candidate.warn_rate:.3f}",
            ),
            ("shift from baseline (mean / max)", f"{m.shift_mean:.3f} / {m.shift_max:.3f}"),
        ]
    if result is not None:
        rows.append(
            ("training steps (resumed from)", f"{result.steps} ({result.resumed_from_step})")
        )
    rows.append(("decision", decision["verdict"]))
    # One row per check of the rule, with its point estimate and confidence bound.
    rows += [(f"  {_check_name(r)}", _check_text(r)) for r in decision["reasons"]]
    rows.append(("release", decision.get("release") or "-"))
    rows.append(("manifest", str(cfg.paths.manifest)))
    rows += [
        (f"time: {k.removesuffix('_s').replace('_', ' ')}", f"{v:.1f} s")
        for k, v in timings.items()
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _check_name(reason: str) -> str:
    """``"FAIL name:steering: ..."`` -> ``"name:steering"``."""
    return reason.split(" ", 1)[-1].split(": ", 1)[0]


def _check_text(reason: str) -> str:
    verdict, _, rest = reason.partition(" ")
    return f"{verdict:<4}  {rest.split(': ', 1)[-1]}"


def demo_command(args: Any, cfg: TrainerConfig) -> int:
    """Run the demo in ``--demo-root`` (the embedded default config, rooted there)."""
    root = Path(args.demo_root).resolve()
    if cfg.root != root:
        from daemon.config import load_config

        cfg, _ = load_config(args.config, str(root))
    demo = Demo(cfg, root)
    try:
        snap = demo.run()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop_daemon()
    print("\nOutcome")
    print(summary(cfg, snap, demo.timings))
    print(f"\ndemo root: {root}\nmanifest:  {cfg.paths.manifest}\nlogs:      {demo.log_path}")
    print(f"try:       continuon-trainer --root {root} status")
    decision = snap["last_decisions"][0]["verdict"]
    return 0 if decision == "promoted" else 1
