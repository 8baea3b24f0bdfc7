"""Steps -> named observation/action arrays, and the normaliser that travels with an adapter.

Numpy only (no torch): the daemon may use it to check episodes. A feature that is missing,
non-numeric or the wrong length raises :class:`FeatureError` naming the episode, step and path,
so the job can skip that episode with a precise reason instead of crashing.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safety.config import SafetyConfig, resolve_bounds
from trainer_core.config import FeatureGroup, FeaturesConfig, IngestConfig
from trainer_core.episode import Episode
from trainer_core.fsio import atomic_write_json
from trainer_core.rlds import content_hash

STD_FLOOR = 1e-3  # a constant feature must not blow up to inf after normalisation
_MISSING = object()


class FeatureError(ValueError):
    """An episode whose features cannot be extracted; the message says where and why."""


class OutOfBoundsError(FeatureError):
    """A recorded action lies outside its bounds under ``features.out_of_bounds: skip``."""


def resolve(mapping: Any, path: str) -> Any:
    """Walk a dotted path through nested dicts (and list indices); ``_MISSING`` if absent."""
    node = mapping
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def to_number(value: Any) -> float:
    """A finite float from a number or a numeric string (continuonos' step_metadata)."""
    if isinstance(value, bool):
        raise ValueError(f"is a boolean ({value!r}), not a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"is the string {value!r}, not a number") from None
    else:
        raise ValueError(f"is a {type(value).__name__}, not a number")
    if not math.isfinite(number):
        raise ValueError(f"is not finite ({value!r})")
    return number


def group_values(step_map: dict[str, Any], group: FeatureGroup) -> list[float]:
    """The values of one feature group in one step; raises ValueError saying what is wrong."""
    value = resolve(step_map, group.path)
    if value is _MISSING:
        raise ValueError("is missing")
    values = value if isinstance(value, list) else [value]
    if len(values) != len(group.names):
        raise ValueError(f"has {len(values)} values, expected {len(group.names)} {group.names}")
    return [to_number(v) for v in values]


@dataclass
class EpisodeArrays:
    """One or more episodes as aligned arrays (rows = steps)."""

    obs: np.ndarray  # (T, O) float32, raw units
    act: np.ndarray  # (T, A) float32, raw units
    proximity: np.ndarray  # (T,) float32 metres, NaN where the step does not say
    episode_start: np.ndarray  # (T,) bool, True on each episode's first step
    frames: Any = None  # trainer_core.frame_cache.FrameStore (T rows) when images are configured
    # (T, A) bool: the recorded action lay outside its bound and was clipped (clip policy);
    # None when nothing was. Evaluation must not mistake a clipped recording for a
    # demonstration that commanded the bound (safety.config.SafetyConfig.demo_bound_tolerance).
    act_outside: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.obs)


def _groups_row(
    step_map: dict[str, Any], groups: Sequence[FeatureGroup], where: str
) -> list[float]:
    row: list[float] = []
    for group in groups:
        try:
            row.extend(group_values(step_map, group))
        except ValueError as exc:
            raise FeatureError(f"{where}: {group.path} {exc}") from None
    return row


def _proximity(step_map: dict[str, Any], path: str | None) -> float:
    if path is None:
        return math.nan
    value = resolve(step_map, path)
    if value is _MISSING:
        return math.nan
    try:
        return to_number(value)
    except ValueError:
        return math.nan


Bounds = dict[str, tuple[float, float]]


def action_bounds(features: FeaturesConfig, clamp_bounds: Bounds) -> Bounds:
    """Every action name's bounds (``safety.clamp_bounds``, else ``features.bounds``); raises
    :class:`safety.config.UnboundedActionsError` naming the names that have none."""
    return resolve_bounds(features.action_names, clamp_bounds, features.bounds)


def bounded_safety(features: FeaturesConfig, safety: SafetyConfig) -> SafetyConfig:
    """``safety`` with every action name's bounds filled in (see :func:`action_bounds`), so a
    safety head built from it clamps every name the way the job's head does."""
    return safety.model_copy(update={"clamp_bounds": action_bounds(features, safety.clamp_bounds)})


def out_of_bounds(act: np.ndarray, names: list[str], bounds: Bounds) -> tuple[int, str, float, int]:
    """The first (step, name, value) of ``act`` outside ``bounds`` and how many steps are
    outside; (-1, "", 0.0, 0) when none is."""
    lo = np.array([bounds[n][0] for n in names], np.float64)
    hi = np.array([bounds[n][1] for n in names], np.float64)
    outside = (act < lo) | (act > hi)
    if not outside.any():
        return -1, "", 0.0, 0
    step, col = (int(v[0]) for v in np.nonzero(outside))
    return step, names[col], float(act[step, col]), int(outside.any(axis=1).sum())


def bounds_problem(episode: Episode, features: FeaturesConfig, clamp_bounds: Bounds) -> str | None:
    """Why ``features.out_of_bounds: skip`` leaves ``episode`` out, or None (clip policy, every
    action inside its bounds, or actions that cannot be extracted: another check's business)."""
    if features.out_of_bounds != "skip":
        return None
    try:
        arrays = episode_arrays(episode, features)
    except FeatureError:
        return None
    return _bounds_reason(episode, arrays.act, features, action_bounds(features, clamp_bounds))


def _bounds_reason(
    episode: Episode, act: np.ndarray, features: FeaturesConfig, bounds: Bounds
) -> str | None:
    step, name, value, n_out = out_of_bounds(act, features.action_names, bounds)
    if step < 0:
        return None
    lo, hi = bounds[name]
    path = next(g.path for g in features.action if name in g.names)
    return (
        f"episode {episode.episode_id} ({episode.source}) step {step}: {path} {name}={value:.4g} "
        f"outside its bounds [{lo:g}, {hi:g}] ({n_out} of {len(act)} steps out of bounds; "
        "features.out_of_bounds: skip, the episode is not trained on)"
    )


def episode_arrays(
    episode: Episode,
    features: FeaturesConfig,
    proximity_path: str | None = None,
    bounds: Bounds | None = None,
) -> EpisodeArrays:
    """Extract one episode. Raises :class:`FeatureError` (episode, step, path) on bad input.

    With ``bounds`` (every action name's), recorded actions outside them follow
    ``features.out_of_bounds``: ``skip`` raises FeatureError naming the first such step,
    ``clip`` clips them."""
    if not episode.steps:
        raise FeatureError(f"episode {episode.episode_id} ({episode.source}): has no steps")
    obs, act, prox = [], [], []
    for i, step in enumerate(episode.steps):
        where = f"episode {episode.episode_id} ({episode.source}) step {i}"
        step_map = step.as_mapping()
        obs.append(_groups_row(step_map, features.observation, where))
        act.append(_groups_row(step_map, features.action, where))
        prox.append(_proximity(step_map, proximity_path))
    start = np.zeros(len(obs), dtype=bool)
    start[0] = True
    actions = np.asarray(act, dtype=np.float64)
    outside = None
    if bounds is not None:
        reason = _bounds_reason(episode, actions, features, bounds)
        if reason is not None and features.out_of_bounds == "skip":
            raise OutOfBoundsError(reason)
        lo, hi = zip(*(bounds[n] for n in features.action_names), strict=True)
        clipped = np.clip(actions, lo, hi)
        outside = (clipped != actions) if reason is not None else None
        actions = clipped
    return EpisodeArrays(
        obs=np.asarray(obs, dtype=np.float32),
        act=actions.astype(np.float32),
        proximity=np.asarray(prox, dtype=np.float32),
        episode_start=start,
        act_outside=outside,
    )


def concat(parts: Sequence[EpisodeArrays], n_obs: int, n_act: int) -> EpisodeArrays:
    """Stack episodes in order; an empty list gives empty arrays of the right width."""
    if not parts:
        return EpisodeArrays(
            obs=np.zeros((0, n_obs), np.float32),
            act=np.zeros((0, n_act), np.float32),
            proximity=np.zeros(0, np.float32),
            episode_start=np.zeros(0, bool),
        )
    return EpisodeArrays(
        obs=np.concatenate([p.obs for p in parts]),
        act=np.concatenate([p.act for p in parts]),
        proximity=np.concatenate([p.proximity for p in parts]),
        episode_start=np.concatenate([p.episode_start for p in parts]),
        frames=_join_frames(parts),
        act_outside=_join_outside(parts, n_act),
    )


def _join_outside(parts: Sequence[EpisodeArrays], n_act: int) -> np.ndarray | None:
    """The parts' ``act_outside`` masks stacked (all False where a part has none)."""
    if all(p.act_outside is None for p in parts):
        return None
    return np.concatenate(
        [
            p.act_outside if p.act_outside is not None else np.zeros((len(p), n_act), bool)
            for p in parts
        ]
    )


def _join_frames(parts: Sequence[EpisodeArrays]) -> Any:
    if parts[0].frames is None:
        return None
    from trainer_core.frame_cache import FrameStore

    return FrameStore.join([p.frames for p in parts])


@dataclass
class Normalizer:
    """Per-name mean/std of observations and actions (from a training split)."""

    obs_names: list[str]
    act_names: list[str]
    obs_mean: np.ndarray
    obs_std: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray

    @classmethod
    def fit(
        cls,
        data: EpisodeArrays,
        obs_names: list[str],
        act_names: list[str],
        std_floor: float = STD_FLOOR,
    ) -> Normalizer:
        """Statistics of ``data``; std is floored so constant features stay finite."""
        if len(data) == 0:
            raise ValueError("cannot fit a normaliser on zero steps")
        obs, act = data.obs.astype(np.float64), data.act.astype(np.float64)
        return cls(
            obs_names=list(obs_names),
            act_names=list(act_names),
            obs_mean=obs.mean(0).astype(np.float32),
            obs_std=np.maximum(obs.std(0), std_floor).astype(np.float32),
            act_mean=act.mean(0).astype(np.float32),
            act_std=np.maximum(act.std(0), std_floor).astype(np.float32),
        )

    def norm_obs(self, obs: np.ndarray) -> np.ndarray:
        """Observations standardised with the training split's mean and std (float32)."""
        return ((obs - self.obs_mean) / self.obs_std).astype(np.float32)

    def norm_act(self, act: np.ndarray) -> np.ndarray:
        """Actions standardised with the training split's mean and std (float32)."""
        return ((act - self.act_mean) / self.act_std).astype(np.float32)

    def denorm_act(self, act: np.ndarray) -> np.ndarray:
        """Standardised actions back in their original units (float32)."""
        return (act * self.act_std + self.act_mean).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """Per-name statistics, readable by a person and by the robot runtime."""
        return {
            "observation": {
                n: {"mean": float(m), "std": float(s)}
                for n, m, s in zip(self.obs_names, self.obs_mean, self.obs_std, strict=True)
            },
            "action": {
                n: {"mean": float(m), "std": float(s)}
                for n, m, s in zip(self.act_names, self.act_mean, self.act_std, strict=True)
            },
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_json`; raises ValueError on a malformed or non-positive std."""
        try:
            obs, act = obj["observation"], obj["action"]
            arrays = [
                np.array([float(v[k]) for v in side.values()], dtype=np.float32)
                for side in (obs, act)
                for k in ("mean", "std")
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed normaliser: {exc!r}") from None
        if (
            any(not np.all(np.isfinite(a)) for a in arrays)
            or (arrays[1] <= 0).any()
            or (arrays[3] <= 0).any()
        ):
            raise ValueError("normaliser has non-finite values or a std <= 0")
        return cls(list(obs), list(act), arrays[0], arrays[1], arrays[2], arrays[3])

    def save(self, path: Path) -> None:
        """Write the normalizer to ``path`` as JSON, atomically."""
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Normalizer:
        """Read a normalizer written by :meth:`save`."""
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class EpisodeInfo:
    """What evaluation reports per episode: its id and the slices it belongs to."""

    episode_id: str
    slices: list[str]


SLICE_TAG_PREFIXES = ("task:", "instruction:")


def episode_slices(metadata: dict[str, Any]) -> list[str]:
    """Slice labels of an episode: its ``environment_id``, its ``task`` / ``instruction``
    (``language_instruction``), and tags written ``task:...`` or ``instruction:...``."""
    out: list[str] = []
    for key in ("environment_id", "task", "instruction", "language_instruction"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            out.append(f"{key}={value}")
    tags = metadata.get("tags")
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, str) and tag.startswith(SLICE_TAG_PREFIXES):
            kind, _, value = tag.partition(":")
            out.append(f"{kind}={value}")
    return sorted(set(out))


@dataclass
class Split:
    """The usable episodes of a split as arrays, with what was skipped and why."""

    arrays: EpisodeArrays
    paths: list[Path]
    hashes: list[str]
    skipped: dict[str, str]  # episode path -> reason
    episodes: list[EpisodeInfo] = field(default_factory=list)  # one per used path
    out_of_bounds: int = 0  # of the skipped, how many for recordings outside their bounds


def read_split(
    paths: Sequence[Path],
    features: FeaturesConfig,
    limits: IngestConfig,
    proximity_path: str | None = None,
    frame_cache: Path | None = None,
    bounds: Bounds | None = None,
    stop: Callable[[], bool] | None = None,
) -> Split:
    """Read and extract every episode in ``paths`` (in order); skip bad ones with a reason.

    With ``features.images``, each episode's frames are decoded (once, into ``frame_cache``
    when given) and every frame is checked: one bad frame skips the episode, by name.
    ``bounds``: see :func:`episode_arrays`. ``stop`` is asked before each episode: when it
    says so, the rest are not read (the caller knows why: a preemption)."""
    from trainer_core.rlds import EpisodeError, read_episode

    parts: list[EpisodeArrays] = []
    used: list[Path] = []
    hashes: list[str] = []
    skipped: dict[str, str] = {}
    infos: list[EpisodeInfo] = []
    n_oob = 0
    for path in paths:
        if stop is not None and stop():
            break
        try:
            episode = read_episode(Path(path), limits)
            part = episode_arrays(episode, features, proximity_path, bounds)
            digest = content_hash(path)
            if features.images:
                from trainer_core.frame_cache import cached_frames
                from trainer_core.frames import episode_frames

                spec = features.images[0]
                decode_all = functools.partial(episode_frames, episode, spec)
                part.frames = cached_frames(frame_cache, digest, spec, len(part), decode_all)
        except (EpisodeError, FeatureError, OSError) as exc:
            skipped[str(path)] = str(exc)
            n_oob += isinstance(exc, OutOfBoundsError)
            continue
        parts.append(part)
        hashes.append(digest)
        used.append(Path(path))
        infos.append(EpisodeInfo(episode.episode_id, episode_slices(episode.metadata)))
    arrays = concat(parts, len(features.observation_names), len(features.action_names))
    return Split(arrays, used, hashes, skipped, infos, n_oob)
