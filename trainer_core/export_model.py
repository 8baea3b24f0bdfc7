"""``continuon-trainer export --format merged|onnx``: a release folded into one model for runtimes.

``merged`` writes ``model.safetensors``: the base policy with the release's LoRA update added
into its weights (:func:`trainer_core.lora.merge_lora`, peft's ``merge_and_unload``), so the
state dict has the base's own keys and shapes and any loader of the base loads it, with no
adapter code. ``card.json`` beside it says how a runtime must feed it so it preprocesses as the
trainer did: the image spec (path, size, channels, crop; decoded RGB or L, cropped, resized
bilinearly, uint8 (C, H, W), scaled by 1/255 inside the model), the normaliser (observations
standardised in, actions de-standardised out), the action bounds, the release and base it came
from, sha256 of every file, and the check made: merged vs LoRA outputs on the same inputs.

``onnx`` (optional extra ``onnx``) adds ``model.onnx``: the merged policy with the normaliser
inside the graph (raw observations and uint8 frames in, raw actions out, not clamped), exported
with ``torch.onnx.export`` and run by onnxruntime on the same inputs as torch; the export is
refused when the two differ by more than :data:`ONNX_TOLERANCE`. The output folder is staged
beside ``--out`` and renamed into place, so a folder that exists is whole.
"""

from __future__ import annotations

import copy
import hashlib
import io
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from trainer_core.fsio import atomic_write_json, staged_dir

MERGED_WEIGHTS = "model.safetensors"
ONNX_FILE = "model.onnx"
CARD = "card.json"
CARD_KIND = "continuon-merged-policy"
CHECK_ROWS = 32  # seeded inputs each check runs on
MERGE_TOLERANCE = 1e-4  # merged vs LoRA, normalised action units
ONNX_TOLERANCE = 1e-4  # onnxruntime vs torch, raw action units
ONNX_EXTRA = "onnx"
PREPROCESS = (
    "decode each frame to RGB (channels rgb) or L (gray), cut crop [top, bottom, left, right] "
    "pixels, resize to size [height, width] with bilinear filtering (Pillow), feed uint8 "
    "(N, C, H, W); the model scales by 1/255 itself"
)


class ExportError(RuntimeError):
    """The release cannot be exported; nothing was written."""


@dataclass
class ExportedModel:
    """What an export wrote and what its checks measured."""

    path: Path
    release_id: str
    files: list[str] = field(default_factory=list)
    merge_max_abs_diff: float = 0.0
    onnx_max_abs_diff: float | None = None


class RuntimePolicy(nn.Module):
    """The merged policy as a runtime calls it: raw observations (and uint8 frames) in, raw
    actions out; the normaliser's statistics are buffers, so they travel inside the graph."""

    def __init__(self, model: nn.Module, normalizer: Any, n_obs: int, has_frames: bool) -> None:
        super().__init__()
        self.model = model
        self.n_obs, self.has_frames = n_obs, has_frames
        for name in ("obs_mean", "obs_std", "act_mean", "act_std"):
            self.register_buffer(name, torch.from_numpy(np.asarray(getattr(normalizer, name))))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(observation)``, ``(frames)`` or ``(observation, frames)``, as :func:`input_names`."""
        if self.n_obs:
            obs = (inputs[0] - self.obs_mean) / self.obs_std
        else:
            obs = torch.zeros(inputs[0].shape[0], 0)
        args = (obs, inputs[-1]) if self.has_frames else (obs,)
        return self.model(*args) * self.act_std + self.act_mean


class FixedAdaptivePool(nn.Module):
    """``AdaptiveAvgPool2d`` for one known input size, as two averaging matrices.

    The legacy ONNX exporter refuses adaptive pooling whose output does not divide the input
    (a 120x160 frame's 8x10 map to 3x4); the runtime's frame size is fixed by the card, so the
    pooling is a constant linear map. Cell ``i`` averages rows ``floor(i H / h)`` up to
    ``ceil((i + 1) H / h)``, PyTorch's own definition.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _averaging(in_hw[0], out_hw[0]))
        self.register_buffer("cols", _averaging(in_hw[1], out_hw[1]).T.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, h, w)."""
        return torch.matmul(torch.matmul(self.rows, x), self.cols)


def _averaging(n_in: int, n_out: int) -> torch.Tensor:
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def input_names(n_obs: int, has_frames: bool) -> list[str]:
    """The ONNX graph's inputs, in order (a camera-only pilot has no observation input)."""
    return (["observation"] if n_obs else []) + (["frames"] if has_frames else [])


def sample_inputs(
    features: Any, normalizer: Any, rows: int = CHECK_ROWS, seed: int = 0
) -> list[torch.Tensor]:
    """Seeded raw inputs for the checks: observations around the training split's statistics,
    uniformly random uint8 frames of the card's image size."""
    rng = np.random.default_rng(seed)
    out = []
    n_obs = len(features.observation_names)
    if n_obs:
        obs = normalizer.obs_mean + normalizer.obs_std * rng.standard_normal((rows, n_obs))
        out.append(torch.from_numpy(obs.astype(np.float32)))
    if features.images:
        spec = features.images[0]
        shape = (rows, spec.n_channels, *spec.size)
        out.append(torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8)))
    return out


