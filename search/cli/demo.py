"""`longrope demo`: the whole product in one command on the embedded model and data.

Searches builtin:tiny-sotu (L0 = 128) at 4x and 8x on builtin:sotu, scores
none / PI / NTK / YaRN / searched on held-out documents at the final target,
prints the table, exports the factors and plots perplexity against context
length per method.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
from importlib.resources import files
from pathlib import Path

from longrope.spaces import REFERENCE_METHODS, UserError

COMPARED = ("none", *REFERENCE_METHODS)  # the rows beside the searched factors


def demo_config():
    from longrope.search import config

    return config.from_dict(tomllib.loads(files("longrope.search.cli").joinpath("demo.toml").read_text()))


def run_demo(run_dir: str | None, as_json: bool, max_evals: int | None = None) -> dict:
    from longrope.objectives.methods import method_factors
    from longrope.runs import Run
    from longrope.runs.export import export
    from longrope.runs.status import evaluations
    from longrope.search.driver import run_search

    cfg = demo_config()
    if max_evals is not None:
        if max_evals < 1:
            raise UserError(f"--max-evals must be >= 1, got {max_evals}")
        cfg.search.max_evals = max_evals
    run_dir = run_dir or tempfile.mkdtemp(prefix="longrope-demo-")
    run_search(cfg, run_dir, resume=False, progress=not as_json)  # a run is resumed; see Run.check_new
    run = Run.open(run_dir)
    target = cfg.space.targets[-1]
    searched = run.best("long", target).factors

    from longrope.objectives.specs import ObjectiveSpec
    from longrope.objectives.workers import Evaluator

    ev = Evaluator(ObjectiveSpec.from_config(cfg))
    g = ev.geometry
    methods = {m: method_factors(m, g, target) for m in COMPARED}
    methods["searched"] = searched
    lengths = sorted({g.original_length, *cfg.space.targets, 2 * g.original_length})
    table: dict[str, dict[int, float]] = {m: {} for m in methods}
    from tqdm import tqdm

    # the comparison takes minutes on a laptop's CPU (more than the search on a shared one)
    bar = tqdm(total=len(methods) * (len(lengths) + 1), desc="held-out", unit="run", disable=as_json,
               file=sys.stderr, dynamic_ncols=True)
    for m, f in methods.items():
        for n in lengths:
            bar.set_postfix_str(f"{m} @ {n}")
            table[m][n] = ev.evaluate(f, n, pool="heldout", kind="ppl").ppl
            bar.update()
    needle = {}  # retrieval at the target: the same needle samples for every method
    for m, f in methods.items():
        bar.set_postfix_str(f"{m} @ {target}, pass keys")
        needle[m] = ev.evaluate(f, target, pool="heldout", kind="needle")
        bar.update()
    bar.close()
    path, warnings = export(run)
    plot = run.path / "export" / "demo-ppl.png"
    plot_table(table, g.original_length, plot)
    result = {"target": target, "evals": evaluations(run), "objective": cfg.objective.kind,
              "heldout": {m: table[m][target] for m in table},
              "needle": {m: e.ppl for m, e in needle.items()},
              "passkey": {m: e.extra["passkey"] for m, e in needle.items()},
              "needle_samples": len(needle["searched"].doc_nll),
              "export": str(path), "plot": str(plot), "run_dir": str(run.path)}
    for w in warnings:  # on stderr either way: --json keeps stdout one JSON document
        print(f"warning: {w}", file=sys.stderr)
    print(json.dumps(result) if as_json else render(table, g.original_length, target, result))
    return result


def render(table, L0: int, target: int, result: dict) -> str:
    lengths = sorted(next(iter(table.values())))
    head = "| method | " + " | ".join(f"{n} ({n / L0:g}x)" for n in lengths) + " |"
    lines = [f"held-out perplexity, builtin:tiny-sotu (trained at {L0} tokens), factors for {target}:",
             "", head, "|" + "---|" * (len(lengths) + 1)]
    for m, row in table.items():
        lines.append(f"| {m} | " + " | ".join(f"{row[n]:.2f}" for n in lengths) + " |")
    best_base = min(table[m][target] for m in REFERENCE_METHODS)
    ratio = table["searched"][target] / best_base
    lines += ["", f"at {target} ({target / L0:g}x), held-out: perplexity, needle perplexity (the pass key's "
              f"answer tokens only) and pass-key accuracy over {result['needle_samples']} keys hidden at "
              "depths 0 to 1:", "", "| method | perplexity | needle perplexity | pass-key accuracy |",
              "|---|---|---|---|"]
    lines += [f"| {m} | {table[m][target]:.2f} | {result['needle'][m]:.2f} | {result['passkey'][m]:.2f} |"
              for m in table]
    lines += ["", f"searched on {result['objective']}; perplexity, searched / best of "
              f"{'/'.join(REFERENCE_METHODS)} at {target}: {ratio:.3f}",
              f"evaluations: {result['evals']}; export: {result['export']}; plot: {result['plot']}"]
    return "\n".join(lines)


def plot_table(table, L0: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (ScalarFormatter below)

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, row in table.items():
        xs = sorted(row)
        ax.plot(xs, [row[x] for x in xs], marker="o", label=m, linewidth=2.5 if m == "searched" else 1.2)
    ax.axvline(L0, color="grey", linestyle=":", label=f"L0 = {L0}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(next(iter(table.values()))))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("builtin:tiny-sotu: perplexity vs context length")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_demo(args: argparse.Namespace) -> int:
    """Search builtin:tiny-sotu at 4x and 8x its training length on SOTU addresses, then compare
    none/PI/NTK/YaRN/searched on held-out documents, export the factors and plot ppl vs length."""
    run_demo(args.run_dir, args.json, args.max_evals)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the one-command demo search on the embedded model and data",
                       description=cmd_demo.__doc__)
    d.add_argument("--run-dir", help="where to keep the run (default: a new temporary folder); "
                   "an existing demo run is resumed")
    d.add_argument("--max-evals", type=int, help="cap on evaluations per stage (default: demo.toml)")
    d.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    d.set_defaults(func=cmd_demo)
