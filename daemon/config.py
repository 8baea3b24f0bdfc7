"""The whole configuration file: sections owned by each package, composed here.

Loading is the only place that reads YAML/JSON and the environment; everything below receives a
validated, root-resolved :class:`TrainerConfig`. Errors name the file and the key path, e.g.
``trainer.yaml: job.max_steps: must be > 0 (got -5)``.
"""

from __future__ import annotations

import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.health import HealthConfig
from daemon.metrics import MetricsConfig
from gating.config import GateConfig
from safety.config import PromotionConfig, SafetyConfig, resolve_bounds
from trainer_core.config import FeaturesConfig, IngestConfig, JobConfig, LoraConfig, PolicyConfig

ROOT_ENV = "CONTINUON_TRAINER_ROOT"
DEFAULT_CONFIG = "default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PathsConfig(_Section):
    """Where things live; relative paths resolve against ``root``."""

    episodes: Path = Path("rlds/episodes")
    model: Path = Path("model")
    state: Path = Path("state")
    manifest: Path = Path("model/manifest.json")


class ServiceConfig(_Section):
    """The service loop's trigger policy and cadence (architecture §9)."""

    min_new_episodes: int = Field(4, ge=1)
    min_total_episodes: int = Field(8, ge=1)
    cooldown_s: float = Field(600.0, ge=0)
    backoff_initial_s: float = Field(60.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    max_jobs_per_day: int | None = Field(None, ge=1)
    rescan_interval_s: float = Field(300.0, gt=0)
    watch: str = Field("inotify", pattern="^(inotify|poll)$")
    poll_interval_s: float = Field(1.0, gt=0, description="gate poll while idle/armed")
    job_poll_interval_s: float = Field(0.25, gt=0, le=0.25, description="gate poll during a job")
    keep_releases: int = Field(5, ge=2)
    keep_runs: int = Field(10, ge=1)


class LoggingConfig(_Section):
    """Log verbosity and format (``auto``: console on a terminal, JSON otherwise)."""

    level: str = Field("info", pattern="^(debug|info|warning|error)$")
    format: str = Field("auto", pattern="^(auto|console|json)$")
    progress_every_s: float = Field(30.0, gt=0, description="job_progress line while training")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class FleetTlsConfig(_Section):
    """TLS for the fleet link, handed to Flower as it documents it: the server takes
    ``(ca_certificate, server_certificate, server_private_key)`` (``start_server(certificates=)``),
    a robot the ``ca_certificate`` that signed the server's certificate
    (``start_client(root_certificates=)``). All unset: plaintext, loopback only."""

    ca_certificate: Path | None = None
    server_certificate: Path | None = None
    server_private_key: Path | None = None

    @property
    def enabled(self) -> bool:
        """Whether any TLS file is configured (then a plaintext link is never used)."""
        return any((self.ca_certificate, self.server_certificate, self.server_private_key))


class FleetConfig(_Section):
    """``fleet join`` / ``fleet serve`` (Flower, the optional ``fleet`` extra; README "Fleet
    learning"). One address for both sides: the server binds it, a robot connects to it."""

    server_address: str = Field("127.0.0.1:9092", pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d+$")
    robot_id: str | None = Field(None, description="name in the server's round log (hostname)")
    rounds: int = Field(3, ge=1, description="server: rounds, then it stops by itself")
    min_clients: int = Field(
        2, ge=1, description="server: robots sampled per round (and needed connected to start)"
    )
    local_steps: int = Field(200, ge=1, description="robot: optimiser steps per round")
    round_timeout_s: float = Field(600.0, gt=0, description="server: a round's wait for answers")
    max_run_s: float = Field(
        7200.0, gt=0, description="either side ends itself after this long, whatever the peers do"
    )
    connect_timeout_s: float = Field(120.0, gt=0, description="robot: retry connecting this long")
    max_message_mb: int = Field(512, ge=1, description="gRPC message cap, same on both sides")
    allow_insecure_remote: bool = Field(
        False, description="plaintext to a non-loopback address (otherwise refused: set tls)"
    )
    tls: FleetTlsConfig = Field(default_factory=FleetTlsConfig)

    @property
    def host(self) -> str:
        """The address without its port."""
        return self.server_address.rsplit(":", 1)[0]

    @model_validator(mode="after")
    def _loopback_or_tls(self) -> FleetConfig:
        # Adapter weights are the robot's learning: never in plaintext off this machine unless
        # the operator says so in as many words.
        remote = self.host not in LOOPBACK_HOSTS
        if remote and not self.tls.enabled and not self.allow_insecure_remote:
            raise ValueError(
                f"server_address {self.server_address} is not loopback: set fleet.tls "
                "(ca_certificate, server_certificate, server_private_key) or "
                "fleet.allow_insecure_remote"
            )
        return self


class TrainerConfig(_Section):
    """The whole ``trainer.yaml``."""

    root: Path = Path(".")
    paths: PathsConfig = Field(default_factory=PathsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    job: JobConfig = Field(default_factory=JobConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)

    @model_validator(mode="after")
    def _every_action_bounded(self) -> TrainerConfig:
        # A head that cannot clamp a name is blind to it: refuse the config, naming the names.
        resolve_bounds(self.features.action_names, self.safety.clamp_bounds, self.features.bounds)
        return self

    @model_validator(mode="after")
    def _eval_cap_leaves_evidence(self) -> TrainerConfig:
        # A cap below the evidence floor would fail every candidate's evidence check, forever.
        if self.job.max_eval_episodes < self.promotion.min_eval_episodes:
            raise ValueError(
                f"job.max_eval_episodes ({self.job.max_eval_episodes}) is below "
                f"promotion.min_eval_episodes ({self.promotion.min_eval_episodes}): no "
                "candidate could ever be promoted"
            )
        return self

    @property
    def state_dir(self) -> Path:
        """The state folder (ledger, status file, runs)."""
        return self.paths.state

    @property
    def runs_dir(self) -> Path:
        """Where each job's run directory lives."""
        return self.paths.state / "runs"

    @property
    def adapters_dir(self) -> Path:
        """The adapter store (releases and the ``current`` link)."""
        return self.paths.model / "adapters"

    @property
    def ledger_path(self) -> Path:
        """The episode and job ledger (SQLite)."""
        return self.paths.state / "ledger.sqlite3"

    @property
    def status_path(self) -> Path:
        """The status file the daemon rewrites and ``status`` reads."""
        return self.paths.state / "status.json"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file and key path."""


# Legacy continuonos job-config keys (FORMATS §2) -> dotted path in the new schema, or None when
# the key no longer means anything (a warning says so).
LEGACY_KEYS: dict[str, str | None] = {
    "rlds_dir": "paths.episodes",
    "min_episodes": "service.min_total_episodes",
    "max_episodes": "job.max_episodes",
    "max_steps": "job.max_steps",
    "max_wall_time_s": "job.max_wall_time_s",
    "batch_size": "job.batch_size",
    "lora_layers": "lora.target_modules",
    "learning_rate": "job.learning_rate",
    "weight_decay": "job.weight_decay",
    "base_model_path": "policy.base_path",
    "log_every_steps": "job.log_every_steps",
    "adapters_out_dir": None,
    "adapter_filename": None,
    "log_dir": None,
    "shuffle_buffer_multiplier": None,
}
LEGACY_WHY = {
    "adapters_out_dir": "candidates are staged under state/runs and promoted into model/adapters",
    "adapter_filename": "adapters are saved as adapter_model.safetensors (peft), never .pt",
    "log_dir": "logs go to the journal (journalctl -u continuon-trainer)",
    "shuffle_buffer_multiplier": "episodes are shuffled in memory with a seeded permutation",
}


def is_legacy(raw: dict[str, Any]) -> bool:
    """A legacy continuonos job config is flat and carries its telltale keys."""
    return "rlds_dir" in raw or "adapters_out_dir" in raw or "lora_layers" in raw


def map_legacy(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map a legacy flat JSON job config onto the nested schema; return it and the warnings."""
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key not in LEGACY_KEYS:
            warnings.append(f"{key}: unknown legacy key, ignored")
            continue
        target = LEGACY_KEYS[key]
        if target is None:
            warnings.append(f"{key}: no longer used ({LEGACY_WHY[key]})")
            continue
        section, name = target.split(".")
        out.setdefault(section, {})[name] = value
    episodes = Path(str(raw.get("rlds_dir", "")))
    if episodes.parts[-2:] == ("rlds", "episodes"):
        # continuonos keeps everything under one brain folder: make it the root, so the model
        # and state folders land beside the episodes as on a real install; paths inside it
        # become relative, so --root (or a copy of the folder) moves all of them together.
        brain = episodes.parent.parent
        out["root"] = str(brain)
        for section, key in (("paths", "episodes"), ("policy", "base_path")):
            value = out.get(section, {}).get(key)
            if value is not None and Path(str(value)).is_relative_to(brain):
                out[section][key] = str(Path(str(value)).relative_to(brain))
    attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
    if set(raw.get("lora_layers") or []) & attention:
        out.setdefault("policy", {})["family"] = "transformer"
        warnings.append(
            "lora_layers name attention projections: policy.family is transformer "
            "(an encoder over observation tokens with q_proj/k_proj/v_proj/o_proj)"
        )
    return out, warnings


def _describe(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    got = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    for bound, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx:
            return f"must be {sign} {ctx[bound]} (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{msg} (got {got!r})" if not isinstance(got, dict | list) else msg


def format_errors(source: str, exc: ValidationError) -> str:
    """One line per error: ``file: dotted.key.path: what is wrong (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{source}: {loc}: {_describe(err)}")
    return "\n".join(lines)


def _named(text: str, path: Path) -> io.StringIO:
    """The text as a stream named for the file: YAML errors then say ``in "trainer.yaml"``."""
    stream = io.StringIO(text)
    stream.name = str(path)  # type: ignore[misc]
    return stream


def read_raw(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse a YAML or JSON config file into a dict (legacy JSON mapped); return warnings too."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(_named(text, path))
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(raw).__name__})")
    if is_legacy(raw):
        mapped, warnings = map_legacy(raw)
        return mapped, [f"{path.name}: legacy continuonos job config: {w}" for w in warnings]
    return raw, []


def default_config_text() -> str:
    """The embedded default config shipped inside the package (configs/default.yaml)."""
    return resources.files("daemon").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")


def resolve_paths(model: BaseModel, root: Path) -> BaseModel:
    """Return a copy of ``model`` with every relative ``Path`` field made absolute under root."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and name != "root":
            updates[name] = value if value.is_absolute() else root / value
        elif isinstance(value, BaseModel):
            updates[name] = resolve_paths(value, root)
    return model.model_copy(update=updates)


def choose_root(cli_root: str | None, file_root: Path, config_path: Path | None) -> Path:
    """``--root`` beats ``$CONTINUON_TRAINER_ROOT`` beats the file's ``root`` (relative to the
    file's folder)."""
    if cli_root:
        return Path(cli_root).expanduser().resolve()
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if file_root.is_absolute():
        return file_root
    base = config_path.parent if config_path else Path.cwd()
    return (base / file_root).resolve()


def load_config(path: Path | None, root: str | None = None) -> tuple[TrainerConfig, list[str]]:
    """Load, validate and root-resolve a config; ``path=None`` means the embedded default.

    Drop-ins ``<file>.d/*.yaml`` (sorted) are laid over the file (a legacy JSON config stays as
    it is; local settings go beside it). Returns the config and human-readable warnings (legacy
    keys). Raises :class:`ConfigError`.
    """
    if path is None:
        raw, warnings, source = yaml.safe_load(default_config_text()) or {}, [], DEFAULT_CONFIG
    else:
        raw, warnings = read_raw(path)
        raw = apply_dropins(raw, path)
        source = path.name
    raw = default_state_dir(raw, os.environ)
    try:
        cfg = TrainerConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None
    resolved_root = choose_root(root, cfg.root, path)
    cfg = resolve_paths(cfg.model_copy(update={"root": resolved_root}), resolved_root)
    return cfg, warnings  # type: ignore[return-value]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def apply_dropins(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``raw`` with each ``<path>.d/*.yaml`` merged over it, in name order (systemd style)."""
    folder = path.with_name(path.name + ".d")
    if not folder.is_dir():
        return raw
    for dropin in sorted(folder.glob("*.yaml")):
        extra, _ = read_raw(dropin)
        raw = _merge(raw, extra)
    return raw


def default_state_dir(raw: dict[str, Any], environ: Any) -> dict[str, Any]:
    """Under systemd (``StateDirectory=`` sets ``$STATE_DIRECTORY``, /var/lib/continuon-trainer)
    the state folder defaults to it: the unit leaves the brain folder read-only, except model/.
    A ``paths.state`` in the file still wins."""
    unit_dir = (environ.get("STATE_DIRECTORY") or "").split(":")[0]
    paths = raw.get("paths")
    if not unit_dir or (isinstance(paths, dict) and "state" in paths):
        return raw
    return _merge(raw, {"paths": {"state": unit_dir}})


def lora_target_warnings(cfg: TrainerConfig) -> list[str]:
    """A warning when ``lora.target_modules`` match no module of the configured family.

    Builds the family on torch's meta device (no memory, no weights); used by ``config check``,
    so the mismatch shows before any job rather than as an ``invalid`` one.
    """
    from trainer_core.lora import missing_targets  # torch: only in this CLI verb

    try:
        missing, names = missing_targets(cfg.policy, cfg.features, cfg.lora)
    except Exception as exc:  # a plug-in that cannot be built says so here too
        return [f"policy.family {cfg.policy.family!r} cannot be built: {exc}"]
    if not missing:
        return []
    return [
        f"lora.target_modules {missing} match no Linear module of policy.family "
        f"{cfg.policy.family!r}; it has {names}: every job would end invalid"
    ]


def config_check_command(args: Any) -> int:
    """``continuon-trainer config check FILE``: print the effective config or the errors."""
    try:
        cfg, warnings = load_config(Path(args.file), args.root)
    except ConfigError as exc:
        print(exc)
        return 2
    for w in [*warnings, *lora_target_warnings(cfg)]:
        print(f"warning: {w}")
    print(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False), end="")
    return 0
