"""``continuon-trainer``: one command per verb (LeRobot style).

Handlers are named ``module:function`` and imported only when their verb runs, so ``status`` stays
instant and the daemon's ``run`` never pulls in torch. Every handler is
``handler(args, config) -> exit code``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="trainer.yaml (default: the embedded default)",
    )
    common.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        help="root every relative path resolves against "
        "(default: $CONTINUON_TRAINER_ROOT, else the config's root)",
    )
    parser = argparse.ArgumentParser(
        prog="continuon-trainer", parents=[common], description="On-robot LoRA trainer sidecar."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, handler: str, help: str, s: argparse._SubParsersAction = sub):
        p = s.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    add(
        "run", "daemon.service:run_command", "run the service in the foreground (systemd ExecStart)"
    )
    p = add("once", "daemon.service:once_command", "one cycle in the foreground, then exit")
    p.add_argument(
        "--force", action="store_true", help="ignore the gate (an operator at the robot)"
    )
    p = add("status", "daemon.status:status_command", "what the daemon is doing and why")
    p.add_argument("--json", action="store_true")
    p = add(
        "demo", "daemon.demo:demo_command", "end to end on the embedded default, in a demo root"
    )
    p.add_argument("--demo-root", type=Path, default=Path("demo-root"))

    cfg = add("config", "", "configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    p = add(
        "check",
        "daemon.config:config_check_command",
        "print the effective config or its errors",
        cfg_sub,
    )
    p.add_argument("file")

    p = add("validate", "daemon.ingest:validate_command", "check episodes; never modifies them")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--json", action="store_true")

    base = add("base", "", "base policy commands")
    base_sub = base.add_subparsers(dest="base_verb", required=True, metavar="ACTION")
    p = add(
        "init",
        "trainer_core.base:init_command",
        "fresh base weights sized from the feature spec",
        base_sub,
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing base")
    p = add(
        "pretrain",
        "trainer_core.base:pretrain_command",
        "train a base on episodes (full weights)",
        base_sub,
    )
    p.add_argument("--episodes", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing base")

    p = add(
        "synth",
        "trainer_core.synth:synth_command",
        "write synthetic Donkeycar-like episodes (layout A)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steering-bias", type=float, default=0.0)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument(
        "--unsafe", action="store_true", help="out-of-bounds actions, driving into the person"
    )
    p.add_argument("--camera", action="store_true", help="camera lane-following car (frames)")
    p.add_argument("--lighting", type=float, default=1.0, help="--camera: brightness factor")
    p.add_argument("--lane-width", type=float, default=0.8, help="--camera: metres")
    p.add_argument("--curvature", type=float, default=0.3, help="--camera: 1/m amplitude")

    add(
        "releases",
        "daemon.store:releases_command",
        "list releases, their metrics, which is current",
    )
    p = add(
        "rollback", "daemon.store:rollback_command", "go back to the previous (or a named) release"
    )
    p.add_argument("--to", dest="release")

    imp = add("import", "", "bring data from other formats in as RLDS episodes")
    imp_sub = imp.add_subparsers(dest="import_verb", required=True, metavar="FORMAT")
    for fmt, handler in (
        ("lerobot", "trainer_core.importers.lerobot:import_command"),
        ("donkey-tub", "trainer_core.importers.donkey:import_command"),
    ):
        p = add(fmt, handler, f"import a local {fmt} dataset", imp_sub)
        p.add_argument("src", type=Path)
        p.add_argument("--out", type=Path, required=True)
        if fmt == "donkey-tub":
            p.add_argument(
                "--max-gap-s",
                type=float,
                default=2.0,
                help="start a new episode where the tub's clock jumps by more (default 2 s)",
            )
            p.add_argument("--prefix", help="put in front of episode ids (one per car)")
    return parser


def resolve_handler(spec: str):
    """Import ``module:function`` lazily."""
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    # --config/--root are accepted before or after the verb; SUPPRESS keeps a later parser
    # from overwriting an earlier value with None.
    args.config = getattr(args, "config", None)
    args.root = getattr(args, "root", None)
    if args.handler == "daemon.config:config_check_command":
        return resolve_handler(args.handler)(args)
    try:
        config, warnings = load_config(args.config, args.root)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return int(resolve_handler(args.handler)(args, config) or 0)


if __name__ == "__main__":
    sys.exit(main())
