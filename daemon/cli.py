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
from daemon.locate import find_config


class HELP(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default; a required option or a None default shows none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--episodes 0`` is refused, not a silent no-op)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="trainer.yaml (default: $CONTINUON_TRAINER_CONFIG, else /etc/continuon/trainer.yaml "
        "when present, else the embedded default)",
    )
    common.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        help="root every relative path resolves against "
        "(default: $CONTINUON_TRAINER_ROOT, else the config's root)",
    )
    parser = argparse.ArgumentParser(
        prog="continuon-trainer",
        parents=[common],
        description="On-robot LoRA trainer sidecar.",
        formatter_class=HELP,
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, handler: str, help: str, s: argparse._SubParsersAction = sub):
        p = s.add_parser(name, help=help, description=help, parents=[common], formatter_class=HELP)
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
    p.add_argument("--json", action="store_true", help="print the versioned JSON schema")
    p = add(
        "demo", "daemon.demo:demo_command", "end to end on the embedded default, in a demo root"
    )
    p.add_argument(
        "--demo-root", type=Path, default=Path("demo-root"), help="folder the demo works in"
    )
    p.add_argument("--numeric", action="store_true", help="the numeric robot (MLP) instead")
    p.add_argument("--frame-size", default="60x80", help="camera: HEIGHTxWIDTH of the frames")
    p.add_argument("--first-episodes", type=positive_int, default=12, help="camera: first drive")
    p.add_argument(
        "--shifted-episodes", type=positive_int, default=16, help="camera: drive after the shift"
    )
    p.add_argument(
        "--pretrain-steps", type=positive_int, default=400, help="camera: base pretraining steps"
    )

    cfg = add("config", "", "configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    p = add(
        "check",
        "daemon.config:config_check_command",
        "print the effective config or its errors",
        cfg_sub,
    )
    p.add_argument("file", help="the trainer.yaml (or legacy JSON job config) to check")

    p = add(
        "predict",
        "trainer_core.predict_cli:predict_command",
        "print a release's actions on an episode, as the runtime would get them",
    )
    p.add_argument("target", nargs="+", metavar="[RELEASE] EPISODE")

    p = add("validate", "daemon.ingest:validate_command", "check episodes; never modifies them")
    p.add_argument("paths", nargs="+", type=Path, help="episodes or folders of episodes")
    p.add_argument("--json", action="store_true", help="one JSON list of verdicts")
    p.add_argument(
        "--ledger", action="store_true", help="also what the ledger says (status, quarantine)"
    )

    base = add("base", "", "base policy commands")
    base_sub = base.add_subparsers(dest="base_verb", required=True, metavar="ACTION")
    p = add(
        "init",
        "trainer_core.base:init_command",
        "fresh base weights sized from the feature spec",
        base_sub,
    )
    p.add_argument("--out", type=Path, help="where to write it (default: policy.base_path)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.add_argument("--force", action="store_true", help="replace an existing base")
    p = add(
        "pretrain",
        "trainer_core.base:pretrain_command",
        "train a base on episodes (full weights)",
        base_sub,
    )
    p.add_argument("--episodes", type=Path, required=True, help="folder of RLDS episodes")
    p.add_argument("--out", type=Path, help="where to write it (default: policy.base_path)")
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--force", action="store_true", help="replace an existing base")

    p = add(
        "synth",
        "trainer_core.synth:synth_command",
        "write synthetic Donkeycar-like episodes (layout A: a folder per episode with "
        "metadata.json and JSONL step shards)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write episodes into")
    p.add_argument("--episodes", type=positive_int, default=16, help="how many episodes")
    p.add_argument("--steps", type=positive_int, default=100, help="steps per episode")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--steering-bias", type=float, default=0.0, help="added to every steering")
    p.add_argument("--speed", type=float, default=1.0, help="throttle scale")
    p.add_argument(
        "--unsafe", action="store_true", help="out-of-bounds actions, driving into the person"
    )
    p.add_argument("--camera", action="store_true", help="camera lane-following car (frames)")
    p.add_argument("--lighting", type=float, default=1.0, help="--camera: brightness factor")
    p.add_argument("--lane-width", type=float, default=0.8, help="--camera: metres")
    p.add_argument("--curvature", type=float, default=0.3, help="--camera: 1/m amplitude")

    rel = add(
        "releases",
        "daemon.store:releases_command",
        "list releases, their metrics, health and which is current",
    )
    rel_sub = rel.add_subparsers(dest="releases_verb", required=False, metavar="ACTION")
    p = add("show", "daemon.lineage:releases_show_command", "a release's lineage", rel_sub)
    p.add_argument("release", help="release id")
    ep = add("episodes", "", "the ledger's episodes: list, show, quarantine")
    ep_sub = ep.add_subparsers(dest="episodes_verb", required=True, metavar="ACTION")
    p = add("list", "daemon.lineage:episodes_list_command", "every known episode", ep_sub)
    p.add_argument("--status", choices=("valid", "rejected", "gone", "excluded"), help="only these")
    p = add("show", "daemon.lineage:episodes_show_command", "an episode's releases", ep_sub)
    p.add_argument("episode", help="path or episode id")
    p = add("exclude", "daemon.lineage:episodes_exclude_command", "quarantine one", ep_sub)
    p.add_argument("episode", help="path or episode id")
    p.add_argument("--reason", required=True)
    p = add("include", "daemon.lineage:episodes_include_command", "lift a quarantine", ep_sub)
    p.add_argument("episode", help="path or episode id")
    p = add("report", "daemon.report:report_command", "PNG plots and one HTML page")
    p.add_argument("--out", type=Path, required=True, help="folder for index.html and the PNGs")
    p = add(
        "rollback",
        "daemon.store:rollback_command",
        "back to the newest earlier good (or a named) release",
    )
    p.add_argument(
        "--to", dest="release", help="release id (default: the newest earlier one not marked bad)"
    )
    p.add_argument("--force", action="store_true", help="even to a release marked bad")
    p.add_argument("--reason", help="why (recorded in the bad mark of the release left)")

    p = add(
        "export",
        "daemon.cli:export_command",
        "write what trains off the robot (a bundle: episodes, splits, config, base, release) "
        "or a release merged into one model for runtimes",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write (must not exist)")
    p.add_argument(
        "--format",
        choices=tuple(EXPORTERS),
        default="bundle",
        help="bundle: for `torchrun -m trainer_core.distributed BUNDLE`; merged: the release's "
        "LoRA folded into the base (safetensors + card); onnx: that, plus model.onnx checked "
        "against torch (extra 'onnx')",
    )
    p.add_argument(
        "--release", help="bundle: its baseline; merged/onnx: the release merged (default: current)"
    )
    ada = add("adapters", "", "adapters made elsewhere (GPU host, fleet)")
    ada_sub = ada.add_subparsers(dest="adapters_verb", required=True, metavar="ACTION")
    p = add(
        "import",
        "daemon.adapters:import_command",
        "shadow-evaluate an adapter on this robot's held-out episodes; promote it only if the "
        "rule passes (stop the daemon first)",
        ada_sub,
    )
    p.add_argument("dir", type=Path, help="a sealed adapter directory (trainer_core.distributed)")
    p.add_argument("--source", help="recorded as 'imported from SOURCE' (default: DIR)")

    imp = add("import", "", "bring data from other formats in as RLDS episodes")
    imp_sub = imp.add_subparsers(dest="import_verb", required=True, metavar="FORMAT")
    for fmt, handler in (
        ("lerobot", "trainer_core.importers.lerobot:import_command"),
        ("donkey-tub", "trainer_core.importers.donkey:import_command"),
    ):
        p = add(fmt, handler, f"import a local {fmt} dataset", imp_sub)
        p.add_argument("src", type=Path, help=f"the {fmt} dataset folder")
        p.add_argument("--out", type=Path, required=True, help="folder to write episodes into")
        if fmt == "donkey-tub":
            p.add_argument(
                "--max-gap-s",
                type=float,
                default=2.0,
                help="start a new episode where the tub's clock jumps by more (seconds)",
            )
            p.add_argument("--prefix", help="put in front of episode ids (one per car)")

    fleet = add("fleet", "", "learn across robots with Flower (the optional fleet extra)")
    fleet_sub = fleet.add_subparsers(dest="fleet_verb", required=True, metavar="ACTION")
    p = add(
        "join",
        "daemon.fleet:join_command",
        "train this robot's LoRA update in each round while the gate is open, then judge "
        "the aggregate by this robot's own rule",
        fleet_sub,
    )
    p.add_argument("--server", dest="server_address", help="host:port (default: fleet.*)")
    p.add_argument("--local-steps", type=positive_int, help="steps per round (fleet.local_steps)")
    p = add(
        "serve",
        "daemon.fleet:serve_command",
        "FedAvg over the robots' LoRA tensors for fleet.rounds rounds, then stop",
        fleet_sub,
    )
    p.add_argument("--server", dest="server_address", help="host:port to bind (default: fleet.*)")
    p.add_argument("--rounds", type=positive_int, help="rounds (fleet.rounds)")
    p.add_argument("--min-clients", type=positive_int, help="robots per round (fleet.*)")
    p.add_argument("--out", type=Path, help="also write the round log (JSON) here")
    return parser


LOUD = {"daemon.service:run_command", "daemon.service:once_command"}
# export --format FORMAT -> its handler (merged/onnx need torch: imported only when chosen)
EXPORTERS = {
    "bundle": "daemon.bundle:export_command",
    "merged": "trainer_core.export_model:export_command",
    "onnx": "trainer_core.export_model:export_command",
}


def export_command(args: argparse.Namespace, config: object) -> int:
    """``export``: hand over to the chosen format's handler."""
    return resolve_handler(EXPORTERS[args.format])(args, config)


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
    args.config, source = find_config(args.config)
    if args.handler != "daemon.service:run_command":  # the daemon logs it in the journal
        print(f"config: {source}", file=sys.stderr)
    try:
        config, warnings = load_config(args.config, args.root)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # Legacy-key warnings where the config takes effect, not on every look at status.
    for w in warnings if args.handler in LOUD else []:
        print(f"warning: {w}", file=sys.stderr)
    try:
        return int(resolve_handler(args.handler)(args, config) or 0)
    except OSError as exc:  # one line an operator can act on, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"continuon-trainer {args.verb}: error: {where}{exc.strerror or exc}", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
