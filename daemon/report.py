"""``continuon-trainer report --out DIR``: PNG plots and one self-contained HTML page.

A CLI verb, never imported by the daemon: it may import torch (to re-score releases) and
matplotlib (the optional ``report`` extra, drawn with the Agg backend, no display needed).

What it shows:

* loss curves of every job that logged losses (``state/runs/<run>/result.json``);
* every intact release, and the base policy, re-scored on ONE common held-out set (the ledger's
  valid eval-split episodes as they are now), so their errors and safety rates are comparable;
  the numbers a release was promoted with were measured on its own job's held-out set;
* decisions over time (the ledger's jobs: promoted, rejected, failed, preempted) and, where the
  manifest's generation ran past the newest release's, that a rollback happened.

The HTML embeds the PNGs as data URIs and carries its own styles: one file to copy off a robot.
"""

from __future__ import annotations

import base64
import html
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import TrainerConfig

VERDICT_COLORS = {
    "promoted": "tab:green",
    "rejected": "tab:orange",
    "failed": "tab:red",
    "preempted": "tab:gray",
}


@dataclass
class JobView:
    """One job as the report draws it."""

    run_id: str
    started_at: float
    status: str | None
    decision: str | None
    release_id: str | None
    losses: list[float] = field(default_factory=list)
    log_every: int = 1


@dataclass
class Rescore:
    """One policy scored on the common held-out set (or why it could not be)."""

    name: str
    generation: int | None
    scores: dict[str, Any] | None = None
    problem: str | None = None


@dataclass
class ReportData:
    """Everything the page shows."""

    jobs: list[JobView]
    rescored: list[Rescore]
    eval_episodes: int
    eval_steps: int
    eval_skipped: dict[str, str]
    current: str | None
    manifest_generation: int | None
    notes: list[str] = field(default_factory=list)


# --- collect ---------------------------------------------------------------------------------


def collect_jobs(cfg: TrainerConfig, ledger: Any) -> list[JobView]:
    """The ledger's jobs, oldest first, with the losses their result.json logged."""
    out = []
    for row in reversed(ledger.last_jobs(limit=10_000)):
        view = JobView(row.run_id, row.started_at, row.status, row.decision, row.release_id)
        try:
            result = json.loads((cfg.runs_dir / row.run_id / "result.json").read_text())
            view.losses = [float(v) for v in result.get("losses") or []]
        except (OSError, ValueError, TypeError):
            pass
        view.log_every = cfg.job.log_every_steps
        out.append(view)
    return out


def _scores(policy: Any, data: Any, base: Any, cfg: TrainerConfig) -> dict[str, Any]:
    import torch

    from safety.head import SafetyHead
    from trainer_core.evaluate import predict, score
    from trainer_core.features import bounded_safety

    pred = predict(policy, data.obs, torch.device("cpu"), lambda: False, data.frames)
    names = base.normalizer.act_names
    scores = score(
        pred,
        data,
        names,
        base.normalizer.act_std,
        SafetyHead(bounded_safety(cfg.features, cfg.safety)),
    )
    return scores.model_dump()


def rescore_releases(cfg: TrainerConfig, ledger: Any, store: Any) -> tuple[list[Rescore], Any]:
    """The base and every intact release scored on the ledger's current held-out episodes."""
    from trainer_core.base import BaseError, load_base
    from trainer_core.evaluate import Policy
    from trainer_core.features import read_split
    from trainer_core.lora import LoraError, load_adapter

    paths = [Path(r.path) for r in ledger.valid_episodes("eval")]
    split = read_split(paths, cfg.features, cfg.ingest, cfg.safety.proximity_path)
    out: list[Rescore] = []
    try:
        base = load_base(cfg.policy.base_path, cfg.policy, cfg.features)
    except BaseError as exc:
        return [Rescore("base", 0, problem=str(exc))], split
    if len(split.arrays) == 0:
        return [Rescore("base", 0, problem="no usable held-out episodes")], split
    out.append(
        Rescore("base", 0, _scores(Policy(base.model, base.normalizer), split.arrays, base, cfg))
    )
    intact, damaged = store.inventory()
    for release in intact:
        row = Rescore(release.id, release.generation)
        if release.legacy:
            row.problem = f"legacy {release.format} adapter: not re-scored"
        else:
            try:
                fresh = load_base(cfg.policy.base_path, cfg.policy, cfg.features).model
                model, norm, _card = load_adapter(fresh, release.path, base.sha256)
                row.scores = _scores(Policy(model, norm), split.arrays, base, cfg)
            except (BaseError, LoraError, OSError, ValueError) as exc:
                row.problem = str(exc)
        out.append(row)
    out.extend(Rescore(rid, None, problem=f"damaged: {why}") for rid, why in damaged)
    return out, split


