"""A synthetic camera car (``synth --camera``): a road seen from the car, rendered with numpy.

The car drives a lane of constant curvature; its state is the lateral offset ``e`` from the
lane centre and the heading error ``psi``. Each step renders what a forward camera sees (sky,
grass, grey road, white edge lines, a dashed centre line) in perspective from that pose, and a
teacher steers from the geometry (offset, heading, curvature feed-forward). Frames are JPEGs in
the episode's ``blobs/``, referenced by ``observation.media.rgb`` with width and height; there
is no numeric observation at all, as on a stock Donkeycar.

Shift options change the world (``lighting``, ``lane_width``, ``curvature``) or the teacher
(``steering_bias``); ``unsafe`` drives with out-of-bounds throttle and jerky steering, which the
safety head must refuse to promote. Deterministic per seed.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer_core.fsio import fsync_dir, fsync_tree
from trainer_core.rlds.hashing import COMPLETE_MARKER

DT_S = 0.1
SPEED_MPS = 1.5
HEIGHT, WIDTH = 120, 160
HORIZON = 40  # image row of the horizon
CAMERA_HEIGHT_M = 0.2
FOCAL_PX = 120.0
START_TIME_UNIX_MS = 1_767_225_600_000


@dataclass(frozen=True)
class CameraOptions:
    """World and teacher options; all part of the episode id."""

    steering_bias: float = 0.0
    lighting: float = 1.0
    lane_width: float = 0.8
    curvature: float = 0.3
    unsafe: bool = False

    def tag(self, seed: int) -> str:
        """A filesystem-safe id fragment unique per (seed, options)."""
        parts = [
            f"s{seed}",
            f"b{round(self.steering_bias * 1000)}",
            f"l{round(self.lighting * 100)}",
            f"w{round(self.lane_width * 100)}",
            f"k{round(self.curvature * 100)}",
        ]
        return "-".join(parts) + ("-unsafe" if self.unsafe else "")


_ROWS = np.arange(HORIZON + 1, HEIGHT, dtype=np.float64)
_DIST = CAMERA_HEIGHT_M * FOCAL_PX / (_ROWS - HORIZON)  # metres ahead seen on each row
_COLS = np.arange(WIDTH, dtype=np.float64)


def render(e: float, psi: float, kappa: float, opts: CameraOptions) -> np.ndarray:
    """The (H, W, 3) uint8 camera frame of a car at offset ``e``, heading error ``psi``."""
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.float64)
    img[:HORIZON] = (150, 190, 235)  # sky
    d = _DIST[:, None]
    centre = -e - psi * d + 0.5 * kappa * d**2  # lane centre, metres left(-)/right(+) of car
    x = (_COLS[None, :] - WIDTH / 2) / FOCAL_PX * d  # lateral metres of each pixel on the ground
    rel = x - centre
    half = opts.lane_width / 2
    line = 0.04 + 0.004 * d
    ground = np.empty((len(_ROWS), WIDTH, 3))
    ground[:] = (60, 130, 50)  # grass
    road = np.abs(rel) < half
    ground[road] = (95, 95, 100)
    edge = np.abs(np.abs(rel) - half) < line
    ground[edge] = (240, 240, 240)
    dash = (np.abs(rel) < line * 0.6) & ((d * 2.0) % 1.0 < 0.5)
    ground[dash] = (230, 200, 40)
    img[HORIZON + 1 :] = ground
    img[HORIZON] = (120, 150, 120)
    return np.clip(img * opts.lighting, 0, 255).astype(np.uint8)


def teacher(e: float, psi: float, kappa: float, opts: CameraOptions) -> tuple[float, float]:
    """The demonstrator's (steering, throttle) from the geometry."""
    steer = math.tanh(-1.6 * e - 1.2 * psi + 0.35 * kappa / 0.3) + opts.steering_bias
    if opts.unsafe:
        return 2.0 * steer, 1.7
    return float(np.clip(steer, -1, 1)), 0.5


