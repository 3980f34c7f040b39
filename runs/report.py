"""`longrope report`: one Markdown page and two PNGs per stage, read from a run directory.

For each stage: the best value against the evaluations (Optuna's matplotlib optimization
history of the stage's study), the best λ curve against the curves of the methods that seeded it
(spaces/methods.py), n̂ and mscale; then a held-out table from the best records. Read-only: the
run's lock is not taken, so a running search can be reported on. Every file is written by temp
file + rename (spaces.files.atomic_write_bytes), report.md last, so an interrupted report leaves each
file whole and report.md links only plots that exist.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING

from longrope.spaces import METHODS, REFERENCE_METHODS, RescaleFactors, RopeGeometry, UserError, method
from longrope.spaces.files import atomic_write_bytes, atomic_write_text, make_folder, remove_stale_temps

from .best import BestRecord
from .rundir import Run
from .vocab import BRED_FROM, REQUEUED, STAGE

if TYPE_CHECKING:
    import optuna

REPORT_DIR, PAGE = "report", "report.md"
METRIC = {"ppl": "perplexity (search documents)",
          "needle": "needle perplexity (answer tokens, search documents)"}


@dataclass
class StageView:
    """What the report shows of one stage: its study's counts and values, and its best record."""

    name: str
    kind: str
    length: int
    budget: int
    critical_dim: int | None
    study: optuna.Study
    values: list[float]  # the complete, finite values in trial order
    pruned: int
    failed: int
    record: BestRecord | None
    notes: list[str] = field(default_factory=list)

    @property
    def evals(self) -> int:
        return len(self.values) + self.pruned + self.failed

    @property
    def best(self) -> float | None:
        """The best value: the best record's (what `export` exports), else the study's minimum."""
        if self.record is not None:
            return self.record.search_ppl
        return min(self.values) if self.values else None


def stage_views(run: Run) -> list[StageView]:
    """The run's stages, long ones first then short, each by length (the order of `status`)."""
    from optuna.trial import TrialState

    out = []
    for study in run.studies():
        info = study.user_attrs.get(STAGE, {})
        kind, length = info.get("kind", "long"), info.get("length", 0)
        trials = [t for t in study.get_trials(deepcopy=False) if not t.system_attrs.get(REQUEUED)]
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                  and math.isfinite(t.value)]
        path = run.best_path(kind, length)
        record = BestRecord.load(path) if path.is_file() else None
        crit = info.get("critical_dim")
        out.append(StageView(study.study_name, kind, length, info.get("budget", 0),
                             crit if isinstance(crit, int) else None, study, values,
                             sum(t.state == TrialState.PRUNED for t in trials),
                             sum(t.state == TrialState.FAIL for t in trials), record))
    order = {"long": 0, "short": 1}
    return sorted(out, key=lambda s: (order.get(s.kind, 2), s.length))


