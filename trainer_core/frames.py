"""Camera frames: find a step's frame wherever a producer put it, decode it, preprocess it.

Sources, tried in this order for each step (FORMATS.md §1):

- the configured ``path`` (``observation.media.rgb``): a ``{uri | frame_id | path | bytes}``
  object, a URI/file-name string, encoded image bytes (TFRecord/RLDS features) or a nested
  array; ``uri`` is ``file://`` or relative to the episode (then to its ``blobs/``);
- ``observation.video_frame_id`` / ``observation.egocentric_video.{uri, frame_id}``, looked up
  in the episode's ``blobs/``;
- layout B's ``step_NNNN_rgb.npy`` beside the episode (numpy, ``allow_pickle=False``);
- a video: ``{uri: <file.mp4>, timestamp_ns}`` (LeRobot's camera streams, as the importer
  writes them), decoded with PyAV (the optional ``video`` extra) at that timestamp: the nearest
  decoded frame within half a frame interval, one sequential pass per file and episode.

JPEG/PNG go through Pillow (JPEG in draft mode: the DCT scales down while decoding when the
frame is at least twice the target size). Numpy and Pillow only: the daemon's ``validate`` may
call this. Every failure is a :class:`~trainer_core.features.FeatureError` naming the episode,
step and file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from trainer_core.episode import Episode
from trainer_core.image_config import ImageFeature

IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".npy")
FALLBACK_PATHS = (
    "observation.video_frame_id",
    "observation.egocentric_video",
)
MAX_FRAME_BYTES = 32 * 1024 * 1024
VIDEO_FORMATS = ("mp4", "mkv", "webm", "mov", "avi")
VIDEO_EXTRA_HINT = "pip install 'continuon-trainer[video]' (PyAV)"


class FrameError(ValueError):
    """One frame cannot be read; the message names the file and what is wrong with it."""


def episode_dir(episode: Episode) -> Path:
    """The folder relative URIs, ``blobs/`` and ``step_NNNN_rgb.npy`` are resolved in."""
    source = Path(episode.source)
    return source if source.is_dir() else source.parent


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing names that climb out of ``root``."""
    target = (root / rel).resolve()
    if root.resolve() not in target.parents:
        raise FrameError(f"{rel!r} points outside {root}")
    return target


def _from_blobs(root: Path, frame_id: str) -> Path:
    blobs = root / "blobs"
    for suffix in IMAGE_SUFFIXES:
        candidate = _inside(blobs, frame_id + suffix)
        if candidate.is_file():
            return candidate
    raise FrameError(f"frame {frame_id!r} not found in {blobs}")