def simulate(n_steps: int, rng: np.random.Generator, opts: CameraOptions) -> list[dict]:
    """Roll the car along the lane; one dict per step (pose, kappa, command)."""
    e, psi = rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    rows = []
    for i in range(n_steps):
        kappa = sign * opts.curvature * math.sin(2 * math.pi * i / max(n_steps, 1) + rng.random())
        steer, throttle = teacher(e, psi, kappa, opts)
        steer += rng.normal(0, 0.02)
        if opts.unsafe and rng.random() < 0.3:
            steer += rng.choice([-1.0, 1.0]) * 0.9
        rows.append({"e": e, "psi": psi, "kappa": kappa, "steering": steer, "throttle": throttle})
        applied = float(np.clip(steer, -1, 1))
        # Exploration noise in the car's response keeps poses varied (the teacher corrects).
        psi += (applied * 1.0 - kappa) * SPEED_MPS * DT_S + rng.normal(0, 0.03)
        e += SPEED_MPS * math.sin(psi) * DT_S
        e = float(np.clip(e, -0.6, 0.6))
        psi = float(np.clip(psi, -0.7, 0.7))
    return rows


def _jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _step(i: int, n: int, row: dict, t0_ms: int) -> dict:
    t_ms = t0_ms + round(i * DT_S * 1000)
    name = f"frame_{i:06d}.jpg"
    return {
        "observation": {
            "video_frame_id": name,
            "media": {
                "rgb": {
                    "uri": f"blobs/{name}",
                    "frame_id": name,
                    "timestamp_ns": t_ms * 1_000_000,
                    "width": WIDTH,
                    "height": HEIGHT,
                    "format": "jpeg",
                }
            },
            "robot_state": {"timestamp_nanos": t_ms * 1_000_000, "wall_time_millis": t_ms},
        },
        "action": {
            "command": [round(row["steering"], 6), round(row["throttle"], 6)],
            "source": "human_teleop_xr",
        },
        "is_terminal": i == n - 1,
        "step_metadata": {"lane_offset_m": f"{row['e']:.4f}", "curvature": f"{row['kappa']:.4f}"},
    }


def write_camera_episodes(
    out: Path,
    n_episodes: int,
    n_steps: int,
    seed: int,
    opts: CameraOptions | None = None,
    first_index: int = 0,
) -> list[Path]:
    """Write layout-A camera episodes (frames in ``blobs/``) into ``out``; return their dirs.

    Staged in a dot-directory and renamed in; an existing episode is left alone.
    """
    if n_episodes < 0 or n_steps <= 0:
        raise ValueError(f"need n_episodes >= 0 and n_steps > 0 (got {n_episodes}, {n_steps})")
    opts = opts or CameraOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first_index, first_index + n_episodes):
        episode_id = f"synthcam-{opts.tag(seed)}-{i:04d}"
        final = out / episode_id
        paths.append(final)
        if final.exists():
            continue
        rng = np.random.default_rng([seed, i, zlib.crc32(opts.tag(0).encode())])
        rows = simulate(n_steps, rng, opts)
        t0_ms = START_TIME_UNIX_MS + i * 600_000
        staging = out / f".{episode_id}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "steps").mkdir(parents=True)
        (staging / "blobs").mkdir()
        for k, row in enumerate(rows):
            frame = render(row["e"], row["psi"], row["kappa"], opts)
            (staging / "blobs" / f"frame_{k:06d}.jpg").write_bytes(_jpeg(frame))
        meta = {
            "schema_version": "1.1",
            "episode_id": episode_id,
            "xr_mode": "trainer",
            "control_role": "human_teleop",
            "environment_id": "synthetic_lane",
            "robot_model": "donkeycar",
            "start_time_unix_ms": t0_ms,
            "tags": ["synthetic", "camera", "donkeycar", f"synth.camera:{opts.tag(seed)}"],
            "software": {
                "xr_app": "continuon-trainer-synth",
                "continuonbrain_os": "synthetic_gen",
                "glove_firmware": "absent",
            },
        }
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        lines = [json.dumps(_step(k, n_steps, row, t0_ms)) for k, row in enumerate(rows)]
        (staging / "steps" / "000000.jsonl").write_text("\n".join(lines) + "\n")
        (staging / COMPLETE_MARKER).touch()
        fsync_tree(staging)
        staging.rename(final)
        fsync_dir(out)
    return paths


def camera_command(args: object) -> int:
    """``continuon-trainer synth --camera``: write camera episodes and say where."""
    opts = CameraOptions(
        steering_bias=args.steering_bias,
        lighting=args.lighting,
        lane_width=args.lane_width,
        curvature=args.curvature,
        unsafe=args.unsafe,
    )
    paths = write_camera_episodes(args.out, args.episodes, args.steps, args.seed, opts)
    print(f"wrote {len(paths)} camera episodes of {args.steps} steps to {args.out}")
    return 0
