"""The ``hf-causal-lm`` family: LoRA on a local Hugging Face causal LM, from episodes' language.

Optional extra ``hf`` (transformers). Fully offline: the model and tokenizer load from
``policy.model_dir`` with ``local_files_only`` and ``HF_HUB_OFFLINE=1``; a hub id is refused
with a message saying to copy the model onto the robot. Training pairs come from each step that
recorded planner/dialog/tool-call text (``policy.language``): the prompt is the instruction
plus an observation summary, the target that text; the loss is on target tokens only.

Shadow evaluation: the held-out token loss of candidate vs baseline (the current release's
adapter, else the bare model), per episode, and the fixed prompt set (``language.prompts``):
a prompt the baseline answered right must still be answered right (exact match after
whitespace normalisation, or a configured ``python:module:function`` scorer). Both land in
:class:`~safety.metrics.EvalMetrics` so the one promotion rule judges them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.config import LanguageConfig, PolicyConfig

PAD_LABEL = -100
SEPARATOR = " ###"


class LMError(ValueError):
    """The language model, its data or its prompt set cannot make a job; the message says why."""


def model_dir(policy: PolicyConfig) -> Path:
    """The local model directory; a hub id or a missing folder is refused with the reason."""
    if policy.model_dir is None:
        raise LMError("policy.model_dir is not set: hf-causal-lm needs a local model directory")
    path = Path(policy.model_dir)
    if not path.is_dir():
        raw = str(policy.model_dir)
        looks_like_hub = raw.count("/") == 1 and not raw.startswith((".", "/"))
        if looks_like_hub or not path.exists():
            raise LMError(
                f"policy.model_dir {raw!r} is not a local directory"
                + (" (it looks like a Hugging Face hub id)" if looks_like_hub else "")
                + ": models load from local files only (HF_HUB_OFFLINE=1); download it on "
                "another machine (save_pretrained) and copy the folder onto the robot"
            )
    if not (path / "config.json").is_file():
        raise LMError(f"policy.model_dir {path} has no config.json")
    return path


def _offline() -> None:
    # Before transformers is imported: nothing may reach for the hub, even by accident.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def model_sha256(folder: Path) -> str:
    """One digest over the model folder's config and weight files (what an adapter is tied to)."""
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.suffix in (".json", ".safetensors") and f.is_file():
            digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def hf_module_names(policy: PolicyConfig) -> list[str]:
    """The Linear module names of the configured model, built on the meta device (no weights)."""
    _offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir(policy), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


# --- data ----------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == [] or value == {}:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def episode_instruction(metadata: dict[str, Any]) -> str | None:
    """The episode-level instruction: ``language_instruction`` or an ``instruction:`` tag."""
    if isinstance(metadata.get("language_instruction"), str):
        return metadata["language_instruction"]
    for tag in metadata.get("tags") or []:
        if isinstance(tag, str) and tag.startswith("instruction:"):
            return tag.removeprefix("instruction:").strip()
    return None


def step_pair(
    step_map: dict[str, Any], fallback: str | None, cfg: LanguageConfig
) -> tuple[str, str] | None:
    """(prompt, target) for one step, or None when it recorded no target text."""
    from trainer_core.features import _MISSING, resolve

    def first(paths: list[str]) -> str | None:
        for path in paths:
            value = resolve(step_map, path)
            text = None if value is _MISSING else _text(value)
            if text is not None:
                return text
        return None

    target = first(cfg.target_paths)
    if target is None:
        return None
    parts = [first(cfg.instruction_paths) or fallback or ""]
    for path in cfg.summary_paths:
        value = resolve(step_map, path)
        if value is not _MISSING:
            parts.append(f"{path.rsplit('.', 1)[-1]}={_text(value)}")
    return " ".join(p for p in parts if p).strip(), target


@dataclass
class LanguageSplit:
    """Per-episode (prompt, target) pairs of a split, with what was skipped and why."""

    episodes: list[list[tuple[str, str]]]
    paths: list[Path]
    hashes: list[str]
    skipped: dict[str, str]


