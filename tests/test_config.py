"""Configuration: validation errors name file and key path; legacy JSON maps; root resolves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config

CLI = [sys.executable, "-m", "daemon.cli"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("job: {max_steps: -5}", "trainer.yaml: job.max_steps: must be > 0 (got -5)"),
        ("job: {nonsense: 1}", "trainer.yaml: job.nonsense: unknown key"),
        ("lora: {r: 0}", "trainer.yaml: lora.r: must be > 0 (got 0)"),
        ("gate: [1, 2]", "trainer.yaml: gate:"),
        ("features: {bounds: {steering: [1, -1]}}", "low must be < high"),
        ("- a list", "top level must be a mapping"),
        ("job: {max_steps: [unclosed", "not valid YAML"),
        (
            "job: {max_eval_episodes: 4}\npromotion: {min_eval_episodes: 5}",
            "job.max_eval_episodes (4) is below promotion.min_eval_episodes (5)",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "trainer.yaml", text))
    assert message in str(err.value)


def test_relative_paths_resolve_against_root(tmp_path, monkeypatch):
    monkeypatch.delenv("CONTINUON_TRAINER_ROOT", raising=False)
    cfg, _ = load_config(
        write(tmp_path, "t.yaml", "paths: {episodes: eps}"), root=str(tmp_path / "r")
    )
    assert cfg.root == tmp_path / "r"
    assert cfg.paths.episodes == tmp_path / "r" / "eps"
    assert cfg.policy.base_path == tmp_path / "r" / "model/base/policy.safetensors"
    assert cfg.gate.mode_file.is_absolute()


def test_root_precedence(tmp_path, monkeypatch):
    path = write(tmp_path, "t.yaml", "root: fromfile")
    monkeypatch.delenv("CONTINUON_TRAINER_ROOT", raising=False)
    assert load_config(path)[0].root == tmp_path / "fromfile"
    monkeypatch.setenv("CONTINUON_TRAINER_ROOT", str(tmp_path / "env"))
    assert load_config(path)[0].root == tmp_path / "env"
    assert load_config(path, root=str(tmp_path / "cli"))[0].root == tmp_path / "cli"


def test_embedded_default_loads(tmp_path):
    cfg, warnings = load_config(None, root=str(tmp_path))
    assert warnings == []
    assert cfg.paths.episodes == tmp_path / "rlds" / "episodes"


def test_legacy_sample_maps_with_warnings(samples):
    cfg, warnings = load_config(samples / "configs" / "pi5-donkey.json")
    assert cfg.root == Path("/opt/continuonos/brain")
    assert cfg.paths.episodes == Path("/opt/continuonos/brain/rlds/episodes")
    assert cfg.job.max_steps == 300 and cfg.job.batch_size == 8
    assert cfg.job.learning_rate == 5e-5
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.service.min_total_episodes == 16
    assert any("adapter_filename: no longer used" in w for w in warnings)
    assert any("shuffle_buffer_multiplier" in w for w in warnings)


def test_config_check_cli(tmp_path, samples):
    ok = subprocess.run(
        [*CLI, "config", "check", str(samples / "configs" / "pi5-donkey.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "max_steps: 300" in ok.stdout and "warning:" in ok.stdout
    bad = write(tmp_path, "trainer.yaml", "job: {max_steps: -5}")
    out = subprocess.run(
        [*CLI, "config", "check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "trainer.yaml: job.max_steps: must be > 0 (got -5)" in out.stdout


def test_shipped_configs_are_valid():
    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        load_config(path, root="/tmp/x")


def test_legacy_json_roundtrip_is_json(tmp_path):
    path = write(
        tmp_path, "legacy.json", json.dumps({"rlds_dir": "/data/rlds/episodes", "max_steps": 7})
    )
    cfg, _ = load_config(path)
    assert cfg.root == Path("/data") and cfg.job.max_steps == 7


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("gate: {temperature: {close_at_c: .nan}}", "gate.temperature.close_at_c"),
        ("job: {max_wall_time_s: .inf}", "job.max_wall_time_s"),
    ],
)
def test_nan_and_inf_are_refused(tmp_path, text, key):
    # A NaN temperature ceiling compares false with everything: the gate would fail open.
    with pytest.raises(ConfigError, match=rf"trainer\.yaml: {key}: .*finite"):
        load_config(write(tmp_path, "trainer.yaml", text))


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "trainer.yaml"
    path.write_bytes(b"job: {max_steps: 5}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"trainer\.yaml: not UTF-8"):
        load_config(path)


def test_bare_yaml_off_means_need_off(tmp_path):
    cfg, _ = load_config(write(tmp_path, "trainer.yaml", "gate: {battery: {need: off}}"))
    assert cfg.gate.battery.need == "off"
    with pytest.raises(ConfigError, match=r"gate\.battery\.need"):
        load_config(write(tmp_path, "trainer.yaml", "gate: {battery: {need: on}}"))


ARM_ACTIONS = (
    "features:\n  action:\n    - {path: action.command, names: [j1, j2, j3, j4, j5, j6]}\n"
)


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ("", "['j1', 'j2', 'j3', 'j4', 'j5', 'j6']"),  # the 6-joint arm of the audit
        ("  bounds: {j1: [-1, 1], j2: [-1, 1]}\n", "['j3', 'j4', 'j5', 'j6']"),
        (
            "  bounds: {j1: [-1, 1]}\nsafety:\n  clamp_bounds: {j2: [-1, 1], j3: [0, 1]}\n",
            "['j4', 'j5', 'j6']",
        ),
    ],
)
def test_config_with_unbounded_action_names_is_refused(tmp_path, extra: str, missing: str):
    cfg = tmp_path / "arm.yaml"
    cfg.write_text(ARM_ACTIONS + extra)
    with pytest.raises(ConfigError, match=re.escape(f"action names without bounds: {missing}")):
        load_config(cfg, str(tmp_path))
    done = subprocess.run(
        [*CLI, "config", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and missing in done.stdout + done.stderr


def test_every_action_name_bounded_is_accepted(tmp_path):
    cfg = tmp_path / "arm.yaml"
    bounds = ", ".join(f"j{i}: [-1, 1]" for i in range(2, 7))
    cfg.write_text(
        ARM_ACTIONS + f"  bounds: {{{bounds}}}\nsafety:\n  clamp_bounds: {{j1: [0, 1]}}\n"
    )
    loaded, _ = load_config(cfg, str(tmp_path))
    assert loaded.features.out_of_bounds == "skip"


def test_out_of_bounds_policy_is_validated(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("features:\n  out_of_bounds: ignore\n")
    with pytest.raises(ConfigError, match="out_of_bounds"):
        load_config(cfg, str(tmp_path))
