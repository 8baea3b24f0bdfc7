"""``continuon-trainer demo``: the real daemon, end to end, on a synthetic camera car.

The demo plays the robot. By default it is a camera Donkeycar: a first drive on the synthetic
lane (``synth --camera``) pretrains a ``cnn`` base pilot, then the car drives again after its
world and driver changed (darker light, a steering bias, a tighter road) and those episodes land
in the watched folder. The real service (``continuon-trainer run``, a subprocess) trains a LoRA
adapter; the demo switches the robot to teleop during the job (preempted), back to idle
(resumed from its checkpoint), and prints the outcome: the promotion rule's checks with their
confidence bounds, and the held-out steering error of base and adapter on episodes the job
never saw. ``--numeric`` runs the older numeric demo (an MLP over a few named numbers).

Everything lives in the demo root, which a second run starts afresh; its config is the embedded
default with ``trainer.yaml.d/demo.yaml`` laid over it (what the demo changes, in one file).
Heavy work happens in child processes, as in production: this process never imports torch.
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

import yaml

from daemon.config import TrainerConfig, _merge, default_config_text, load_config
from daemon.status import read_status
from safety.config import PromotionConfig
from trainer_core.config import PolicyConfig
from trainer_core.fsio import atomic_write_json, atomic_write_text
from trainer_core.spec import RESULT_FILE, JobResult

MARKER = ".continuon-demo"
TIMEOUT_S = 600.0  # per step; a loaded host is slow, a hung one still ends
DEMO_SHIFT = {"steering_bias": 0.3}  # numeric demo: what changed on the robot since the base
# camera demo: the shifted drive (trainer_core/synth_camera.py CameraOptions / synth flags)
CAMERA_SHIFT = {"steering-bias": 0.3, "lighting": 0.7, "curvature": 0.45}
CAMERA_STEPS = 60  # steps per camera episode (6 s at 10 Hz)
# What the demo changes on the embedded default, both demos: the mode file is the demo's gate
# (the host running the demo is not a robot: its other processes' CPU load says nothing about
# whether the robot is busy), and short waits so the preemption shows within seconds.
DEMO_GATE = {
    "gate": {"open_after_s": 2.0, "min_closed_s": 2.0, "load": {"need": "off"}},
    "service": {"cooldown_s": 0},
}


def camera_overlay(size: tuple[int, int]) -> dict[str, Any]:
    """The camera pilot's settings (configs/pi5-donkey.yaml's, smaller so the demo is quick)."""
    return {
        "features": {
            "observation": [],
            "images": [{"path": "observation.media.rgb", "size": list(size), "channels": "rgb"}],
            "action": [{"path": "action.command", "names": ["steering", "throttle"]}],
        },
        "policy": {"family": "cnn", "conv": [16, 32, 32], "hidden": [64, 32]},
        # Above the frozen trunk: the job computes trunk features once per frame.
        "lora": {"target_modules": ["dense.0", "dense.1", "head"]},
        # One thread: on a busy host, threads that wait on each other stall (measured: 2 threads
        # ran several times slower than 1 on the loaded 2-core build machine).
        "job": {"threads": 1, "max_steps": 1500, "max_wall_time_s": 600, "eval_fraction": 0.3},
        "service": {"min_new_episodes": 8, "min_total_episodes": 8},
    }


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
    """One demo run in ``root``; ``say`` prints progress. Subclasses make the base and drive."""

    def __init__(self, root: Path, overlay: dict[str, Any]) -> None:
        self.root = root
        self.overlay = overlay
        self.config_path = root / "trainer.yaml"
        self.log_path = root / "daemon.log"
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.cfg: TrainerConfig | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def base_cmd(self) -> list[str]:
        """``continuon-trainer --root ROOT --config ROOT/trainer.yaml`` in this interpreter."""
        root, config = str(self.root), str(self.config_path)
        return [sys.executable, "-m", "daemon.cli", "--root", root, "--config", config]

    def cli(self, *args: str) -> str:
        """Run a continuon-trainer verb in a child process (torch stays out of this one)."""
        done = subprocess.run(
            [*self.base_cmd(), *args], capture_output=True, text=True, timeout=TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def write_config(self) -> TrainerConfig:
        """The embedded default, and the demo's changes as a drop-in beside it."""
        atomic_write_text(self.config_path, default_config_text())
        dropins = self.root / "trainer.yaml.d"
        dropins.mkdir()
        text = "# What `continuon-trainer demo` changes on the embedded default.\n"
        atomic_write_text(dropins / "demo.yaml", text + yaml.safe_dump(self.overlay))
        cfg, _ = load_config(self.config_path, str(self.root))
        return cfg

    def prepare(self) -> TrainerConfig:
        if self.root.exists():
            if not (self.root / MARKER).exists() and any(self.root.iterdir()):
                raise RuntimeError(f"{self.root} exists and is not a demo root; not touching it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        (self.root / MARKER).write_text("made by continuon-trainer demo\n")
        self.cfg = cfg = self.write_config()
        start = time.monotonic()
        self.make_base()
        self.timings["pretrain_s"] = time.monotonic() - start
        cfg.paths.manifest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg.paths.manifest, manifest_template(self.root, cfg.policy.model_name))
        write_mode(self.root, "idle")
        return cfg

    def make_base(self) -> None:
        raise NotImplementedError

    def record_shift(self, episodes: Path) -> int:
        """Write the drive after the change into ``episodes``; return how many episodes."""
        raise NotImplementedError

    def start_daemon(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon owns it from here
        self.daemon = subprocess.Popen(
            [*self.base_cmd(), "run"],
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
        assert self.cfg is not None
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
        cfg = self.prepare()
        self.start_daemon()
        # The car records while it drives (gate closed), and parks once every episode is in:
        # a job that started on half the drive would not resume on the whole of it.
        write_mode(self.root, "manual_control")
        count = self.record_shift(cfg.paths.episodes)
        self.wait_for(
            "the drive in the ledger", lambda s: (s.get("ledger") or {}).get("valid", 0) >= count
        )
        self.say(f"{count} episodes in the ledger; the car parks: mode idle")
        write_mode(self.root, "idle")
        start = time.monotonic()
        self.wait_for(
            "the first job", lambda s: bool(s.get("job")) and s["job"]["step"] > 0, show_job=True
        )
        self.timings["detect_to_first_step_s"] = time.monotonic() - start
        self.say("the operator takes the wheel: mode manual_control (teleop)")
        write_mode(self.root, "manual_control")
        flip = time.monotonic()
        snap = self.wait_for("preemption", lambda s: not s.get("job"))
        self.timings["preemption_s"] = time.monotonic() - flip
        if not any(d["verdict"] == "preempted" for d in snap.get("last_decisions", [])):
            raise RuntimeError("the job ended before the gate closed: no preemption to show")
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


class NumericDemo(Demo):
    """The numeric robot: an MLP over speed, bearing and a person's distance."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, DEMO_GATE)

    def make_base(self) -> None:
        self.say("writing 24 synthetic factory episodes and pretraining the base policy ...")
        factory = self.root / "factory-episodes"
        self.cli("synth", "--out", str(factory), "--episodes", "24", "--seed", "1")
        self.cli("base", "pretrain", "--episodes", str(factory), "--steps", "1500")

    def record_shift(self, episodes: Path) -> int:
        self.say(f"robot records 32 episodes with a steering bias into {episodes} ...")
        bias = str(DEMO_SHIFT["steering_bias"])
        self.cli(
            "synth", "--out", str(episodes), "--episodes", "32", "--seed", "2",
            "--steering-bias", bias,
        )  # fmt: skip
        return 32


class CameraDemo(Demo):
    """The camera Donkeycar: a cnn pilot from frames only, as a stock tub has."""

    def __init__(
        self, root: Path, size: tuple[int, int], first: int, shifted: int, pretrain_steps: int
    ) -> None:
        super().__init__(root, _merge(camera_overlay(size), DEMO_GATE))
        self.size, self.first, self.shifted = size, first, shifted
        self.pretrain_steps = pretrain_steps

    def make_base(self) -> None:
        h, w = self.size
        self.say(
            f"first drive: {self.first} camera episodes on the lane; pretraining a cnn pilot "
            f"on {h}x{w} frames ({self.pretrain_steps} steps) ..."
        )
        first = self.root / "first-drive"
        self.cli(
            "synth", "--camera", "--out", str(first), "--episodes", str(self.first),
            "--steps", str(CAMERA_STEPS), "--seed", "1",
        )  # fmt: skip
        self.cli("base", "pretrain", "--episodes", str(first), "--steps", str(self.pretrain_steps))

    def record_shift(self, episodes: Path) -> int:
        shift = ", ".join(f"{k} {v}" for k, v in CAMERA_SHIFT.items())
        self.say(f"the car drives {self.shifted} episodes after a change ({shift}) ...")
        flags = [x for k, v in CAMERA_SHIFT.items() for x in (f"--{k}", str(v))]
        self.cli(
            "synth",
            "--camera",
            "--out",
            str(episodes),
            "--episodes",
            str(self.shifted),
            "--steps",
            str(CAMERA_STEPS),
            "--seed",
            "7",
            *flags,
        )
        return self.shifted


def summary(cfg: TrainerConfig, snap: dict[str, Any], timings: dict[str, float]) -> str:
    """The final table: held-out errors, the rule's checks with their bounds, decision, paths."""
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
            ("held-out (never trained on)", f"{m.eval_episodes} episodes, {m.eval_steps} steps"),
            (f"action error, baseline ({m.baseline_kind})", f"{m.baseline.mse:.4f}"),
            ("action error, candidate", f"{m.candidate.mse:.4f}"),
        ]
        cut = steering_cut(m)
        if cut is not None:
            base, cand, drop = cut
            rows.append(
                ("steering error, base -> adapter", f"{base:.4f} -> {cand:.4f} ({drop:.0%} cut)")
            )
        rows += [
            (
                "clamp / warn / block rate, baseline",
                f"{m.baseline.clamp_rate:.3f} / {m.baseline.warn_rate:.3f} / "
                f"{m.baseline.block_rate:.3f}",
            ),
            (
                "clamp / warn / block rate, candidate",
                f"{m.candidate.clamp_rate:.3f} / {m.candidate.warn_rate:.3f} / "
                f"{m.candidate.block_rate:.3f}",
            ),
        ]
    if result is not None:
        rows.append(
            ("training steps (resumed from)", f"{result.steps} ({result.resumed_from_step})")
        )
    rows.append(("decision", decision["verdict"]))
    rows.append(("release", decision.get("release") or "-"))
    rows.append(("manifest", str(cfg.paths.manifest)))
    rows += [
        (f"time: {k.removesuffix('_s').replace('_', ' ')}", f"{v:.1f} s")
        for k, v in timings.items()
    ]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    if m is not None:
        text += "\n\n" + check_table(m, cfg.promotion)
    return text


def steering_cut(m: Any) -> tuple[float, float, float] | None:
    """(baseline, candidate, relative cut) of the held-out steering error, if there is one."""
    base = m.baseline.mse_per_name.get("steering")
    cand = m.candidate.mse_per_name.get("steering")
    if base is None or cand is None or not base > 0:
        return None
    return base, cand, 1.0 - cand / base


# check name (or prefix) -> (the PromotionConfig field it is held to, how the bound must relate)
LIMITS: dict[str, tuple[str, str]] = {
    "improvement": ("min_improvement", ">="),
    "name:": ("max_name_regression", "<="),
    "slice:": ("max_slice_regression", "<="),
    "mean_risk": ("mean_risk_margin", "<="),
    "shift_mean": ("max_shift_mean", "<="),
    "shift_max": ("max_shift_max", "<="),
    **{f"{r}_rate": (f"{r}_rate_margin", "<=") for r in ("clamp", "warn", "block")},
    **{f"{r}_cap": (f"max_{r}_rate", "<=") for r in ("clamp", "warn", "block")},
}
RELATIVE = ("improvement", "name:", "slice:")  # shown as percentages of the baseline's error


def _limit(name: str) -> tuple[str, str] | None:
    return LIMITS.get(name) or next(
        (v for k, v in LIMITS.items() if k.endswith(":") and name.startswith(k)), None
    )


def _fmt(name: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if name.startswith(RELATIVE) or name.endswith(("_rate", "_cap")):
        return f"{value:+.1%}"
    return f"{value:+.4f}"


def check_table(m: Any, promotion: PromotionConfig) -> str:
    """The promotion rule's checks as the daemon made them (same pure function, same config):
    estimate, one-sided confidence bound, the limit it is held to, and the verdict."""
    from safety.rule import decide

    decision = decide(m, promotion)
    head = (
        f"  promotion rule: paired bootstrap over {len(m.episodes)} held-out episodes, "
        f"{promotion.confidence:.0%} one-sided bounds"
    )
    rows = [("check", "estimate", "bound", "limit", "verdict")]
    for name, ok in decision.checks.items():
        limit = _limit(name)
        shown = "-"
        if limit is not None:
            shown = f"{limit[1]} {_fmt(name, getattr(promotion, limit[0]))}"
        value = decision.numbers.get(f"{name}.value")
        bound = decision.numbers.get(f"{name}.bound")
        if name == "evidence":
            value = f"{decision.numbers.get('evidence.episodes')} ep"
            shown = f">= {promotion.min_eval_episodes} ep"
        rows.append(
            (
                name,
                value if isinstance(value, str) else _fmt(name, value),
                _fmt(name, bound),
                shown,
                "ok" if ok else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return head + "\n" + "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    """``"60x80"`` -> (60, 80): frame height and width."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"frame size must be HEIGHTxWIDTH, e.g. 60x80 (got {text!r})") from None
    return h, w


def demo_command(args: Any, cfg: TrainerConfig) -> int:
    """Run the demo in ``--demo-root`` (its own config: the embedded default plus the demo's)."""
    root = Path(args.demo_root).resolve()
    if args.numeric:
        demo: Demo = NumericDemo(root)
    else:
        demo = CameraDemo(
            root,
            parse_size(args.frame_size),
            first=args.first_episodes,
            shifted=args.shifted_episodes,
            pretrain_steps=args.pretrain_steps,
        )
    try:
        snap = demo.run()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop_daemon()
    assert demo.cfg is not None
    cfg = demo.cfg
    print("\nOutcome")
    print(summary(cfg, snap, demo.timings))
    where = f"--root {root} --config {demo.config_path}"
    print(f"\ndemo root: {root}\nmanifest:  {cfg.paths.manifest}\nlogs:      {demo.log_path}")
    print(f"try:       continuon-trainer {where} status")
    if not args.numeric:
        print(f"           continuon-trainer {where} export --format onnx --out {root}/export")
    decision = snap["last_decisions"][0]["verdict"]
    return 0 if decision == "promoted" else 1