def _fixed_pools(model: nn.Module, inputs: list[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with every AdaptiveAvgPool2d replaced for the size it sees."""
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        def hook(_m: nn.Module, x: tuple[torch.Tensor, ...], _y: torch.Tensor) -> None:
            seen[name] = (int(x[0].shape[-2]), int(x[0].shape[-1]))  # None: output unchanged

        return hook

    hooks = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, nn.AdaptiveAvgPool2d)
    ]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    fixed = copy.deepcopy(model)
    for name, in_hw in seen.items():
        pool = fixed.get_submodule(name)
        out = pool.output_size
        out_hw = (out, out) if isinstance(out, int) else tuple(out)
        parent_name, _, attr = name.rpartition(".")
        parent = fixed.get_submodule(parent_name) if parent_name else fixed
        setattr(parent, attr, FixedAdaptivePool(in_hw, out_hw))  # type: ignore[arg-type]
    return fixed


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, np.float64))))


def onnx_bytes(runtime: RuntimePolicy, inputs: list[torch.Tensor]) -> bytes:
    """The runtime policy as an ONNX graph (batch dimension dynamic, frame size fixed)."""
    names = input_names(runtime.n_obs, runtime.has_frames)
    exportable = _fixed_pools(runtime, inputs).eval()
    buf = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*names, "action"]}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exportable,
            tuple(inputs),
            buf,
            input_names=names,
            output_names=["action"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def onnx_check(data: bytes, runtime: RuntimePolicy, inputs: list[torch.Tensor]) -> float:
    """Max abs difference between onnxruntime and torch on the same ``inputs``."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load_from_string(data))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = input_names(runtime.n_obs, runtime.has_frames)
    got = session.run(["action"], {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    with torch.no_grad():
        want = runtime(*inputs)
    return _max_diff(got, want)


def onnx_available() -> str | None:
    """None when onnx and onnxruntime import; else what to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return (
            f"--format onnx needs the optional extra {ONNX_EXTRA!r} ({exc.name} is missing): "
            f"pip install 'continuon-trainer[{ONNX_EXTRA}]'"
        )
    return None


def export_model(config: Any, out: Path, fmt: str, release: str | None = None) -> ExportedModel:
    """Write the merged (and, for ``onnx``, the ONNX) model of a release into ``out``."""
    from trainer_core.base import BaseError
    from trainer_core.features import action_bounds
    from trainer_core.lora import LoraError, merge_lora
    from trainer_core.predict_cli import load_release

    out = Path(out).absolute()
    if out.exists():
        raise ExportError(f"{out} exists: choose a new folder")
    if fmt == "onnx" and (missing := onnx_available()):
        raise ExportError(missing)
    try:
        base, model, normalizer, release_dir = load_release(config, release)
    except (BaseError, LoraError) as exc:
        raise ExportError(str(exc)) from None
    features = config.features
    n_obs, has_frames = len(features.observation_names), bool(features.images)
    if len(features.images) > 1:
        raise ExportError("one camera stream per policy is exported (features.images has more)")
    inputs = sample_inputs(features, normalizer)
    norm_inputs = [torch.from_numpy(normalizer.norm_obs(inputs[0].numpy()))] if n_obs else []
    norm_inputs = norm_inputs or [torch.zeros(CHECK_ROWS, 0)]
    norm_inputs += inputs[-1:] if has_frames else []
    with torch.no_grad():
        lora_out = model(*norm_inputs)
        merged = merge_lora(model).eval()
        merged_out = merged(*norm_inputs)
    merge_diff = _max_diff(merged_out, lora_out)
    if not merge_diff <= MERGE_TOLERANCE:
        raise ExportError(f"merged model differs from the LoRA one by {merge_diff:.3g}")
    release_id = release_dir.resolve().name
    result = ExportedModel(out, release_id, merge_max_abs_diff=merge_diff)
    state = {k: v.detach().cpu().contiguous() for k, v in merged.state_dict().items()}
    files = {MERGED_WEIGHTS: save_safetensors_bytes(state, metadata={"release": release_id})}
    if fmt == "onnx":
        runtime = RuntimePolicy(merged, normalizer, n_obs, has_frames).eval()
        files[ONNX_FILE] = onnx_bytes(runtime, inputs)
        result.onnx_max_abs_diff = onnx_check(files[ONNX_FILE], runtime, inputs)
        if not result.onnx_max_abs_diff <= ONNX_TOLERANCE:
            raise ExportError(
                f"onnxruntime differs from torch by {result.onnx_max_abs_diff:.3g} "
                f"(> {ONNX_TOLERANCE:g}) on the same inputs"
            )
    card = {
        "kind": CARD_KIND,
        "format": fmt,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "release": release_id,
        "base_sha256": base.sha256,
        "policy": config.policy.model_dump(mode="json", exclude={"base_path", "model_dir"}),
        "observation_names": features.observation_names,
        "action_names": features.action_names,
        "action_bounds": {
            k: list(v) for k, v in action_bounds(features, config.safety.clamp_bounds).items()
        },
        "images": [i.model_dump(mode="json", exclude={"augment"}) for i in features.images],
        "preprocess": {
            "frames": PREPROCESS,
            "observation": "(x - mean) / std with normalizer.observation (model.safetensors); "
            "inside the graph for model.onnx",
            "action": "y * std + mean with normalizer.action (model.safetensors); inside the "
            "graph for model.onnx; then clamp to action_bounds",
        },
        "normalizer": normalizer.to_json(),
        "onnx": {"inputs": input_names(n_obs, has_frames), "outputs": ["action"]}
        if fmt == "onnx"
        else None,
        "checks": {
            "rows": CHECK_ROWS,
            "merged_vs_lora_max_abs_diff": merge_diff,
            "onnx_vs_torch_max_abs_diff": result.onnx_max_abs_diff,
        },
        "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
    }
    with staged_dir(out) as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        atomic_write_json(staging / CARD, card)
    result.files = sorted([*files, CARD])
    return result


def export_command(args: Any, config: Any) -> int:
    """``continuon-trainer export --format merged|onnx --out DIR [--release ID]``."""
    try:
        done = export_model(config, args.out, args.format, args.release)
    except ExportError as exc:
        print(f"continuon-trainer export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.format} model of release {done.release_id} to {done.path}")
    print(f"  files: {', '.join(done.files)}")
    print(f"  merged vs LoRA, max abs diff: {done.merge_max_abs_diff:.3g}")
    if done.onnx_max_abs_diff is not None:
        print(f"  onnxruntime vs torch, max abs diff: {done.onnx_max_abs_diff:.3g}")
    return 0