def collect(cfg: TrainerConfig) -> ReportData:
    """Read the ledger, the runs and the store; re-score the releases."""
    from daemon.ledger import Ledger
    from daemon.store import AdapterStore

    if not cfg.ledger_path.exists():
        raise FileNotFoundError(
            2, "no ledger (has the service run at this root?)", str(cfg.ledger_path)
        )
    ledger = Ledger.open(cfg.ledger_path)
    try:
        store = AdapterStore(cfg.adapters_dir, cfg.paths.manifest)
        jobs = collect_jobs(cfg, ledger)
        rescored, split = rescore_releases(cfg, ledger, store)
    finally:
        ledger.close()
    current = store.current()
    manifest = store.read_manifest() or {}
    generation = manifest.get("generation")
    data = ReportData(
        jobs=jobs,
        rescored=rescored,
        eval_episodes=len(split.paths),
        eval_steps=len(split.arrays),
        eval_skipped=dict(split.skipped),
        current=current.id if current else None,
        manifest_generation=generation if isinstance(generation, int) else None,
    )
    newest = max((r.generation or 0 for r in rescored), default=0)
    if data.manifest_generation is not None and data.manifest_generation > newest:
        data.notes.append(
            f"manifest generation {data.manifest_generation} is past the newest release's "
            f"({newest}): at least one rollback happened (the journal has when: "
            "journalctl -u continuon-trainer CT_EVENT=rollback)"
        )
    return data


# --- draw ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(data: ReportData, path: Path) -> None:
    """Training loss against step, one line per job."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    drawn = 0
    for job in data.jobs:
        if not job.losses:
            continue
        steps = [1] + [job.log_every * i for i in range(1, len(job.losses))]
        ax.plot(steps, job.losses, marker=".", label=f"{job.run_id} ({job.decision or job.status})")
        drawn += 1
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no job logged losses yet", ha="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="training loss (normalised MSE)", title="Loss per job")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_releases(data: ReportData, path: Path) -> None:
    """Error and safety rates of the base and each release on the common held-out set."""
    plt = _pyplot()
    rows = [r for r in data.rescored if r.scores]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=100)
    names = [r.name for r in rows]
    x = list(range(len(rows)))
    ax1.bar(x, [r.scores["mse"] for r in rows], color="tab:blue")
    ax1.set(title="Error on one held-out set", ylabel="MSE (base-normalised)")
    width = 0.27
    for i, (key, color) in enumerate(
        (("clamp_rate", "tab:olive"), ("warn_rate", "tab:orange"), ("block_rate", "tab:red"))
    ):
        ax2.bar(
            [v + (i - 1) * width for v in x],
            [r.scores[key] for r in rows],
            width,
            label=key.replace("_", " "),
            color=color,
        )
    ax2.set(title="Safety head rates on the same set", ylabel="fraction of steps")
    top = max([r.scores[k] for r in rows for k in ("clamp_rate", "warn_rate", "block_rate")] or [0])
    ax2.set_ylim(0, max(0.01, top * 1.2))  # all-zero rates sit on the axis, not mid-plot
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    if not rows:
        ax1.text(0.5, 0.5, "nothing could be scored", ha="center", transform=ax1.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_decisions(data: ReportData, path: Path) -> None:
    """Each job's outcome on a time line."""
    from datetime import UTC, datetime, timedelta

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    kinds = list(VERDICT_COLORS)
    for kind in kinds:
        when = [
            datetime.fromtimestamp(j.started_at, UTC)
            for j in data.jobs
            if (j.decision or j.status) == kind
        ]
        ax.scatter(
            when, [kinds.index(kind)] * len(when), color=VERDICT_COLORS[kind], label=kind, s=40
        )
    ax.set_yticks(range(len(kinds)), kinds)
    if data.jobs:  # a few hours of jobs, not matplotlib's default span of years
        first = datetime.fromtimestamp(min(j.started_at for j in data.jobs), UTC)
        last = datetime.fromtimestamp(max(j.started_at for j in data.jobs), UTC)
        pad = max(timedelta(minutes=30), (last - first) * 0.05)
        ax.set_xlim(first - pad, last + pad)
    ax.set(title="Decisions over time (UTC)", xlabel="job start")
    if not data.jobs:
        ax.text(0.5, 0.5, "no jobs yet", ha="center", transform=ax.transAxes)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- page ------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
