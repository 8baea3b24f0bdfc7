"""Camera pilots through the real job child entry point: synthetic lane-following car.

A cnn base is pretrained on one drive; adapters are trained on a shifted drive (darker light,
a steering bias) and on an unsafe one. Held-out episodes are ones the job never saw. Frames are
small (30x40) so the test stays quick on two cores; the code path is the 120x160 one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from safety.config import PromotionConfig, SafetyConfig
from safety.rule import decide
from trainer_core.base import pretrain_base
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig
from trainer_core.image_config import Augment, ImageFeature
from trainer_core.job import main
from trainer_core.lora import read_card
from trainer_core.spec import ExitCode, JobResult, JobSpec
from trainer_core.synth_camera import CameraOptions, write_camera_episodes

FEATURES = FeaturesConfig(observation=[], images=[ImageFeature(size=(30, 40))])
POLICY = PolicyConfig(family="cnn", conv=[8, 16, 16], hidden=[32, 16])
LORA = LoraConfig(target_modules=["dense.0", "dense.1", "head"])


@dataclass
class CamWorld:
    root: Path
    base: Path
    shift: list[Path]
    unsafe: list[Path]


@pytest.fixture(scope="module")
def cam(tmp_path_factory: pytest.TempPathFactory) -> CamWorld:
    root = tmp_path_factory.mktemp("cam")
    first = write_camera_episodes(root / "first", 8, 60, seed=0)
    base = root / "state" / "base" / "policy.safetensors"
    pretrain_base(
        first,
        base,
        POLICY,
        FEATURES,
        JobConfig(threads=2),
        IngestConfig(),
        steps=400,
        seed=0,
        frame_cache=root / "state" / "frames",
    )
    return CamWorld(
        root=root,
        base=base,
        shift=write_camera_episodes(
            root / "shift", 10, 60, seed=1, opts=CameraOptions(steering_bias=0.35, lighting=0.7)
        ),
        unsafe=write_camera_episodes(
            root / "unsafe", 6, 60, seed=2, opts=CameraOptions(unsafe=True)
        ),
    )


def run(
    cam: CamWorld, name: str, train: list[Path], evals: list[Path], **kw
) -> tuple[int, JobResult]:
    run_dir = cam.root / "state" / "runs" / name
    run_dir.mkdir(parents=True)
    features = kw.pop("features", FEATURES)
    spec = JobSpec(
        run_id=name,
        run_dir=run_dir,
        train_episodes=train,
        eval_episodes=evals,
        base_path=cam.base,
        features=features,
        policy=POLICY,
        lora=kw.pop("lora", LORA),
        job=JobConfig(threads=2, **{"max_steps": 250, **kw}),
        ingest=IngestConfig(),
        safety=SafetyConfig(),
    )
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    code = main([str(run_dir / "spec.json")])
    return code, JobResult.model_validate_json((run_dir / "result.json").read_text())


def test_adapter_after_a_shift_halves_held_out_steering_error(cam: CamWorld) -> None:
    code, result = run(cam, "shift", cam.shift[:7], cam.shift[7:])
    assert code == ExitCode.DONE, result.reason
    assert any("trunk features cached" in n for n in result.notes)  # LoRA above the trunk
    m = result.metrics
    assert m is not None and m.eval_steps == 180
    steer_base, steer_cand = (
        m.baseline.mse_per_name["steering"],
        m.candidate.mse_per_name["steering"],
    )
    assert steer_cand <= 0.5 * steer_base, (steer_base, steer_cand)
    assert decide(m, PromotionConfig()).promote
    card = read_card(result.candidate_path)
    assert card["features"]["images"][0]["size"] == [30, 40]  # the runtime preprocesses alike
    assert (cam.root / "state" / "frames").is_dir()  # decoded once, shared with later jobs


def test_unsafe_camera_drive_is_not_promoted(cam: CamWorld) -> None:
    # Out-of-bounds throttle: by default the episodes are not trained on at all (fail closed).
    code, result = run(cam, "unsafe", cam.unsafe[:4], cam.unsafe[4:])
    assert code == ExitCode.INVALID and result.candidate_path is None
    assert "throttle=1.7 outside its bounds" in result.reason
    # Clipped into bounds, the jerky full-throttle driving is learnt, and refused.
    clip = FeaturesConfig(observation=[], images=FEATURES.images, out_of_bounds="clip")
    code, result = run(cam, "unsafe-clip", cam.unsafe[:4], cam.unsafe[4:], features=clip)
    assert code == ExitCode.DONE, result.reason
    verdict = decide(result.metrics, PromotionConfig())
    assert not verdict.promote, verdict


def test_lora_on_a_conv_with_augmentation_trains_from_frames(cam: CamWorld) -> None:
    aug = Augment(brightness=0.2, contrast=0.2, shift_px=2, hflip=True)
    features = FeaturesConfig(observation=[], images=[ImageFeature(size=(30, 40), augment=aug)])
    # Augmentation is part of the features (so of the resume fingerprint) but not of the
    # base's image spec: the same base fits.
    code, result = run(
        cam,
        "conv",
        cam.shift[:3],
        cam.shift[7:],
        features=features,
        lora=LoraConfig(target_modules=["trunk.conv2", "head"]),
        max_steps=20,
    )
    assert code == ExitCode.DONE, result.reason
    assert not any("trunk features cached" in n for n in result.notes)
    assert result.loss_last is not None and result.steps == 20
