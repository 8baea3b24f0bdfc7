"""A loopback fleet for tests and the bench: robot roots sharing one base, each with its own
synthetic episodes and config, a ``fleet serve`` and ``fleet join`` processes on 127.0.0.1.
Used by ``tests/test_fleet.py`` and ``bench/bench_fleet.py``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.daemon_harness import CLI, REPO, cli, make_root, synth

# Short rounds on a tiny MLP: the bench raises local_steps, the test keeps them low.
FLEET_EXTRA: dict[str, Any] = {
    "job": {"max_steps": 150, "min_episodes": 2, "eval_fraction": 0.4, "log_every_steps": 10},
    "gate": {"open_after_s": 0.0, "min_closed_s": 0.0},
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def factory_base(work: Path, extra: dict[str, Any] | None = None) -> Path:
    """One base every robot of the fleet shares, pretrained on a factory's driving (slower, no
    steering bias): each robot's own data then differ from it, and from each other's."""
    from tests.daemon_harness import deep_merge

    root, _ = make_root(work, deep_merge(FLEET_EXTRA, extra or {}))
    factory = ("--episodes", "12", "--steps", "80", "--seed", "1", "--speed", "0.7")
    synth(root, work / "factory", *factory)
    out = work / "base" / "policy.safetensors"
    cli(root, "--config", str(root / "trainer.yaml"), "base", "pretrain", "--episodes",
        str(work / "factory"), "--steps", "600", "--out", str(out))  # fmt: skip
    return out


def make_robot(
    tmp: Path, name: str, base: Path, port: int, extra: dict[str, Any], *synth_args: str
) -> Path:
    """A robot root: the shared base, 12 synthetic episodes (``synth_args`` make them differ),
    the fleet section pointing at ``port``, mode idle (gate open)."""
    from tests.daemon_harness import deep_merge

    fleet = {"fleet": {"server_address": f"127.0.0.1:{port}", "robot_id": name}}
    root, _ = make_root(tmp / name, deep_merge(deep_merge(FLEET_EXTRA, fleet), extra), base)
    synth(root, root / "rlds" / "episodes", "--episodes", "12", "--steps", "60", *synth_args)
    from tests.daemon_harness import write_mode

    write_mode(root, "idle")
    return root


def spawn(root: Path, *args: str) -> subprocess.Popen[str]:
    """A ``continuon-trainer`` verb on ``root`` in the background; output in ``root/<verb>.log``."""
    log = open(root / f"{'-'.join(args[:2])}.log", "w")  # noqa: SIM115 - the child's
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.Popen(
            [*CLI, "--root", str(root), "--config", str(root / "trainer.yaml"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )
    finally:
        log.close()


def fleet_status(root: Path, name: str = "fleet.json") -> dict[str, Any]:
    """A fleet status file, or {} while there is none yet."""
    try:
        return json.loads((root / "state" / name).read_text())
    except (OSError, ValueError):
        return {}


def wait_for(pred: Any, timeout: float, what: str, procs: list[subprocess.Popen[str]]) -> None:
    """Poll ``pred`` until true; fail naming ``what`` (or a process that died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            if p.poll() is not None and p.returncode not in (0, 1):
                raise AssertionError(f"{p.args} exited {p.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def seed_release(root: Path) -> str:
    """Make a release current on ``root`` through the store's own ``promote``: the shared base
    with small random LoRA weights (a release that is not the bare base). Returns its id."""
    import torch

    from daemon.config import load_config
    from daemon.store import AdapterStore
    from trainer_core.base import load_base
    from trainer_core.lora import attach_lora, save_adapter

    cfg, _ = load_config(root / "trainer.yaml", str(root))
    base = load_base(cfg.policy.base_path, cfg.policy, cfg.features)
    torch.manual_seed(7)
    model = attach_lora(base.model, cfg.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    out = root / "seed-adapter"
    card = {
        "kind": "continuon-lora-adapter",
        "run_id": "seed",
        "base_sha256": base.sha256,
        "policy": cfg.policy.model_dump(mode="json"),
        "features": cfg.features.model_dump(mode="json"),
    }
    save_adapter(model, out, base.normalizer, card)
    store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest, model_name=cfg.policy.model_name)
    return store.promote(out, {"decision": ["seeded by the test"]}).id


def current_release(root: Path) -> str | None:
    """The id of the release current on ``root``, or None (the bare base)."""
    from daemon.config import load_config
    from daemon.store import AdapterStore

    cfg, _ = load_config(root / "trainer.yaml", str(root))
    current = AdapterStore(cfg.adapters_dir, cfg.paths.manifest).current()
    return current.id if current else None
