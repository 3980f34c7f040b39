"""The bench's report: the goals, the summary figures, the Markdown tables and the plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from longrope.spaces import REFERENCE_METHODS

from .retrieval import SEARCH_KEYS, heldout_words

GOALS = {"overhead": ("<=", 1.02), "memory": ("<=", 0.30), "cpu_efficiency": (">=", 0.40),
         "longrope_vs_reference": ("<=", 0.90), "early_abort_saved": (">=", 0.25),
         "scale_out_synthetic": (">=", 0.90), "scale_out_real": (">=", 0.90),
         "wilcoxon_tokens": ("<=", 0.60), "wilcoxon_heldout": ("<=", 1.01),
         "wilcoxon_tokens_paper": ("<=", 0.60), "wilcoxon_heldout_paper": ("<=", 1.01),
         "longrope_vs_reference_paper": ("<=", 0.90)}


def _spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """median [min, max] (the median alone for one value)."""
    xs = sorted(xs)
    mid = fmt.format(statistics.median(xs))
    return mid + (f" [{fmt.format(xs[0])}, {fmt.format(xs[-1])}]" if len(xs) > 1 else "")


def summarize(r: dict[str, Any]) -> dict[str, float]:
    s = {"overhead": r["speed"]["overhead"], "memory": r["memory"]["memory"],
         "cpu_efficiency": r["speed"]["cpu_efficiency"],
         "early_abort_saved": r["early_abort"]["early_abort_saved"]}
    s.update({k: v for k, v in r["scale"].items() if k.startswith("scale_out")})
    if "pruning" in r:  # issue 15: tokens and held-out ppl of wilcoxon over none, same seeds
        s["wilcoxon_tokens"] = r["pruning"]["wilcoxon"]["tokens_ratio"]
        s["wilcoxon_heldout"] = r["pruning"]["wilcoxon"]["heldout_ratio"]
    if "pruning_paper" in r:  # the same at the paper's search shape and budget
        s["wilcoxon_tokens_paper"] = r["pruning_paper"]["wilcoxon"]["tokens_ratio"]
        s["wilcoxon_heldout_paper"] = r["pruning_paper"]["wilcoxon"]["heldout_ratio"]
    s["longrope_vs_reference"] = _vs_reference(r["quality"])
    if "samplers_paper" in r:  # the same at the paper's search shape and budget (issue 15, 5c)
        s["longrope_vs_reference_paper"] = _vs_reference(r["samplers_paper"])
    return s


def _vs_reference(quality: dict[str, Any]) -> float:
    """The evolution's median held-out ppl over the best of PI/NTK/YaRN, at the longest target."""
    row = quality[max(quality, key=int)]  # keys are strings once read back from bench.json
    best_ref = min(statistics.median(row[m]["heldout"]) for m in REFERENCE_METHODS)
    return statistics.median(row["longrope"]["heldout"]) / best_ref