def _from_uri(root: Path, uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        raise FrameError(f"URI {uri!r}: only file:// or relative URIs can be read on the robot")
    direct = _inside(root, unquote(uri))
    return direct if direct.is_file() else _from_blobs(root, unquote(uri))


def locate(value: Any, root: Path) -> Path | bytes | np.ndarray:
    """Where one step's frame is: a file, encoded bytes or an array (FrameError if unclear)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, list):
        return np.asarray(value)
    if isinstance(value, str):
        return (
            _from_uri(root, value) if ("/" in value or "." in value) else _from_blobs(root, value)
        )
    if isinstance(value, dict):
        if isinstance(value.get("bytes"), bytes | bytearray) and value["bytes"]:
            return bytes(value["bytes"])
        if isinstance(value.get("uri"), str) and value["uri"]:
            return _from_uri(root, value["uri"])
        if isinstance(value.get("path"), str) and value["path"]:
            return _from_uri(root, value["path"])
        if isinstance(value.get("frame_id"), str) and value["frame_id"]:
            return _from_blobs(root, value["frame_id"])
        raise FrameError("frame object has no uri, path, frame_id or bytes")
    raise FrameError(f"is a {type(value).__name__}, not a frame reference")


@dataclass(frozen=True)
class VideoRef:
    """One step's frame inside a video file: the file and the time of the frame in it."""

    path: Path
    t_s: float
    size: tuple[int, int] | None  # (width, height) the step records, if it does


class VideoFrameError(FrameError):
    """A frame of a video cannot be had; ``pos`` indexes the requested times it concerns."""

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos


def video_ref(value: Any, root: Path) -> VideoRef | None:
    """The video frame ``value`` names (a ``{uri, timestamp_ns}`` object of a video file), or
    None when it is no video reference."""
    if not isinstance(value, dict) or not isinstance(value.get("uri"), str):
        return None
    uri = value["uri"]
    suffix = Path(urlparse(uri).path).suffix.lower().lstrip(".")
    if value.get("format") not in VIDEO_FORMATS and suffix not in VIDEO_FORMATS:
        return None
    ts = value.get("timestamp_ns")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise FrameError(f"video {uri!r}: timestamp_ns must be an integer >= 0 (got {ts!r})")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme:
        raise FrameError(f"URI {uri!r}: only file:// or relative URIs can be read on the robot")
    else:
        path = _inside(root, unquote(uri))
    return VideoRef(path, ts / 1e9, _recorded_size(value))


def decode_video(
    path: Path, times: list[float], spec: ImageFeature, size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """The preprocessed frames of the video at ``path`` at ``times`` (seconds), in their order.

    One sequential decode from the keyframe before the earliest time; each time takes the
    nearest frame, which must lie within half a frame interval of it. ``size`` (width, height)
    is what the steps record; a stream of another size is refused. Raises
    :class:`VideoFrameError` naming the file (and which time) on any failure.
    """
    try:
        import av
    except ImportError as exc:
        raise VideoFrameError(
            0, f"{path}: decoding video needs PyAV: {VIDEO_EXTRA_HINT} ({exc})"
        ) from None
    if not path.is_file():
        raise VideoFrameError(0, f"{path}: does not exist")
    order = sorted(range(len(times)), key=times.__getitem__)
    out: list[np.ndarray | None] = [None] * len(times)
    label = str(path)

    def take(k: int, frame: Any, t: float, tol: float) -> None:
        want = times[order[k]]
        if abs(t - want) > tol:
            raise VideoFrameError(
                order[k], f"{path}: no frame at t={want:.4f} s (nearest at {t:.4f} s)"
            )
        out[order[k]] = decode(frame.to_ndarray(format="rgb24"), spec, f"{label} @ {want:.4f} s")

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFrameError(0, f"{path}: has no video stream")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if size is not None and (w, h) != size:
                raise VideoFrameError(
                    0, f"{path}: video is {w}x{h}, the step records {size[0]}x{size[1]}"
                )
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
            tol = 0.5 / rate + 1e-4
            if times and times[order[0]] > 1.0 and stream.time_base:  # v3: many episodes a file
                container.seek(int(times[order[0]] / stream.time_base), stream=stream)
            k, prev = 0, None
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                t = float(frame.time)
                while k < len(order) and times[order[k]] <= t:
                    want = times[order[k]]
                    if prev is not None and abs(prev[1] - want) < abs(t - want):
                        take(k, prev[0], prev[1], tol)
                    else:
                        take(k, frame, t, tol)
                    k += 1
                if k == len(order):
                    break
                prev = (frame, t)
            while k < len(order):  # times after the last frame: only its own interval counts
                if prev is None:
                    raise VideoFrameError(order[k], f"{path}: no decodable frame")
                take(k, prev[0], prev[1], tol)
                k += 1
    except VideoFrameError:
        raise
    except FrameError as exc:
        raise VideoFrameError(0, str(exc)) from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoFrameError(0, f"{path}: not a decodable video ({exc})") from None
    return out  # type: ignore[return-value]


def _read_file(path: Path) -> bytes | np.ndarray:
    try:
        if path.stat().st_size > MAX_FRAME_BYTES:
            raise FrameError(f"{path}: larger than {MAX_FRAME_BYTES} bytes")
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        return path.read_bytes()
    except FileNotFoundError:
        raise FrameError(f"{path}: does not exist") from None
    except (OSError, ValueError) as exc:
        raise FrameError(f"{path}: unreadable ({exc})") from None


def decode(data: bytes | np.ndarray, spec: ImageFeature, label: str) -> np.ndarray:
    """Encoded bytes or an (H, W[, C]) array -> uint8 (C, H, W) at ``spec.size``, cropped."""
    from PIL import Image, UnidentifiedImageError

    mode = "RGB" if spec.channels == "rgb" else "L"
    height, width = spec.size
    top, bottom, left, right = spec.crop
    try:
        if isinstance(data, bytes):
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                # Scale in the DCT when the crop+resize would throw the resolution away anyway.
                img.draft(mode, (width + left + right, height + top + bottom))
            img = img.convert(mode)
            img.load()
        else:
            img = Image.fromarray(_as_uint8(data, label)).convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise FrameError(f"{label}: not a decodable image ({exc})") from None
    w0, h0 = img.size
    if top + bottom >= h0 or left + right >= w0:
        raise FrameError(f"{label}: {w0}x{h0} frame is smaller than crop {list(spec.crop)}")
    if any(spec.crop):
        img = img.crop((left, top, w0 - right, h0 - bottom))
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _as_uint8(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise FrameError(f"{label}: array of shape {list(arr.shape)} is not an image")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
        return (arr * 255.0 + 0.5).astype(np.uint8)
    raise FrameError(f"{label}: array dtype {arr.dtype} is not uint8 (or float in [0, 1])")


def _recorded_size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, dict):
        w, h = value.get("width"), value.get("height")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            return (w, h)
    return None


def _step_value(
    episode: Episode, index: int, spec: ImageFeature, resolve: Any, missing: Any
) -> Any:
    step_map = episode.steps[index].as_mapping()
    value = resolve(step_map, spec.path)
    for fallback in FALLBACK_PATHS:
        if value is not missing:
            break
        value = resolve(step_map, fallback)
    return value


def step_frame(
    episode: Episode, index: int, spec: ImageFeature, resolve: Any, missing: Any
) -> np.ndarray:
    """The preprocessed frame of step ``index``; FrameError (file, reason) when unusable."""
    root = episode_dir(episode)
    value = _step_value(episode, index, spec, resolve, missing)
    ref = video_ref(value, root) if value is not missing else None
    if ref is not None:
        return decode_video(ref.path, [ref.t_s], spec, ref.size)[0]
    if value is missing:
        names = dict.fromkeys((f"step_{index:04d}_{spec.name}.npy", f"step_{index:04d}_rgb.npy"))
        found = [root / n for n in names if (root / n).is_file()]
        if not found:
            raise FrameError(
                f"{spec.path} is missing (also no video_frame_id, egocentric_video or "
                f"{' / '.join(names)} beside the episode)"
            )
        where: Path | bytes | np.ndarray = found[0]
    else:
        where = locate(value, root)
    label = str(where) if isinstance(where, Path) else f"{spec.path} (inline)"
    data = _read_file(where) if isinstance(where, Path) else where
    frame_raw_size = _raw_size(data)
    recorded = _recorded_size(value)
    if recorded is not None and frame_raw_size is not None and recorded != frame_raw_size:
        raise FrameError(
            f"{label}: frame is {frame_raw_size[0]}x{frame_raw_size[1]}, the step records "
            f"{recorded[0]}x{recorded[1]}"
        )
    return decode(data, spec, label)


def _raw_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) of the undecoded frame, read from its header."""
    if isinstance(data, np.ndarray):
        if data.ndim == 3 and data.shape[0] in (1, 3) and data.shape[2] not in (1, 3):
            return (data.shape[2], data.shape[1])
        return (data.shape[1], data.shape[0]) if data.ndim >= 2 else None
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:
        return None  # decode() reports it properly


def episode_frames(episode: Episode, spec: ImageFeature) -> np.ndarray:
    """Every step's frame, (T, C, H, W) uint8; raises FeatureError naming episode, step, file."""
    from trainer_core.features import _MISSING, FeatureError, resolve

    def fail(i: int, exc: Exception) -> FeatureError:
        return FeatureError(
            f"episode {episode.episode_id} ({episode.source}) step {i}: frame {exc}"
        )

    out = np.empty((len(episode.steps), *spec.shape), dtype=np.uint8)
    root = episode_dir(episode)
    videos: dict[tuple[Path, tuple[int, int] | None], list[tuple[int, float]]] = {}
    for i in range(len(episode.steps)):
        try:
            value = _step_value(episode, i, spec, resolve, _MISSING)
            ref = video_ref(value, root) if value is not _MISSING else None
            if ref is not None:  # decoded below, one pass per file
                videos.setdefault((ref.path, ref.size), []).append((i, ref.t_s))
            else:
                out[i] = step_frame(episode, i, spec, resolve, _MISSING)
        except FrameError as exc:
            raise fail(i, exc) from None
    for (path, size), wanted in videos.items():
        try:
            frames = decode_video(path, [t for _, t in wanted], spec, size)
        except VideoFrameError as exc:
            raise fail(wanted[exc.pos][0], exc) from None
        for (i, _), frame in zip(wanted, frames, strict=True):
            out[i] = frame
    return out


def frames_problem(path: Path, features: Any, limits: Any) -> str | None:
    """Why the frames of the episode at ``path`` cannot be used (None when every frame
    decodes), for ``validate`` when the config has ``features.images``."""
    from trainer_core.features import FeatureError
    from trainer_core.rlds import EpisodeError, read_episode

    if not features.images:
        return None
    try:
        episode_frames(read_episode(Path(path), limits), features.images[0])
    except (FeatureError, EpisodeError, OSError) as exc:
        return str(exc)
    return None
