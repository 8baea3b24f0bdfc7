"""Camera frames from every place producers put them, decoded from real files with Pillow.

Each source writes real JPEG/PNG/npy bytes, reads the episode back with the real readers and
checks the decoded pixels; every bad frame must be a reason naming episode, step and file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.rlds_writers import example, frame, step, write_a
from trainer_core.config import FeaturesConfig, IngestConfig
from trainer_core.features import FeatureError, read_split
from trainer_core.frame_cache import FrameStore, cache_path, prune
from trainer_core.frames import episode_frames
from trainer_core.image_config import ImageFeature
from trainer_core.rlds import read_episode

LIMITS = IngestConfig()
SPEC = ImageFeature(size=(12, 16))


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> np.ndarray:
    """An (H, W, 3) frame of one colour (JPEG keeps flat colours within a few levels)."""
    return np.broadcast_to(np.array(rgb, np.uint8), (size[1], size[0], 3)).copy()


def encode(arr: np.ndarray, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def colour_of(frames: np.ndarray, i: int) -> list[int]:
    return [round(float(c)) for c in frames[i].reshape(3, -1).mean(axis=1)]


def close(a: list[int], b: tuple[int, int, int], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def test_uri_relative_and_file_uri_and_blobs_frame_ids(tmp_path: Path) -> None:
    ep = tmp_path / "ep"
    (ep / "blobs").mkdir(parents=True)
    (ep / "cam").mkdir()
    (ep / "cam" / "a.jpg").write_bytes(encode(solid(COLOURS[0])))
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(encode(solid(COLOURS[1]), "PNG"))
    (ep / "blobs" / "f2.jpg").write_bytes(encode(solid(COLOURS[2])))
    (ep / "blobs" / "f3.png").write_bytes(encode(solid(COLOURS[0]), "PNG"))
    (ep / "blobs" / "f4.jpg").write_bytes(encode(solid(COLOURS[1])))
    steps = [
        step(0, observation={"media": {"rgb": {"uri": "cam/a.jpg", "width": 16, "height": 12}}}),
        step(1, observation={"media": {"rgb": {"uri": outside.as_uri()}}}),
        step(2, observation={"video_frame_id": "f2"}),  # looked up in blobs/ (suffix added)
        step(3, observation={"egocentric_video": {"frame_id": "f3.png", "timestamp_ns": 1}}),
        step(4, observation={"media": {"rgb": {"frame_id": "f4.jpg"}}}),
    ]
    write_a(tmp_path, "ep", steps)
    frames = episode_frames(read_episode(ep, LIMITS), SPEC)
    assert frames.shape == (5, 3, 12, 16) and frames.dtype == np.uint8
    for i, want in enumerate([COLOURS[0], COLOURS[1], COLOURS[2], COLOURS[0], COLOURS[1]]):
        assert close(colour_of(frames, i), want), (i, colour_of(frames, i))


def test_layout_b_step_npy_beside_the_episode(tmp_path: Path) -> None:
    ep = tmp_path / "arm_ep"
    ep.mkdir()
    doc = {"metadata": {"episode_id": "arm"}, "steps": [step(0), step(1)]}
    (ep / "episode.json").write_text(json.dumps(doc))
    np.save(ep / "step_0000_rgb.npy", solid(COLOURS[0]), allow_pickle=False)
    np.save(ep / "step_0001_rgb.npy", solid(COLOURS[2]).astype(np.float32) / 255.0)
    frames = episode_frames(read_episode(ep, LIMITS), SPEC)
    assert close(colour_of(frames, 0), COLOURS[0], 1) and close(colour_of(frames, 1), COLOURS[2], 1)
    # An object array would need pickle: refused, by file name.
    np.save(ep / "step_0001_rgb.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureError, match=r"step 1: frame .*step_0001_rgb.npy: unreadable"):
        episode_frames(read_episode(ep, LIMITS), SPEC)


def test_encoded_bytes_in_an_rlds_tfrecord(tmp_path: Path) -> None:
    n = 3
    jpegs = [encode(solid(c)) for c in COLOURS]
    ex = example(
        {
            "steps/observation/image": ("bytes", jpegs),
            "steps/action": ("float", [0.1] * (2 * n)),
            "steps/is_first": ("int64", [1, 0, 0]),
            "steps/is_last": ("int64", [0, 0, 1]),
            "steps/is_terminal": ("int64", [0, 0, 1]),
            "episode_metadata/episode_id": ("bytes", ["cam_rlds"]),
        }
    )
    path = tmp_path / "cam.tfrecord"
    path.write_bytes(frame(ex))
    spec = ImageFeature(path="observation.image", size=(12, 16))
    frames = episode_frames(read_episode(path, LIMITS), spec)
    for i, c in enumerate(COLOURS):
        assert close(colour_of(frames, i), c)


def test_lerobot_image_struct_bytes_and_path(tmp_path: Path) -> None:
    ep = tmp_path / "lr"
    (ep / "images").mkdir(parents=True)
    (ep / "images" / "0.png").write_bytes(encode(solid(COLOURS[1]), "PNG"))
    steps = [step(0, observation={"image": {"bytes": None, "path": "images/0.png"}})]
    write_a(tmp_path, "lr", steps)
    episode = read_episode(ep, LIMITS)
    episode.steps[0].observation["image"] = {"bytes": encode(solid(COLOURS[2])), "path": None}
    frames = episode_frames(episode, ImageFeature(path="observation.image", size=(12, 16)))
    assert close(colour_of(frames, 0), COLOURS[2])  # bytes win over path (as LeRobot writes)
    frames = episode_frames(read_episode(ep, LIMITS), ImageFeature(path="observation.image"))
    assert frames.shape == (1, 3, 120, 160) and close(colour_of(frames, 0), COLOURS[1])


def test_crop_resize_and_gray(tmp_path: Path) -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:10] = 255  # a white "sky" band the crop removes
    (tmp_path / "ep" / "blobs").mkdir(parents=True)
    (tmp_path / "ep" / "blobs" / "x.png").write_bytes(encode(img, "PNG"))
    write_a(tmp_path, "ep", [step(0, observation={"video_frame_id": "x.png"})])
    spec = ImageFeature(size=(15, 40), crop=(10, 0, 0, 0), channels="gray")
    frames = episode_frames(read_episode(tmp_path / "ep", LIMITS), spec)
    assert frames.shape == (1, 1, 15, 40) and frames.max() == 0


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("corrupt", r"step 1: frame .*blobs/f1.jpg: not a decodable image"),
        ("truncated", r"step 1: frame .*blobs/f1.jpg: not a decodable image"),
        ("missing", r"step 1: frame frame 'f1.jpg' not found in .*blobs"),
        ("wrong_size", r"step 1: frame .*f1.jpg: frame is 16x12, the step records 160x120"),
        ("no_reference", r"step 1: frame observation.media.rgb is missing"),
        ("outside", r"step 1: frame '../../etc/passwd' points outside"),
        ("http", r"step 1: frame URI 'http://x/y.jpg': only file:// or relative"),
        ("too_small_for_crop", r"step 0: frame .*16x12 frame is smaller than crop"),
    ],
)
def test_bad_frames_are_reasons_naming_episode_step_file(
    tmp_path: Path, case: str, want: str
) -> None:
    ep = tmp_path / "bad_ep"
    (ep / "blobs").mkdir(parents=True)
    good = encode(solid(COLOURS[0]))
    (ep / "blobs" / "f0.jpg").write_bytes(good)
    rgb: dict = {"frame_id": "f1.jpg"}
    spec = SPEC
    if case == "corrupt":
        (ep / "blobs" / "f1.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    elif case == "truncated":
        (ep / "blobs" / "f1.jpg").write_bytes(good[: len(good) // 2])
    elif case == "wrong_size":
        (ep / "blobs" / "f1.jpg").write_bytes(good)
        rgb.update(width=160, height=120)
    elif case == "outside":
        rgb = {"uri": "../../etc/passwd"}
    elif case == "http":
        rgb = {"uri": "http://x/y.jpg"}
    elif case == "too_small_for_crop":
        (ep / "blobs" / "f1.jpg").write_bytes(good)
        spec = ImageFeature(size=(12, 16), crop=(6, 6, 0, 0))
    second = step(1, observation={"media": {"rgb": rgb}})
    if case == "no_reference":
        second = step(1)
    write_a(tmp_path, "bad_ep", [step(0, observation={"video_frame_id": "f0.jpg"}), second])
    with pytest.raises(FeatureError, match=r"episode bad_ep \(.*\) " + want):
        episode_frames(read_episode(ep, LIMITS), spec)
    if case == "too_small_for_crop":
        return  # every frame is too small: nothing to compare the split with
    # In a split the episode is skipped with that reason; the others are used.
    features = FeaturesConfig(observation=[], images=[spec])
    write_a(tmp_path, "ok_ep", [step(0, observation={"video_frame_id": "f0.jpg"})])
    (tmp_path / "ok_ep" / "blobs").mkdir()
    (tmp_path / "ok_ep" / "blobs" / "f0.jpg").write_bytes(good)
    split = read_split([ep, tmp_path / "ok_ep"], features, LIMITS, frame_cache=tmp_path / "c")
    assert list(split.skipped) == [str(ep)] and len(split.arrays) == 1


def test_cache_is_reused_read_without_mmap_and_pruned(tmp_path: Path) -> None:
    (tmp_path / "ep" / "blobs").mkdir(parents=True)
    for i, c in enumerate(COLOURS):
        (tmp_path / "ep" / "blobs" / f"{i}.jpg").write_bytes(encode(solid(c)))
    write_a(tmp_path, "ep", [step(i, observation={"video_frame_id": f"{i}.jpg"}) for i in range(3)])
    features = FeaturesConfig(observation=[], images=[SPEC])
    cache = tmp_path / "cache"
    first = read_split([tmp_path / "ep"], features, LIMITS, frame_cache=cache)
    files = list(cache.glob("*.u8"))
    assert len(files) == 1 and files[0].stat().st_size == 3 * 3 * 12 * 16
    assert files[0] == cache_path(cache, first.hashes[0], SPEC)
    # A second job decodes nothing: the frames are gone from the episode but still cached.
    for f in (tmp_path / "ep" / "blobs").iterdir():
        f.write_bytes(f.read_bytes())  # same bytes, same hash
    again = read_split([tmp_path / "ep"], features, LIMITS, frame_cache=cache)
    store: FrameStore = again.arrays.frames
    assert isinstance(store.parts[0], Path)
    got = store.gather(np.array([2, 0]))
    assert close(colour_of(got, 0), COLOURS[2]) and close(colour_of(got, 1), COLOURS[0])
    # Another image spec is another cache entry; pruning keeps the newest within the cap.
    other = FeaturesConfig(observation=[], images=[ImageFeature(size=(24, 32))])
    read_split([tmp_path / "ep"], other, LIMITS, frame_cache=cache)
    assert len(list(cache.glob("*.u8"))) == 2
    newest = cache_path(cache, first.hashes[0], other.images[0])
    os.utime(files[0], (1, 1))
    assert prune(cache, max_mb=3 * 3 * 24 * 32 / 2**20) == 1
    assert list(cache.glob("*.u8")) == [newest]


def test_config_refuses_a_policy_with_no_observation() -> None:
    with pytest.raises(ValueError, match="a policy needs an observation"):
        FeaturesConfig(observation=[])
    FeaturesConfig(observation=[], images=[ImageFeature()])  # frames alone are enough


def test_validate_reads_frames_when_the_config_uses_them(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    (tmp_path / "eps" / "good" / "blobs").mkdir(parents=True)
    (tmp_path / "eps" / "bad" / "blobs").mkdir(parents=True)
    jpg = encode(solid(COLOURS[0]))
    (tmp_path / "eps" / "good" / "blobs" / "0.jpg").write_bytes(jpg)
    (tmp_path / "eps" / "bad" / "blobs" / "0.jpg").write_bytes(jpg[:100])
    for name in ("good", "bad"):
        write_a(tmp_path / "eps", name, [step(0, observation={"video_frame_id": "0.jpg"})])
    cfg = tmp_path / "cam.yaml"
    cfg.write_text(
        yaml.safe_dump({"features": {"observation": [], "images": [{"size": [12, 16]}]}})
    )
    cmd = [sys.executable, "-m", "daemon.cli", "--config", str(cfg), "validate"]
    done = subprocess.run([*cmd, str(tmp_path / "eps")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"OK {tmp_path / 'eps' / 'good'}" in done.stdout
    assert "REJECTED" in done.stdout and "bad/blobs/0.jpg: not a decodable image" in done.stdout


VIDEO_COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def write_mp4(path: Path, colours: list[tuple[int, int, int]], fps: int = 10) -> None:
    """A real mp4 written by PyAV's (FFmpeg's) MPEG-4 encoder: frame i shows colours[i]."""
    av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for c in colours:
            frame = av.VideoFrame.from_ndarray(solid(c, (64, 48)), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _video_step(i: int, uri: str, t_s: float, **extra: object) -> dict:
    rgb = {"uri": uri, "timestamp_ns": round(t_s * 1e9), "format": "mp4", **extra}
    return step(i, observation={"media": {"rgb": rgb}})


def test_video_frames_decoded_at_their_timestamps(tmp_path: Path) -> None:
    ep = tmp_path / "vid_ep"
    ep.mkdir()
    write_mp4(ep / "front.mp4", VIDEO_COLOURS)
    elsewhere = tmp_path / "videos" / "wrist.mp4"
    elsewhere.parent.mkdir()
    write_mp4(elsewhere, VIDEO_COLOURS[::-1])
    times = [0.3, 0.0, 0.1, 0.4, 0.1]  # out of order and repeated: one pass per file anyway
    steps = [_video_step(i, "front.mp4", t, width=64, height=48) for i, t in enumerate(times)]
    steps.append(_video_step(5, elsewhere.as_uri(), 0.1))
    write_a(tmp_path, "vid_ep", steps)
    frames = episode_frames(read_episode(ep, LIMITS), SPEC)
    want = [VIDEO_COLOURS[round(t * 10)] for t in times] + [VIDEO_COLOURS[::-1][1]]
    for i, c in enumerate(want):
        assert close(colour_of(frames, i), c, tol=12), (i, colour_of(frames, i), c)


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("missing", r"step 0: frame .*front\.mp4: does not exist"),
        ("corrupt", r"step 0: frame .*front\.mp4: not a decodable video"),
        ("past_the_end", r"step 1: frame .*front\.mp4: no frame at t=2\.0000 s"),
        ("wrong_size", r"step 0: frame .*front\.mp4: video is 64x48, the step records 160x120"),
    ],
)
def test_bad_videos_are_reasons_naming_episode_step_file(
    tmp_path: Path, case: str, want: str
) -> None:
    ep = tmp_path / "bad_vid"
    ep.mkdir()
    write_mp4(ep / "front.mp4", VIDEO_COLOURS)
    size = {"width": 160, "height": 120} if case == "wrong_size" else {}
    steps = [_video_step(0, "front.mp4", 0.0, **size), _video_step(1, "front.mp4", 0.1, **size)]
    if case == "missing":
        (ep / "front.mp4").unlink()
    elif case == "corrupt":
        (ep / "front.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    elif case == "past_the_end":
        steps[1] = _video_step(1, "front.mp4", 2.0)
    write_a(tmp_path, "bad_vid", steps)
    with pytest.raises(FeatureError, match=r"episode bad_vid \(.*\) " + want):
        episode_frames(read_episode(ep, LIMITS), SPEC)
