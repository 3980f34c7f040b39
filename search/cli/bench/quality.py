"""Search quality and cost of search: the evolution against the closed-form methods and
the other samplers, the exact early abort's savings, the pruners' quality per token, and Ray
scale-out.

Every search runs in a temporary run folder under ``workdir`` with the same
small config (population 32, 16 parents, 8 + 8 children) on builtin:tiny-sotu.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DOCS = {"search_docs": 5, "heldout_docs": 10}  # per search, and held out where the sections score ppl
QUICK_DOCS = {"search_docs": 2, "heldout_docs": 3}  # --quick checks the tables' shape, not their numbers


@contextmanager
def quick_documents(quick: bool) -> Iterator[None]:
    """The sections' searches and held-out scorers take QUICK_DOCS within (when `quick`)."""
    kept = dict(DOCS)
    if quick:
        DOCS.update(QUICK_DOCS)
    try:
        yield
    finally:
        DOCS.update(kept)


def _search(workdir: Path, name: str, toml: str, progress: bool = False, resume: bool = False):
    """One search through `run_search`, as `longrope search` runs it (`resume`: as `longrope
    resume` does an existing one); end-to-end seconds."""
    from longrope.runs import Run
    from longrope.search import config
    from longrope.search.driver import run_search

    cfg = config.from_dict(tomllib.loads(toml))
    t0 = time.perf_counter()
    run_search(cfg, str(workdir / name), resume=resume, progress=progress)
    seconds = time.perf_counter() - t0
    note(f"  search {name}: {seconds:.0f} s")
    return Run.open(workdir / name), seconds