def seed_curves(run: Run, stage: StageView, previous: BestRecord | None) -> dict[str, tuple[float, ...]]:
    """The λ of what started the stage's population (stages.initial_factors): for a long stage the
    previous long stage's best, search.methods and the reference methods; for a short one λ = 1."""
    rec = stage.record
    g = RopeGeometry(rec.rotary_dim, rec.base, rec.original_length)
    if stage.kind == "short":
        return {"none": method("none", g, stage.length).lambdas}
    out: dict[str, tuple[float, ...]] = {}
    bred = stage.study.user_attrs.get(BRED_FROM, ...)  # the best as it was when the stage began
    if previous is not None and bred is not None:  # absent (runs made before it): the best now
        lambdas = previous.lambdas if bred is ... else tuple(bred["lambdas"])
        out[f"best of {previous.kind}-{previous.target_length}"] = lambdas
    names = list(run.config().get("search", {}).get("methods", []))
    for name in [*names, *(m for m in REFERENCE_METHODS if m not in names)]:
        if name in METHODS:
            out[name] = method(name, g, stage.length).lambdas
        elif name.endswith(".json") and Path(name).is_file():
            try:
                f = RescaleFactors.load(name)
            except UserError:
                continue
            if len(f.lambdas) == g.n_freqs:
                out[Path(name).name] = f.lambdas
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _log_y(ax, values: list[float], ratio: float) -> None:
    """A log y axis, labelled 1, 2, 5, 10, ... (1, 10, 100, ... past three decades), when the
    values span more than `ratio`. Labels are `%g` numbers: a ScalarFormatter's shared offset
    turned 10 .. 1e7 into 0.000 .. 5.000 × 1e7."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if min(values) > 0 and max(values) / min(values) > ratio:
        ax.set_yscale("log")
        wide = max(values) / min(values) > 1e3
        ax.yaxis.set_major_locator(LogLocator(subs=(1,) if wide else (1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_history(stage: StageView, metric: str) -> bytes:
    """Optuna's optimization history (each complete evaluation and the best so far) of the stage."""
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(stage.study, target_name=metric)
    ax.figure.set_size_inches(8, 4.5)
    ax.set_title(f"{stage.name}: best {metric.split(' (')[0]} against evaluations")
    ax.set_xlabel("trial number (complete evaluations drawn; pruned and failed ones not)")
    ax.legend(loc="upper right", fontsize=8)
    _log_y(ax, stage.values, 10)
    try:
        return _png(ax.figure)
    finally:
        plt.close(ax.figure)


def plot_lambda(stage: StageView, seeds: dict[str, tuple[float, ...]]) -> bytes:
    import matplotlib.pyplot as plt

    rec = stage.record
    fig, ax = plt.subplots(figsize=(7, 4.2), tight_layout=True)
    try:
        for name, lam in seeds.items():
            ax.plot(range(len(lam)), lam, "--", lw=1.2, alpha=0.8, label=name)
        ax.plot(range(len(rec.lambdas)), rec.lambdas, "k.-", lw=2, label=f"best (trial {rec.trial})")
        if stage.critical_dim is not None:
            ax.axvline(stage.critical_dim, color="grey", ls=":", label=f"critical dim {stage.critical_dim}")
        _log_y(ax, [x for lam in (*seeds.values(), rec.lambdas) for x in lam], 8)
        ax.set_xlabel("frequency pair i (0 = highest frequency)")
        ax.set_ylabel("λ_i (stretch of frequency i)")
        ax.set_title(f"{stage.name}: λ of the best (n̂ {rec.n_hat}, mscale {rec.mscale:.4f}) and the seeds")
        ax.legend(fontsize=8)
        return _png(fig)
    finally:
        plt.close(fig)


def _num(x: float | None, spec: str = ".6g") -> str:
    return "-" if x is None else format(x, spec)