def render(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']}{' (quick mode: tiny budgets)' if r['quick'] else ''}", "",
             "| figure | measured | goal | met |", "|---|---|---|---|"]
    for k, v in r["summary"].items():
        op, goal = GOALS[k]
        met = v <= goal if op == "<=" else v >= goal
        lines.append(f"| {k} | {v:.3f} | {op} {goal} | {'yes' if met else 'NO'} |")
    evals = f", {r['quality_budget']} evaluations per search" if "quality_budget" in r else ""
    lines += _render_quality(r["quality"], f"median [min, max] over seeds{evals}")
    if "samplers_paper" in r:
        sh = r["samplers_paper_shape"]
        how = (f"the paper's search shape: population {sh['population']}, {sh['parents']} parents, "
               f"{sh['mutants']} + {sh['crossovers']} children, {r['samplers_paper_budget']} evaluations, "
               "seed 0")
        lines += _render_quality(r["samplers_paper"], how)
    c = r["cost"]
    lines += ["", f"cost: {c['model']} at {c['length']} tokens: {c['seconds_per_doc']:.2f} s per document, "
              f"{c['seconds_per_eval']:.1f} s per 5-document evaluation on {c.get('device', 'cpu')}, peak "
              f"memory {c['peak_rss_bytes'] / 2**30:.2f} GiB; paper-default search (1,344 evaluations): "
              + ", ".join(f"{h:.1f} h on {n} worker{'s' if int(n) > 1 else ''}"
                          for n, h in c["full_search_hours"].items())]
    ea = r["early_abort"]
    lines.append(f"early abort: {ea['tokens_with']} vs {ea['tokens_without']} tokens, "
                 f"same best: {ea['same_best']}; {ea.get('above_cutoff', float('nan')):.0%} of candidates "
                 "scored above the running cut-off (the parents-th best before them), at most "
                 f"{ea.get('exact_ceiling', float('nan')):.1%} could be saved by any exact abort")
    for key in ("pruning", "pruning_paper"):
        if key in r:
            lines += _render_pruning(r[key])
    heldout = heldout_words(r.get("search_keys", SEARCH_KEYS))  # the held-out set of the sections below
    if "retrieval" in r:
        from .retrieval import render as render_retrieval

        lines += render_retrieval(r["retrieval"], r.get("retrieval_budget"), heldout)
    if "spaces" in r:
        from .spaces import render as render_spaces

        lines += render_spaces(r["spaces"], r.get("spaces_budget"), heldout)
    if "finetune" in r:
        from .finetune import render as render_finetune

        lines += render_finetune(r["finetune"], r.get("finetune_budget"), r.get("finetune_steps"),
                                 r.get("s2_time"), heldout)
    if "short_mix" in r:
        from .finetune import render_sweep

        lines += render_sweep(r["short_mix"], r.get("short_mix_budget"), r.get("short_mix_steps"), heldout)
    if "s2_time" in r:
        from .finetune import render_s2

        lines += render_s2(r["s2_time"])
    if "compare" in r:
        from .compare import render as render_compare

        lines += render_compare(r["compare"], r.get("compare_budget"), heldout)
    sc = r["scale"]
    lines.append("scale-out end to end (with worker start-up and model load): " + ", ".join(
        f"{k[len('end_to_end_'):]} {v:.3f}" for k, v in sc.items() if k.startswith("end_to_end_")))
    return "\n".join(lines)


def _render_quality(quality: dict[str, Any], how: str) -> list[str]:
    lines = []
    for target, row in quality.items():
        lines += ["", f"held-out perplexity at {target} ({how}):", "",
                  "| method | held-out | search set |", "|---|---|---|"]
        for m, v in row.items():
            searched = _spread(v["search"]) if "search" in v else "-"
            lines.append(f"| {m} | {_spread(v['heldout'])} | {searched} |")
    return lines


def _render_pruning(pr: dict[str, Any]) -> list[str]:
    from longrope.objectives.pruning import PRUNERS

    shape = (f"population {pr['population']}, {pr['parents']} parents, {pr['mutants']} + {pr['crossovers']} "
             "children, " if "population" in pr else "")  # bench.json files from before lack the shape
    lines = ["", f"pruners at 1024 ({shape}{pr['budget']} evaluations, {pr['search_docs']} search documents, "
             f"seeds {pr['seeds']}; ratios against none, same seed, mean over seeds):", "",
             "| pruner | tokens scored | tokens / none | held-out ppl | held-out / none | pruned |",
             "|---|---|---|---|---|---|"]
    for p in pr.get("pruners", PRUNERS):
        v = pr[p]
        lines.append(f"| {p} | {statistics.mean(v['tokens']):,.0f} | {v['tokens_ratio']:.3f} | "
                     f"{_spread(v['heldout'])} | {v['heldout_ratio']:.4f} | {_spread(v['pruned'], '{:g}')} |")
    if "cutoff_ceiling" in pr:  # bench.json files from before the ceiling was measured lack it
        lines += ["", "ceiling for any rule against the parent cut-off (pruner none's candidates, "
                  "generation 0 included): "
                  f"{_spread(pr['candidates_above_cutoff'], '{:.0%}')} of candidates finished above it; "
                  f"stopping each of them after one document would score "
                  f"{_spread(pr['cutoff_ceiling'], '{:.3f}')}x the tokens"]
    return lines


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(r["quality"])
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        row = r["quality"][target]
        names = list(row)
        meds = [statistics.median(row[m]["heldout"]) for m in names]
        ax.bar(names, meds, color=["#888"] * 5 + ["#c33", "#36c", "#3a3", "#a6a"][: len(names) - 5])
        ax.set_yscale("log")
        ax.set_title(f"held-out ppl at {target}")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite_figures(r: dict[str, Any]) -> bool:
    return all(math.isfinite(v) for v in r["summary"].values())
