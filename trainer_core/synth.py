"""Synthetic Donkeycar-like episodes (layout A) for demos, tests and benchmarks.

A small kinematic car follows a walking person. A teacher controller, a smooth but nonlinear
function of what the default features observe (speed, bearing to the person, distance), drives
it; its commands are recorded as ``action.command = [steering, throttle]``. Options change the
teacher, not the world: ``steering_bias`` and ``speed`` are a distribution shift an adapter can
learn; ``unsafe`` makes a reckless teacher (out-of-bound commands, driving into the person,
jerky jumps) whose imitation the safety head must block. Numpy only, deterministic per seed.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer_core.fsio import fsync_dir, fsync_tree
from trainer_core.rlds.hashing import COMPLETE_MARKER

DT_S = 0.1
WHEELBASE_M = 0.25
MAX_STEER_RAD = 0.45
MAX_SPEED_MPS = 2.0
FOLLOW_DISTANCE_M = 2.0
NEAR_M = 1.2  # the safety envelope's default radius
START_TIME_UNIX_MS = 1_767_225_600_000  # 2026-01-01, fixed so files are byte-identical per seed


@dataclass(frozen=True)
class SynthOptions:
    """How the teacher behaves; part of every episode id so option sets never collide."""

    steering_bias: float = 0.0
    speed: float = 1.0
    unsafe: bool = False
    # Adversarial and calibration scenarios (defaults leave the files byte-identical):
    steering_scale: float = 1.0  # recorded steering = teacher's x this (may leave its bound)
    throttle_scale: float = 1.0  # e.g. 1.6: one channel out of bounds on a share of steps
    environment: str = "synthetic_track"  # metadata environment_id (a slice)
    near: str = "far"  # "far"; "brake" / "approach": the person comes close and the
    # teacher brakes for them, or drives at them

    def tag(self, seed: int) -> str:
        """A filesystem-safe, human-readable id fragment, unique per (seed, options)."""
        unsafe = "-unsafe" if self.unsafe else ""
        extra = ""
        if (self.steering_scale, self.throttle_scale) != (1.0, 1.0):
            extra += f"-k{round(self.steering_scale * 1000)}x{round(self.throttle_scale * 1000)}"
        if self.environment != "synthetic_track":
            extra += f"-e{self.environment}"
        if self.near != "far":
            extra += f"-n{self.near}"
        return (
            f"s{seed}-b{round(self.steering_bias * 1000)}-v{round(self.speed * 1000)}"
            f"{unsafe}{extra}"
        )


def teacher(speed: float, bearing: float, distance: float, opts: SynthOptions) -> np.ndarray:
    """The demonstrator's ``[steering, throttle]`` for one observation (before noise)."""
    if opts.unsafe:
        # Aims straight at the person, overdrives both channels and never brakes for them.
        steering = 2.2 * math.tanh(2.5 * bearing)
        throttle = 1.6 * opts.speed * (0.6 + 0.4 * math.tanh(distance))
        return np.array([steering, throttle])
    # Turn harder for larger bearings, less at speed (tanh saturation); slow down when the
    # person is off-axis (cos^2) and stop at the follow distance (tanh of the gap).
    steering = math.tanh(1.8 * bearing) * (0.55 + 0.45 * math.exp(-speed)) + opts.steering_bias
    gap = distance - FOLLOW_DISTANCE_M
    throttle = opts.speed * 0.8 * math.tanh(0.9 * gap) * math.cos(bearing) ** 2
    if opts.near == "approach" and distance < NEAR_M:
        throttle = 0.9  # drives at the person instead of stopping
    elif opts.near == "brake" and distance < NEAR_M:
        throttle = -0.4
    cmd = np.clip(np.array([steering, throttle]), -1.0, 1.0)
    return cmd * np.array([opts.steering_scale, opts.throttle_scale])