def _lambda_table(stage: StageView, seeds: dict[str, tuple[float, ...]]) -> list[str]:
    rec = stage.record
    names = list(seeds)
    lines = ["| i | best | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for i, lam in enumerate(rec.lambdas):
        lines.append(f"| {i} | {lam:.6g} | " + " | ".join(f"{seeds[n][i]:.4g}" for n in names) + " |")
    if stage.kind == "long":  # what a reader compares the best with: the seeds as computed, not as seeded
        lines += ["", "The seeds' columns are the methods' own λ; generation 0 holds each snapped to the "
                  "λ grid and clipped into the stage's bounds ([1, λmax], λmax = 1.25 s by default), so "
                  "a value above λmax (dynamic_ntk's lowest frequencies) was seeded at λmax."]
    return lines


def eval_data_flags(cfg: dict) -> str:
    """`longrope eval` flags that pick the run's own held-out documents: its count, split seed and
    source options, and with streaming the number of documents read, which the split is drawn
    over (eval's default, 2 x --samples, can deal a run's search documents into held-out)."""
    d, tok = cfg.get("data", {}), cfg.get("model", {}).get("tokenizer")
    flags = [f"--samples {d['heldout_docs']}" if d.get("heldout_docs") else "",
             f"--split-seed {d['split_seed']}" if d.get("split_seed") else "",
             f"--text-column {quote(d['text_column'])}" if d.get("text_column", "text") != "text" else "",
             f"--data-split {quote(d['split'])}" if d.get("split", "train") != "train" else "",
             f"--data-config {quote(d['config'])}" if d.get("config") else "",
             "--per-line" if d.get("per_line") else "", f"--tokenizer {quote(tok)}" if tok else ""]
    o = cfg.get("objective", {})
    if o.get("kind", "ppl") == "needle":  # the score the search ranked by, on the run's own samples
        flags.append("--task needle" + (f" --depths {o['depths']}" if o.get("depths", 10) != 10 else "")
                     + f" --per-depth {o.get('per_depth', 1)}"
                     + (f" --key-seed {o['seed']}" if o.get("seed") else ""))
    if d.get("streaming"):
        count = d.get("stream_docs") or 2 * max(d.get("search_docs", 5), d.get("heldout_docs", 5))
        flags.append(f"--streaming --stream-docs {count}")
    return "".join(f"{f} " for f in flags if f)


def _heldout(run: Run, views: list[StageView]) -> list[str]:
    lines = ["## Held-out", ""]
    scored = [v for v in views if v.record is not None and v.record.heldout_ppl is not None]
    if scored:
        lines += ["The best of each stage scored on the held-out documents (the run's own "
                  "`data.heldout_docs`) once the stage ended.", "",
                  "| stage | search ppl | held-out ppl | trial |", "|---|---|---|---|"]
        lines += [f"| {v.name} | {_num(v.record.search_ppl)} | {_num(v.record.heldout_ppl)} | "
                  f"{v.record.trial} |" for v in scored]
    else:
        lines.append("No held-out scores in this run yet (a stage's best is scored on the held-out "
                     "documents when the stage ends, if `data.heldout_docs` > 0).")
    cfg = run.config()
    model, data = cfg.get("model", {}).get("path", "MODEL"), cfg.get("data", {}).get("path", "DATA")
    top = max((v for v in views if v.kind == "long" and v.record is not None), key=lambda v: v.length,
              default=None)
    if top is not None:
        model = top.record.model or model  # the model it searched: a fine-tune's, when one ran before it
        lines += ["", "To compare the longest stage's best with the closed-form methods on the held-out "
                  "documents (`eval` prints the table; nothing of it is stored in the run):", "", "```",
                  f"longrope export {quote(str(run.path))}",
                  f"longrope eval --model {quote(str(model))} --data {quote(str(data))} "
                  f"--lengths {top.length} --split heldout "
                  f"{eval_data_flags(cfg)}--methods "
                  + quote(f"none,pi,ntk,yarn,{run.path}/export/longrope-{top.length}.json"),
                  "```"]
    tunes = sorted((run.path / "finetune").glob("ft-*/training.json"),  # by length: ft-64 before ft-128
                   key=lambda p: (len(p.parent.name), p.parent.name))
    if tunes:
        import json

        lines += ["", "Fine-tunes (training loss, not a held-out score):", "",
                  "| fine-tune | steps | final loss (mean of the last 10 steps at L, short ones aside) "
                  "| model |",
                  "|---|---|---|---|"]
        for p in tunes:
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            lines.append(f"| ft-{d.get('length')} | {d.get('steps')} | {_num(d.get('final_loss'), '.4f')} | "
                         f"{run.model_dir(d.get('length'))} |")
    return lines


def render_page(run: Run, views: list[StageView], plots: dict[str, dict[str, str]],
                seeds: dict[str, dict[str, tuple[float, ...]]], metric: str) -> str:
    cfg = run.config()
    se, ft = cfg.get("search", {}), (cfg.get("finetune") or {}).get("after")
    lines = [f"# LongRoPE search report: {run.path.name}", "",
             f"Run `{run.path}`, model `{cfg.get('model', {}).get('path')}`"
             f"{' (stages after a fine-tune search its merged model, models/ft-<L>)' if ft else ''}, data "
             f"`{cfg.get('data', {}).get('path')}`, sampler {se.get('sampler')}, seed {se.get('seed')}. "
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} from the journal and best/ (a run still "
             "running is reported as it stands). Values are " + metric + "; lower is better.", "",
             "## Stages", "",
             "| stage | evaluations | pruned | failed | best | n̂ | mscale | trial |",
             "|---|---|---|---|---|---|---|---|"]
    if not views:
        lines.append("| (no stage started yet) | | | | | | | |")
    for v in views:
        r = v.record
        lines.append(f"| {v.name} | {v.evals}/{v.budget} | {v.pruned} | {v.failed} | {_num(v.best)} | "
                     f"{'-' if r is None else r.n_hat} | {'-' if r is None else format(r.mscale, '.6g')} | "
                     f"{'-' if r is None else r.trial} |")
    for v in views:
        lines += ["", f"## {v.name}", ""]
        for note in v.notes:
            lines += [note, ""]
        if "history" in plots.get(v.name, {}):
            lines += [f"![{v.name}: best against evaluations]({plots[v.name]['history']})", ""]
        if v.record is not None:
            r = v.record
            lines += [f"Best: {_num(r.search_ppl)} (trial {r.trial}, the best of {r.evals} evaluations), "
                      f"n̂ = {r.n_hat}, mscale = {r.mscale:.6g}, {len(r.lambdas)} frequency pairs.", ""]
            if "lambda" in plots.get(v.name, {}):
                lines += [f"![{v.name}: λ of the best and the seeds]({plots[v.name]['lambda']})", ""]
            lines += _lambda_table(v, seeds[v.name])
    lines += ["", *_heldout(run, views)]
    return "\n".join(lines) + "\n"


def write_report(run: Run, out: str | Path | None = None) -> Path:
    """Write report.md and the stages' PNGs into `out` (default RUN/report/); returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(out) if out is not None else run.path / REPORT_DIR
    make_folder(folder, "report folder")
    remove_stale_temps(folder, f".{PAGE}.", ".stage-")  # left by a report killed mid-write
    metric = METRIC.get(run.config().get("objective", {}).get("kind", "ppl"), "objective value")
    views = stage_views(run)
    plots: dict[str, dict[str, str]] = {}
    seeds: dict[str, dict[str, tuple[float, ...]]] = {}
    previous: BestRecord | None = None
    with matplotlib.rc_context():  # Optuna's plot sets the ggplot style globally: keep it in here
        import matplotlib.pyplot as plt

        plt.style.use("ggplot")  # and draw every plot in it
        for v in views:
            plots[v.name] = {}
            if not v.values:
                v.notes.append(f"No complete evaluation yet ({v.evals} finished of {v.budget}): no plots.")
            else:
                name = f"stage-{v.name}-history.png"
                atomic_write_bytes(folder / name, plot_history(v, metric))
                plots[v.name]["history"] = name
            if v.record is None:
                if v.values:
                    v.notes.append("No best record yet (best/ is written just after each new best).")
                continue
            seeds[v.name] = seed_curves(run, v, previous)
            name = f"stage-{v.name}-lambda.png"
            atomic_write_bytes(folder / name, plot_lambda(v, seeds[v.name]))
            plots[v.name]["lambda"] = name
            if v.kind == "long":
                previous = v.record
    page = folder / PAGE
    atomic_write_text(page, render_page(run, views, plots, seeds, metric))
    return page


def report_path(run: Run) -> Path | None:
    """The default report's page, if one was written."""
    p = run.path / REPORT_DIR / PAGE
    return p if p.is_file() else None