font-size:13px;text-align:right}th{background:#f0f0f0}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}.note{color:#555;font-size:13px}
"""


def _fmt(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def _utc(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(data: ReportData, pngs: dict[str, Path]) -> str:
    """The HTML page: no external reference of any kind."""
    e = html.escape
    rows = []
    for r in data.rescored:
        s = r.scores or {}
        mark = " (current)" if r.name == data.current else ""
        rows.append(
            f"<tr><td class=l>{e(r.name)}{mark}</td><td>{_fmt(r.generation, 'd')}</td>"
            f"<td>{_fmt(s.get('mse'))}</td><td>{_fmt(s.get('mse_raw'))}</td>"
            f"<td>{_fmt(s.get('clamp_rate'), '.2%')}</td><td>{_fmt(s.get('warn_rate'), '.2%')}</td>"
            f"<td>{_fmt(s.get('block_rate'), '.2%')}</td><td class=l>{e(r.problem or '')}</td></tr>"
        )
    jobs = [
        f"<tr><td class=l>{e(j.run_id)}</td><td class=l>{e(_utc(j.started_at))}</td>"
        f"<td class=l>{e(j.status or '-')}</td><td class=l>{e(j.decision or '-')}</td>"
        f"<td class=l>{e(j.release_id or '-')}</td><td>{len(j.losses)}</td></tr>"
        for j in reversed(data.jobs)
    ]
    skipped = "".join(f"<li>{e(p)}: {e(w)}</li>" for p, w in data.eval_skipped.items())
    notes = "".join(f"<p class=note>{e(n)}</p>" for n in data.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>continuon-trainer report</title>
<style>{STYLE}</style></head><body>
<h1>continuon-trainer report</h1>
<p class=note>Written {e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))}.
Current release: <b>{e(data.current or "none (base policy only)")}</b>.</p>
<h2>Training loss</h2>{_img(pngs["loss"], "loss per job")}
<h2>Releases on one held-out set</h2>
<p class=note>Every release and the base re-scored now on the same {data.eval_episodes} held-out
episodes ({data.eval_steps} steps), so the rows compare. Errors are normalised by the base's
action variance.</p>
{_img(pngs["releases"], "releases compared")}
<table><tr><th class=l>policy</th><th>gen.</th><th>MSE</th><th>raw MSE</th><th>clamp</th>
<th>warn</th><th>block</th><th class=l>note</th></tr>{"".join(rows)}</table>
{f"<p class=note>held-out episodes the features cannot use:</p><ul>{skipped}</ul>" * bool(skipped)}
<h2>Decisions and rollbacks</h2>{_img(pngs["decisions"], "decisions over time")}{notes}
<table><tr><th class=l>job</th><th class=l>started (UTC)</th><th class=l>status</th>
<th class=l>decision</th><th class=l>release</th><th>losses logged</th></tr>{"".join(jobs)}</table>
</body></html>
"""


def write_report(data: ReportData, out: Path) -> Path:
    """Draw the PNGs and the page into ``out``; return the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = {
        "loss": out / "loss.png",
        "releases": out / "releases.png",
        "decisions": out / "decisions.png",
    }
    plot_losses(data, pngs["loss"])
    plot_releases(data, pngs["releases"])
    plot_decisions(data, pngs["decisions"])
    index = out / "index.html"
    index.write_text(page(data, pngs), encoding="utf-8")
    return index


def report_command(args: Any, cfg: TrainerConfig) -> int:
    """``continuon-trainer report --out DIR``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "report needs matplotlib: pip install 'continuon-trainer[report]'",
            file=sys.stderr,
        )
        return 2
    data = collect(cfg)
    index = write_report(data, Path(args.out))
    print(
        f"wrote {index} ({len(data.jobs)} jobs, {len(data.rescored)} policies re-scored on "
        f"{data.eval_episodes} held-out episodes)"
    )
    return 0