def note(line: str) -> None:
    """One progress line on stderr: a full bench runs for hours, mostly into a log file, where a
    line per search and per section says how far it is (a tqdm bar there is one long line)."""
    print(f"bench {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _stages(run) -> list[list[Any]]:
    """The trials of each stage (one Optuna study per stage) in the run's journal."""
    return [s.get_trials(deepcopy=False) for s in run.studies()]


def _tokens(run) -> int:
    from longrope.runs import vocab

    return sum(t.user_attrs.get(vocab.TOKENS, 0) for trials in _stages(run) for t in trials)


SEARCH_TOML = """
[model]
path = "builtin:tiny-sotu"
threads = {threads}
[data]
search_docs = {search_docs}
heldout_docs = {heldout_docs}
[space]
targets = [{target}]
{space}
[search]
sampler = "{sampler}"
seed = {seed}
population = {population}
parents = {parents}
mutants = {mutants}
crossovers = {crossovers}
iterations = {iterations}
max_evals = {budget}
pruner = "{pruner}"
{search_keys}
[workers]
backend = "{backend}"
count = {count}
"""


def _toml(**kw) -> str:
    base = dict(threads=2, sampler="longrope", seed=0, iterations=100, budget=300, pruner="exact",
                backend="inprocess", count=1, target=1024, space="",
                population=32, parents=16, mutants=8, crossovers=8, search_keys="", **DOCS)
    base.update(kw)
    return SEARCH_TOML.format(**base)


def search_quality(workdir: Path, targets: list[int], budget: int, seeds: list[int],
                   samplers: list[str], **shape: int) -> dict[str, Any]:
    """Held-out (and search-set) perplexity of each sampler's best, per target and seed, beside
    the closed-form methods on the same held-out documents; `shape` (population, parents, ...)
    replaces the bench's small search shape, e.g. PAPER_SHAPE."""
    from longrope.objectives.methods import method_factors
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.objectives.workers import Evaluator
    from longrope.spaces import REFERENCE_METHODS

    ev = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu", threads=2, **DOCS))
    out: dict[str, Any] = {}
    for target in targets:
        row: dict[str, Any] = {}
        for m in ("none", *REFERENCE_METHODS, "dynamic_ntk"):
            row[m] = {"heldout": [ev.evaluate(method_factors(m, ev.geometry, target), target,
                                              pool="heldout").ppl]}
        for sampler in samplers:
            held, search = [], []
            for s in seeds:
                run, _ = _search(workdir, f"q-{sampler}-{target}-{s}-{budget}",
                                 _toml(sampler=sampler, seed=s, target=target, budget=budget, **shape))
                best = run.best("long", target)
                held.append(best.heldout_ppl)
                search.append(best.search_ppl)
            row[sampler] = {"heldout": held, "search": search}
        out[target] = row
    return out


def exact_ceiling(run, parents: int) -> dict[str, float]:
    """The most any exact abort could save on this run's candidates (all scored in full).

    A candidate with ppl v can only be cut once it is provably worse than the cut-off c, the
    `parents`-th best seen so far (the tightest exact cut). Token NLLs are >= 0, so even
    checking after every token, the scored tokens' NLL must first exceed the whole budget
    N·ln c, i.e. a fraction ln c / ln v of the tokens is always scored:
    saving <= max(0, 1 - ln c / ln v).
    """
    saved, above, count = 0.0, 0, 0
    for trials in _stages(run):  # each stage selects its parents on its own
        seen: list[float] = []
        for t in trials:
            if t.value is None:
                continue
            if len(seen) >= parents:
                cut = sorted(seen)[parents - 1]
                if t.value > cut:
                    above += 1
                    saved += 1 - math.log(cut) / math.log(t.value)
            seen.append(t.value)
        count += len(seen)
    return {"exact_ceiling": saved / count, "above_cutoff": above / count}


def cutoff_ceiling(run, parents: int, after: int = 1) -> dict[str, float]:
    """The fewest tokens any pruning rule that compares against the parent cut-off could score on
    this run's candidates (all scored in full, pruner none), as a fraction of what they scored.

    Generation g's cut-off is its worst parent: the `parents`-th best complete trial of the
    generations before g (the sampler's own rule). Only a child that finished above it can be
    pruned without changing the parents; an oracle that stopped each of them after `after` of
    its n items would still score everything else. tokens >= 1 - Σ_above (n - after) / Σ n.
    """
    from longrope.runs.vocab import DOC_NLL, SLOT

    scored, saved, above, count = 0, 0, 0, 0
    for trials in _stages(run):
        done = [t for t in trials if SLOT in t.system_attrs and t.value is not None]
        for t in done:
            g, n = t.system_attrs[SLOT][0], len(t.user_attrs.get(DOC_NLL, ()))
            scored, count = scored + n, count + 1
            before = sorted(x.value for x in done if x.system_attrs[SLOT][0] < g)
            if g > 0 and len(before) >= parents and t.value > before[parents - 1]:
                above, saved = above + 1, saved + max(n - after, 0)
    return {"cutoff_ceiling": 1 - saved / scored, "candidates_above_cutoff": above / count}


def early_abort(workdir: Path, budget: int) -> dict[str, Any]:
    res, runs = {}, {}
    for flag in ("exact", "none"):
        run, secs = _search(workdir, f"abort-{flag}", _toml(pruner=flag, budget=budget))
        best = run.best("long", 1024)
        res[flag] = (_tokens(run), best.lambdas, best.n_hat, secs)
        runs[flag] = run
    parents = tomllib.loads(runs["none"].config_text())["search"]["parents"]
    return {"tokens_with": res["exact"][0], "tokens_without": res["none"][0],
            "early_abort_saved": 1 - res["exact"][0] / res["none"][0],
            "same_best": res["exact"][1:3] == res["none"][1:3],
            "seconds_with": res["exact"][3], "seconds_without": res["none"][3],
            **exact_ceiling(runs["none"], parents)}


# The paper's search (LongRoPE section 3.2): population 64, 32 parents, 16 mutants + 16
# crossovers per generation, 40 generations after the first: 64 + 40·32 = 1,344 evaluations.
PAPER_SHAPE = {"population": 64, "parents": 32, "mutants": 16, "crossovers": 16, "iterations": 40}
PAPER_BUDGET = 1344


def pruning(workdir: Path, budget: int, seeds: list[int], docs: int = 12, pruners: tuple[str, ...] = (),
            **shape: int) -> dict[str, Any]:
    """Search quality per token for each pruner of objectives/pruning.PRUNERS (issue 15, 5a), or
    of `pruners` (none first): the same search (8x, `docs` search documents, the bench's
    population unless `shape` gives the paper's) with each pruner and seed; tokens scored and the
    best's held-out ppl. Ratios are against pruner none with the same seed, then averaged over
    seeds."""
    from longrope.objectives.pruning import PRUNERS

    pruners = pruners or tuple(PRUNERS)
    rows: dict[str, dict[str, list]] = {p: {"tokens": [], "heldout": [], "pruned": []} for p in pruners}
    ceiling: dict[str, list[float]] = {"cutoff_ceiling": [], "candidates_above_cutoff": []}
    for s in seeds:
        for p in pruners:
            run, _ = _search(workdir, f"prune-{p}-{s}-{budget}", _toml(pruner=p, budget=budget, seed=s,
                                                                          search_docs=docs, **shape))
            if p == "none":
                parents = tomllib.loads(run.config_text())["search"]["parents"]
                for k, v in cutoff_ceiling(run, parents).items():
                    ceiling[k].append(v)
            rows[p]["tokens"].append(_tokens(run))
            rows[p]["heldout"].append(run.best("long", 1024).heldout_ppl)
            rows[p]["pruned"].append(sum(t.state.name == "PRUNED" for tr in _stages(run) for t in tr))
    for p in pruners:
        r = rows[p]
        for key in ("tokens", "heldout"):  # against none with the same seed, then over seeds
            r[f"{key}_ratio"] = statistics.mean(a / b for a, b in zip(r[key], rows["none"][key], strict=True))
    return {"budget": budget, "seeds": seeds, "search_docs": docs, "pruners": list(pruners), **shape, **rows,
            **ceiling}


def plot_pruning(pr: dict[str, Any], path: Path) -> None:
    """Search quality per token (issue 15, 5a): each search's best held-out ppl against the tokens
    it scored, one colour per pruner, seeds joined so a pruner's shift from none is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longrope.objectives.pruning import PRUNERS

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in PRUNERS:
        ax.scatter([t / 1e6 for t in pr[p]["tokens"]], pr[p]["heldout"], label=p, s=40)
    for i, seed in enumerate(pr["seeds"]):
        ax.plot([pr[p]["tokens"][i] / 1e6 for p in PRUNERS], [pr[p]["heldout"][i] for p in PRUNERS],
                color="#bbb", lw=0.8, zorder=0)
        ax.annotate(f"seed {seed}", (pr["none"]["tokens"][i] / 1e6, pr["none"]["heldout"][i]), fontsize=7)
    ax.set_xlabel("tokens scored (millions)")
    ax.set_ylabel("held-out perplexity of the best")
    ax.set_title(f"pruners at 8x, {pr['budget']} evaluations")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trial_span(run) -> float:
    """Seconds from the first evaluation's start to the last one's end: the search's steady
    state, without the one-off worker start-up (model load) and held-out scoring."""
    trials = [t for stage in _stages(run) for t in stage if t.datetime_start and t.datetime_complete]
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def scale_out(workdir: Path, evals: int, real: bool) -> dict[str, Any]:
    """Evaluations per second with 1 and 2 Ray workers. The efficiency ratio uses the steady
    state (first evaluation start to last end); end to end, with actor start-up and model
    load, is reported beside it."""
    import ray

    from longrope.search.cluster import init_ray

    started = not ray.is_initialized()
    init_ray("", num_cpus=2)
    out: dict[str, Any] = {}
    cases = [("synthetic", "synthetic:0.05")] + ([("real", "builtin:tiny-sotu")] if real else [])
    for label, model in cases:
        rates, e2e = {}, {}
        for count in (1, 2):
            toml = _toml(backend="ray", count=count, budget=evals, threads=1, pruner="none").replace(
                'path = "builtin:tiny-sotu"', f'path = "{model}"')
            run, secs = _search(workdir, f"scale-{label}-{count}", toml)
            rates[count] = evals / _trial_span(run)
            e2e[count] = evals / secs
        out[f"scale_out_{label}"] = rates[2] / (2 * rates[1])
        out[f"rate_{label}"] = rates
        out[f"end_to_end_{label}"] = e2e[2] / (2 * e2e[1])
        out[f"rate_end_to_end_{label}"] = e2e
    if started:
        ray.shutdown()
    return out