def read_language(paths: list[Path], limits: Any, cfg: LanguageConfig) -> LanguageSplit:
    """Read every episode; keep those with at least one pair, skip the rest with a reason."""
    from trainer_core.rlds import EpisodeError, content_hash, read_episode

    out = LanguageSplit([], [], [], {})
    for path in paths:
        try:
            episode = read_episode(Path(path), limits)
        except (EpisodeError, OSError) as exc:
            out.skipped[str(path)] = str(exc)
            continue
        fallback = episode_instruction(episode.metadata)
        pairs = [p for s in episode.steps if (p := step_pair(s.as_mapping(), fallback, cfg))]
        if not pairs:
            out.skipped[str(path)] = (
                f"episode {episode.episode_id}: no step has language to learn "
                f"({', '.join(cfg.target_paths)})"
            )
            continue
        out.episodes.append(pairs)
        out.paths.append(Path(path))
        out.hashes.append(content_hash(path))
    return out


def encode(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> tuple[Any, Any]:
    """Right-padded ``(ids, labels)`` int64 tensors; labels are -100 except on target tokens.

    Right padding needs no attention mask under causal attention: no real token attends to a
    pad after it, and pads carry no loss.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows, labels = [], []
    for prompt, target in pairs:
        p = bos + tokenizer(prompt + SEPARATOR, add_special_tokens=False)["input_ids"]
        t = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        t = t + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        ids = (p + t)[:max_length]
        lab = ([PAD_LABEL] * len(p) + t)[:max_length]
        rows.append(ids)
        labels.append(lab)
    width = max(len(r) for r in rows)
    ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
    lab_t = torch.full((len(rows), width), PAD_LABEL, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
        ids_t[i, : len(r)] = torch.tensor(r)
        lab_t[i, : len(lab)] = torch.tensor(lab)
    return ids_t, lab_t


# --- model ---------------------------------------------------------------------------------


def load_lm(policy: PolicyConfig) -> tuple[Any, Any]:
    """(model, tokenizer) from the local directory, frozen, in eval mode."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_dir(policy)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LMError(f"cannot load the model in {folder}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model, tokenizer


def attach_lm_lora(model: Any, lora: Any) -> Any:
    """peft LoRA with ``task_type=CAUSAL_LM`` on the named modules (refused if one matches none)."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    missing = [
        t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)
    ]
    if missing:
        raise LMError(f"lora.target_modules {missing} match no Linear module of the model")
    cfg = PeftLoraConfig(
        task_type="CAUSAL_LM",
        target_modules=list(lora.target_modules),
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias="none",
    )
    return get_peft_model(model, cfg)


def _logits_module(model: Any) -> Any:
    from torch import nn

    class Logits(nn.Module):
        """``ids -> logits`` so the shared training loop drives a causal LM."""

        def __init__(self) -> None:
            super().__init__()
            self.lm = model

        def forward(self, ids: Any) -> Any:
            return self.lm(input_ids=ids).logits

    return Logits()


def shifted_token_loss(logits: Any, labels: Any) -> Any:
    """Mean next-token cross-entropy over target tokens (labels -100 elsewhere)."""
    import torch.nn.functional as F

    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=PAD_LABEL,
    )


def episode_token_losses(
    model: Any, encoded: list[tuple[Any, Any]], device: Any, preempted: Callable[[], bool]
) -> list[tuple[float, int]]:
    """(summed target-token loss, target tokens) per held-out episode: the promotion rule's
    per-episode evidence (sums, so the bootstrap can pool episodes)."""
    import torch
    import torch.nn.functional as F

    from trainer_core.evaluate import EvalInterrupted

    out = []
    model.eval()
    with torch.no_grad():
        for ids, labels in encoded:
            if preempted():
                raise EvalInterrupted
            logits = model(input_ids=ids.to(device)).logits
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1).to(device),
                ignore_index=PAD_LABEL,
                reduction="sum",
            )
            out.append((float(nll), int((labels[:, 1:] != PAD_LABEL).sum())))
    return out


def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, device: Any) -> str:
    """Greedy continuation of ``prompt`` (the training format), stopping at end of sequence."""
    import torch

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + tokenizer(prompt + SEPARATOR, add_special_tokens=False)["input_ids"]
    start = len(ids)
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            ids.append(nxt)
    return tokenizer.decode(ids[start:], skip_special_tokens=True).strip()


def scorer(name: str) -> Callable[[str, str], float]:
    """``exact`` (whitespace-normalised equality, 1.0 or 0.0) or a ``python:mod:fn`` scorer."""
    if name == "exact":
        return lambda out, want: float(" ".join(out.split()) == " ".join(want.split()))
    module, _, attr = name.removeprefix("python:").partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise LMError(f"policy.language.scorer {name!r} cannot be loaded: {exc}") from None
    return fn


def prompt_scores(
    model: Any, tokenizer: Any, cfg: LanguageConfig, device: Any
) -> tuple[list[str], list[float]]:
    """Outputs and scores of the fixed prompt set."""
    score = scorer(cfg.scorer)
    outputs = [greedy(model, tokenizer, c.prompt, cfg.max_new_tokens, device) for c in cfg.prompts]
    return outputs, [float(score(o, c.expected)) for o, c in zip(outputs, cfg.prompts, strict=True)]


def regressions(baseline: list[float], candidate: list[float]) -> list[int]:
    """Indices of prompts the candidate scores worse on than the baseline (pure)."""
    return [i for i, (b, c) in enumerate(zip(baseline, candidate, strict=True)) if c < b]


def lm_metrics(
    base_losses: list[tuple[float, int]],
    cand_losses: list[tuple[float, int]],
    episode_ids: list[str],
    baseline_kind: str,
    base_scores: list[float],
    cand_scores: list[float],
) -> Any:
    """:class:`EvalMetrics` for a language model. The error is the target-token loss: each
    held-out episode is evidence (summed loss over its target tokens, which count as its steps),
    so the rule's paired bootstrap and margins apply unchanged. No numeric actions: no safety
    head rates and no action shift. The fixed prompt set is a family check the rule requires."""
    from safety.metrics import (
        EpisodeEvidence,
        EvalMetrics,
        FamilyCheck,
        PolicyEpisode,
        PolicyScores,
    )

    def side(nll: float) -> PolicyEpisode:
        return PolicyEpisode(sq_err={"token_loss": nll}, clamp=0, warn=0, block=0, max_risk=0.0)

    def scores(losses: list[tuple[float, int]]) -> PolicyScores:
        mean = sum(n for n, _ in losses) / max(sum(t for _, t in losses), 1)
        return PolicyScores(
            mse=mean,
            mse_raw=mean,
            mse_per_name={"token_loss": mean},
            mse_norm_per_name={"token_loss": mean},
            clamp_rate=0.0,
            warn_rate=0.0,
            block_rate=0.0,
            max_risk=0.0,
        )

    episodes = [
        EpisodeEvidence(episode_id=eid, steps=tokens, baseline=side(b), candidate=side(c))
        for eid, (b, tokens), (c, _) in zip(episode_ids, base_losses, cand_losses, strict=True)
    ]
    worse = regressions(base_scores, cand_scores)
    prompt_check = FamilyCheck(
        name="prompt_set",
        ok=not worse,
        text=(
            f"fixed prompts: candidate {sum(cand_scores):g} vs baseline {sum(base_scores):g} "
            f"of {len(cand_scores)}"
            + (f"; regressed on prompts {worse}" if worse else "; none regressed")
        ),
    )
    return EvalMetrics(
        eval_steps=sum(e.steps for e in episodes),
        eval_episodes=len(episodes),
        baseline_kind=baseline_kind,
        baseline=scores(base_losses),
        candidate=scores(cand_losses),
        shift_mean=0.0,
        shift_max=0.0,
        family_checks=[prompt_check],
        episodes=episodes,
    )


# --- the job -------------------------------------------------------------------------------


def run_lm_job(spec: Any, result: Any, t0: float, preempt: Any, emit: Callable) -> None:
    """The hf-causal-lm job body (called by trainer_core.job.run); fills ``result``."""
    from peft import PeftModel

    from trainer_core.device import pick_device
    from trainer_core.evaluate import EvalInterrupted
    from trainer_core.fsio import atomic_write_json
    from trainer_core.job import CANDIDATE_DIR, InvalidJob, PreemptedNow, _publish, _stage_dir
    from trainer_core.train import Budget, LoopState, make_optimizer, peak_rss_mb, train_loop

    job, lang = spec.job, spec.policy.language
    placement = pick_device(job)
    device = placement.device
    emit({"event": "phase", "phase": "load"})
    try:
        train = read_language(spec.train_episodes, spec.ingest, lang)
        result.skipped.update(train.skipped)
        if not train.episodes:
            raise LMError(f"no train episode has language to learn ({len(train.skipped)} skipped)")
        folder = model_dir(spec.policy)
        model, tokenizer = load_lm(spec.policy)
        model = attach_lm_lora(model, spec.lora).to(device)
    except LMError as exc:
        raise InvalidJob(str(exc)) from None
    result.train_episodes = len(train.paths)
    result.episode_hashes = train.hashes
    pairs = [p for ep in train.episodes for p in ep]
    result.train_samples = len(pairs)
    x, y = (t.to(device) for t in encode(tokenizer, pairs, lang.max_length))

    preempt.abort_immediately = False
    if preempt.requested:
        raise PreemptedNow
    emit({"event": "phase", "phase": "train"})
    t_train = time.monotonic()
    result.timings["startup_s"] = round(t_train - t0, 3)
    state, budget = LoopState(), Budget(job, t0, preempt)
    wrapped = _logits_module(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], job)
    stop = train_loop(
        wrapped, optimizer, x, y, job, state, budget, emit, placement.bf16, shifted_token_loss
    )
    result.timings["train_s"] = round(time.monotonic() - t_train, 3)
    result.steps, result.losses = state.step, state.losses
    result.loss_first = state.loss_first
    result.loss_last = state.losses[-1] if state.losses else None
    if stop is not None and stop.kind == "preempted":
        result.status, result.reason = "preempted", stop.reason  # no resume for this family yet
        return
    result.status = "budget" if stop is not None else "done"
    result.reason = stop.reason if stop is not None else ""
    if state.step == 0:
        result.reason += "; no step ran, no candidate"
        return

    emit({"event": "phase", "phase": "eval"})
    t_eval = time.monotonic()
    evals = read_language(spec.eval_episodes, spec.ingest, lang)
    result.skipped.update(evals.skipped)
    if not evals.episodes:
        result.reason = "no held-out episode has language: nothing to judge, no candidate"
        return
    encoded = [encode(tokenizer, ep, lang.max_length) for ep in evals.episodes]
    baseline, _ = load_lm(spec.policy)
    if spec.baseline_adapter is not None:
        baseline = PeftModel.from_pretrained(baseline, str(spec.baseline_adapter))
        baseline_kind = f"adapter:{spec.baseline_id or spec.baseline_adapter.name}"
    else:
        baseline_kind = "base"
    baseline.to(device)
    try:
        cand_losses = episode_token_losses(model, encoded, device, preempt)
        base_losses = episode_token_losses(baseline, encoded, device, preempt)
        cand_out, cand_scores = prompt_scores(model, tokenizer, lang, device)
        _, base_scores = prompt_scores(baseline, tokenizer, lang, device)
    except EvalInterrupted:
        result.status, result.reason = "preempted", "preempted by SIGTERM during evaluation"
        return
    except LMError as exc:
        raise InvalidJob(str(exc)) from None
    metrics = lm_metrics(
        base_losses, cand_losses, [p.name for p in evals.paths], baseline_kind,
        base_scores, cand_scores,
    )  # fmt: skip
    result.metrics = metrics
    result.timings["eval_s"] = round(time.monotonic() - t_eval, 3)

    staging = _stage_dir(spec.run_dir, CANDIDATE_DIR)
    model.save_pretrained(str(staging), safe_serialization=True)
    (staging / "README.md").unlink(missing_ok=True)
    atomic_write_json(staging / "normalizer.json", {"observation": {}, "action": {}})
    atomic_write_json(
        staging / "card.json",
        {
            "kind": "continuon-lora-adapter",
            "run_id": spec.run_id,
            "created_unix": time.time(),
            "family": spec.policy.family,
            "model_name": spec.policy.model_name,
            "model_dir": str(folder),
            "base_sha256": model_sha256(folder),
            "policy": spec.policy.model_dump(mode="json"),
            "lora": spec.lora.model_dump(mode="json"),
            "job": job.model_dump(mode="json"),
            "episode_hashes": train.hashes,
            "train_samples": len(pairs),
            "steps": state.step,
            "status": result.status,
            "loss_first": result.loss_first,
            "loss_last": result.loss_last,
            "metrics": metrics.model_dump(mode="json"),
            "prompt_outputs": cand_out,
            "timings": dict(result.timings),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "device": device.type,
            "dtype": placement.dtype,
        },
    )
    target = spec.run_dir / CANDIDATE_DIR
    _publish(staging, target)
    result.candidate_path = target