def simulate(n_steps: int, rng: np.random.Generator, opts: SynthOptions) -> list[dict[str, float]]:
    """Roll out the teacher; one dict per step with the observation and the command taken."""
    x = y = heading = v = 0.0
    start_bearing = rng.uniform(-1.2, 1.2)
    start_distance = rng.uniform(0.6, 1.6) if opts.near != "far" else rng.uniform(2.5, 6.0)
    px, py = start_distance * math.cos(start_bearing), start_distance * math.sin(start_bearing)
    p_heading = rng.uniform(-math.pi, math.pi)
    p_speed = rng.uniform(0.2, 0.7)
    rows: list[dict[str, float]] = []
    for _ in range(n_steps):
        dx, dy = px - x, py - y
        distance = max(0.05, math.hypot(dx, dy))
        bearing = math.atan2(dy, dx) - heading
        bearing = math.atan2(math.sin(bearing), math.cos(bearing))
        cmd = teacher(v, bearing, distance, opts) + rng.normal(0.0, 0.02, size=2)
        if opts.unsafe:
            if rng.random() < 0.3:  # jerky: large step changes the safety head counts as jumps
                cmd = cmd + rng.choice([-1.0, 1.0], size=2) * 0.9
        else:
            scale = np.array([opts.steering_scale, opts.throttle_scale])
            cmd = np.clip(cmd, -scale, scale)
        rows.append(
            {
                "speed": v,
                "bearing": bearing,
                "distance": distance,
                "steering": float(cmd[0]),
                "throttle": float(cmd[1]),
            }
        )
        # Kinematic bicycle with a first-order speed response to the throttle.
        steer = float(np.clip(cmd[0], -1.0, 1.0)) * MAX_STEER_RAD
        target_v = float(np.clip(cmd[1], -1.0, 1.0)) * MAX_SPEED_MPS
        accel = (target_v - v) * 0.5 / DT_S
        v += accel * DT_S
        yaw_rate = v * math.tan(steer) / WHEELBASE_M
        rows[-1].update(accel=accel, yaw_rate=yaw_rate)
        heading += yaw_rate * DT_S
        x += v * math.cos(heading) * DT_S
        y += v * math.sin(heading) * DT_S
        p_heading += rng.normal(0.0, 0.15)
        px += p_speed * math.cos(p_heading) * DT_S
        py += p_speed * math.sin(p_heading) * DT_S
    return rows


def _pose() -> dict[str, Any]:
    return {"position": [0.0, 0.0, 0.0], "orientation_quat": [0.0, 0.0, 0.0, 1.0], "valid": False}


def _step(i: int, n: int, row: dict[str, float], t0_ms: int) -> dict[str, Any]:
    """One v1.1 XR-contract step; unused blocks are the contract's ``valid: false`` placeholders."""
    t_ms = t0_ms + round(i * DT_S * 1000)
    frame = f"frame_{i:06d}"
    return {
        "observation": {
            "headset_pose": _pose(),
            "right_hand_pose": _pose(),
            "left_hand_pose": _pose(),
            "gaze": {"origin": [0.0, 0.0, 0.0], "direction": [0.0, 0.0, 1.0], "confidence": 0.0},
            "robot_state": {
                "timestamp_nanos": t_ms * 1_000_000,
                "joint_positions": [round(row["speed"], 6), round(row["bearing"], 6)],
                "joint_velocities": [round(row["accel"], 6), round(row["yaw_rate"], 6)],
                "joint_efforts": [],
                "end_effector_pose": _pose(),
                "end_effector_twist": [0.0] * 6,
                "gripper_open": True,
                "frame_id": "base_link",
                "wall_time_millis": t_ms,
            },
            "glove": {
                "timestamp_nanos": 0,
                "flex": [0] * 5,
                "fsr": [0] * 8,
                "orientation_quat": [0, 0, 0, 0],
                "accel": [0, 0, 0],
                "valid": False,
            },
            "video_frame_id": frame,
            "depth_frame_id": frame,
            "diagnostics": {
                "latency_ms": 0,
                "glove_drops": 0,
                "ble_rssi": 0,
                "glove_sample_rate_hz": 0,
            },
        },
        "action": {
            "command": [round(row["steering"], 6), round(row["throttle"], 6)],
            "source": "human_teleop_xr",
        },
        "is_terminal": i == n - 1,
        "step_metadata": {
            "human_visible": "true",
            "human_distance_m": f"{row['distance']:.4f}",
        },
    }


def _metadata(episode_id: str, seed: int, opts: SynthOptions, n_steps: int, t0_ms: int) -> dict:
    return {
        "schema_version": "1.1",
        "episode_id": episode_id,
        "xr_mode": "trainer",
        "control_role": "human_teleop",
        "environment_id": opts.environment,
        "robot_id": "synthetic-donkey",
        "robot_model": "donkeycar",
        "start_time_unix_ms": t0_ms,
        "duration_ms": round(n_steps * DT_S * 1000),
        "tags": [
            "synthetic",
            "pi5",
            "donkeycar",
            "follow_human",
            "continuon.xr_mode:trainer",
            "origin:continuon-trainer-synth",
            f"synth.seed:{seed}",
            f"synth.steering_bias:{opts.steering_bias}",
            f"synth.speed:{opts.speed}",
            f"synth.unsafe:{str(opts.unsafe).lower()}",
        ],
        "software": {
            "xr_app": "continuon-trainer-synth",
            "continuonbrain_os": "synthetic_gen",
            "glove_firmware": "absent",
        },
    }


def write_synthetic_episodes(
    out: Path,
    n_episodes: int,
    n_steps: int,
    seed: int,
    steering_bias: float = 0.0,
    speed: float = 1.0,
    unsafe: bool = False,
    first_index: int = 0,
    **scenario: Any,
) -> list[Path]:
    """Write ``n_episodes`` layout-A episodes into ``out``; return their directories.

    Each episode is built in a dot-prefixed staging directory beside its final place and renamed
    in, so a watcher never sees half an episode. An episode that already exists is left alone
    (its content is a function of its id). ``first_index`` lets callers add more episodes of
    the same seed and options without reusing ids. ``scenario``: further
    :class:`SynthOptions` fields (scales, environment, a person near).
    """
    if n_episodes < 0 or n_steps <= 0:
        raise ValueError(f"need n_episodes >= 0 and n_steps > 0 (got {n_episodes}, {n_steps})")
    opts = SynthOptions(steering_bias=steering_bias, speed=speed, unsafe=unsafe, **scenario)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(first_index, first_index + n_episodes):
        episode_id = f"synth-{opts.tag(seed)}-{i:04d}"
        final = out / episode_id
        paths.append(final)
        if final.exists():
            continue
        # Seeds must be non-negative: a negative bias wraps around instead of crashing.
        rng = np.random.default_rng(
            [seed, i, round(steering_bias * 1000) % 2**32, round(speed * 1000) % 2**32]
            + ([int.from_bytes(opts.tag(seed).encode()[-8:], "big")] if scenario else [])
        )
        t0_ms = START_TIME_UNIX_MS + i * 600_000
        rows = simulate(n_steps, rng, opts)
        staging = out / f".{episode_id}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "steps").mkdir(parents=True)
        meta = _metadata(episode_id, seed, opts, n_steps, t0_ms)
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        lines = [json.dumps(_step(k, n_steps, row, t0_ms)) for k, row in enumerate(rows)]
        (staging / "steps" / "000000.jsonl").write_text("\n".join(lines) + "\n")
        (staging / COMPLETE_MARKER).touch()  # a well-behaved producer: no settle wait needed
        fsync_tree(staging)
        staging.rename(final)
        fsync_dir(out)
    return paths


def synth_command(args: Any, config: Any) -> int:
    """``continuon-trainer synth``: write synthetic episodes and say where."""
    if getattr(args, "camera", False):
        from trainer_core.synth_camera import camera_command

        return camera_command(args)
    paths = write_synthetic_episodes(
        args.out,
        n_episodes=args.episodes,
        n_steps=args.steps,
        seed=args.seed,
        steering_bias=args.steering_bias,
        speed=args.speed,
        unsafe=args.unsafe,
    )
    print(f"wrote {len(paths)} episodes of {args.steps} steps to {args.out}")
    return 0
