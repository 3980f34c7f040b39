"""`longrope bench`: speed, memory, scale and search quality, measured side by side.

Every figure is a ratio of two things measured in the same run on the same
machine (never a timed assertion). --quick shrinks budgets so the suite can
check the table's shape; the goals are printed, never asserted.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

GOALS = {"overhead": ("<=", 1.02), "memory": ("<=", 0.30), "cpu_efficiency": (">=", 0.40),
         "ga_vs_best_baseline": ("<=", 0.90), "early_abort_saved": (">=", 0.25),
         "scale_out_synthetic": (">=", 0.90), "scale_out_real": (">=", 0.90)}


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead_and_flops(model_spec: str, length: int, reps: int) -> dict[str, Any]:
    """Patched evaluation (chunked NLL) vs a plain transformers forward with labels=,
    alternating, same tokens; and forward FLOP/s vs this machine's matmul rate."""
    import torch

    from longrope.objectives.models import load_model
    from longrope.objectives.perplexity import document_nll
    from longrope.objectives.rotary import patch_model
    from longrope.spaces import seed

    plain = load_model(model_spec, threads=0)
    patched = load_model(model_spec, threads=0)
    rot = patch_model(patched.model, patched.geometry)
    rot.set_factors(seed("yarn", patched.geometry, length))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, plain.model.config.vocab_size, (1, length), generator=gen)

    def run_plain():
        with torch.no_grad():
            plain.model(ids, labels=ids).loss.item()

    def run_patched():
        document_nll(patched.model, ids[0].numpy())

    run_plain(), run_patched()  # warm up
    tp, tq = [], []
    for _ in range(reps):
        tp.append(_median_time(run_plain, 1))
        tq.append(_median_time(run_patched, 1))
    t_plain, t_patched = statistics.median(tp), statistics.median(tq)
    cfg = plain.model.config
    n_params = sum(p.numel() for n, p in plain.model.named_parameters() if "embed" not in n)
    n_params += cfg.vocab_size * cfg.hidden_size  # the LM head runs on every position
    flops = 2 * n_params * length + 2 * cfg.num_hidden_layers * length * length * cfg.hidden_size
    a = torch.randn(2048, 2048)
    t_mm = _median_time(lambda: a @ a, 5)
    mm_rate = 2 * 2048**3 / t_mm
    return {"overhead": t_patched / t_plain, "t_plain": t_plain, "t_patched": t_patched,
            "fwd_flops": flops, "fwd_rate": flops / t_patched, "matmul_rate": mm_rate,
            "cpu_efficiency": (flops / t_patched) / mm_rate}


_MEM_SCRIPT = r"""
import ctypes, sys, threading, time, torch
from longrope.objectives.models import load_model
from longrope.objectives.perplexity import document_nll
from longrope.objectives.rotary import patch_model

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

spec, length, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = load_model(spec)
ids = torch.randint(0, m.model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    m.model.model(ids[:, :8])  # touch the code paths once
if path == "chunked":
    patch_model(m.model, m.geometry)
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
base, peak, done = rss(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)

t = threading.Thread(target=sample)
t.start()
if path == "chunked":
    document_nll(m.model, ids[0].numpy())
else:
    with torch.no_grad():
        m.model(ids, labels=ids).loss.item()
done.set()
t.join()
print(max(peak[0], rss()) - base)
"""


def memory(model_spec: str, length: int) -> dict[str, Any]:
    """Peak RSS growth while scoring one document (sampled every 0.5 ms from a thread),
    each path in a fresh process."""
    out = {}
    for path in ("chunked", "labels"):
        r = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, model_spec, str(length), path],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"memory probe failed: {r.stderr[-500:]}")
        out[path] = max(int(r.stdout.strip().splitlines()[-1]), 4096)
    return {"memory": out["chunked"] / out["labels"], "peak_chunked": out["chunked"],
            "peak_labels": out["labels"], "length": length}


def _search(workdir: Path, name: str, toml: str, progress: bool = False):
    from longrope.runs import Run

    from . import config
    from .driver import Driver

    cfg = config.from_dict(tomllib.loads(toml))
    run = Run.create(workdir / name, config.dumps(cfg))
    d = Driver(cfg, run, progress=progress)
    t0 = time.perf_counter()
    d.run_all()
    seconds = time.perf_counter() - t0
    if d.backend is not None:
        d.backend.close()
    return run, seconds


def _stages(run) -> list[list[Any]]:
    """The trials of each stage (one Optuna study per stage) in the run's journal."""
    import optuna

    storage = run.storage()
    return [optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def _tokens(run) -> int:
    return sum(t.user_attrs.get("tokens", 0) for trials in _stages(run) for t in trials)


SEARCH_TOML = """
[model]
path = "builtin:tiny-sotu"
threads = {threads}
[data]
search_docs = 5
heldout_docs = 10
[space]
targets = [{target}]
[search]
sampler = "{sampler}"
seed = {seed}
population = 32
parents = 16
mutants = 8
crossovers = 8
iterations = {iterations}
max_evals = {budget}
early_abort = {early_abort}
[workers]
backend = "{backend}"
count = {count}
"""


def _toml(**kw) -> str:
    base = dict(threads=2, sampler="longrope", seed=0, iterations=100, budget=300, early_abort="true",
                backend="inprocess", count=1, target=1024)
    base.update(kw)
    return SEARCH_TOML.format(**base)


def search_quality(workdir: Path, targets: list[int], budget: int, seeds: list[int],
                   samplers: list[str]) -> dict[str, Any]:
    from longrope.objectives.baselines import method_factors
    from longrope.objectives.workers import Evaluator, ObjectiveSpec

    ev = Evaluator(ObjectiveSpec(model="builtin:tiny-sotu", threads=2, search_docs=5, heldout_docs=10))
    out: dict[str, Any] = {}
    for target in targets:
        row: dict[str, Any] = {}
        for m in ("none", "pi", "ntk", "yarn", "dynamic_ntk"):
            row[m] = {"heldout": [ev.evaluate(method_factors(m, ev.geometry, target), target,
                                              pool="heldout").ppl]}
        for sampler in samplers:
            held, search = [], []
            for s in seeds:
                run, _ = _search(workdir, f"q-{sampler}-{target}-{s}",
                                 _toml(sampler=sampler, seed=s, target=target, budget=budget))
                best = json.loads(run.best_path("long", target).read_text())
                held.append(best["heldout_ppl"])
                search.append(best["search_ppl"])
            row["ga" if sampler == "longrope" else sampler] = {"heldout": held, "search": search}
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


def early_abort(workdir: Path, budget: int) -> dict[str, Any]:
    res, runs = {}, {}
    for flag in ("true", "false"):
        run, secs = _search(workdir, f"abort-{flag}", _toml(early_abort=flag, budget=budget))
        best = json.loads(run.best_path("long", 1024).read_text())
        res[flag] = (_tokens(run), best["lambdas"], best["n_hat"], secs)
        runs[flag] = run
    parents = tomllib.loads(runs["false"].config_text())["search"]["parents"]
    return {"tokens_with": res["true"][0], "tokens_without": res["false"][0],
            "early_abort_saved": 1 - res["true"][0] / res["false"][0],
            "same_best": res["true"][1:3] == res["false"][1:3],
            "seconds_with": res["true"][3], "seconds_without": res["false"][3],
            **exact_ceiling(runs["false"], parents)}


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

    from .backends import init_ray

    started = not ray.is_initialized()
    init_ray("", num_cpus=2)
    out: dict[str, Any] = {}
    cases = [("synthetic", "synthetic:0.05")] + ([("real", "builtin:tiny-sotu")] if real else [])
    for label, model in cases:
        rates, e2e = {}, {}
        for count in (1, 2):
            toml = _toml(backend="ray", count=count, budget=evals, threads=1).replace(
                'path = "builtin:tiny-sotu"', f'path = "{model}"').replace("early_abort = true",
                                                                            "early_abort = false")
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


def cost_estimate(model_spec: str, length: int, docs: int = 5) -> dict[str, Any]:
    """Seconds and peak memory of one document forward; projected paper-default search time."""
    r = subprocess.run([sys.executable, "-c", _COST_SCRIPT, model_spec, str(length)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cost probe failed: {r.stderr[-500:]}")
    secs, peak = (float(x) for x in r.stdout.split()[-2:])
    per_eval = secs * docs
    return {"model": model_spec, "length": length, "seconds_per_doc": secs, "seconds_per_eval": per_eval,
            "peak_rss_bytes": peak,
            "full_search_hours": {n: 1344 * per_eval / n / 3600 for n in (1, 8, 64)}}


_COST_SCRIPT = r"""
import resource, sys, time, torch
from longrope.objectives.models import load_model
from longrope.objectives.perplexity import document_nll
from longrope.objectives.rotary import patch_model
m = load_model(sys.argv[1]); n = int(sys.argv[2])
patch_model(m.model, m.geometry)
ids = torch.randint(0, m.model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(0)).numpy()
t = time.perf_counter(); document_nll(m.model, ids); t = time.perf_counter() - t
print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


SECTIONS = ("speed", "memory", "quality", "early_abort", "scale", "cost")


def run_bench(quick: bool, out_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run every section (or `only` these, keeping the others from out_dir/bench.json)."""
    from longrope.spaces import UserError

    only = list(only or SECTIONS)
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        raise UserError(f"unknown bench section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    r: dict[str, Any] = {}
    if len(only) < len(SECTIONS):
        old = out_dir / "bench.json"
        if not old.exists():
            raise UserError(f"--only needs an earlier full bench in {out_dir} (no bench.json there)")
        r = json.loads(old.read_text())
        if r.get("quick") != quick:
            raise UserError(f"{old} was a {'quick' if r.get('quick') else 'full'} bench; "
                            "rerun the same mode or the whole bench")
    out_dir.mkdir(parents=True, exist_ok=True)  # after the checks: a refused call writes nothing
    with tempfile.TemporaryDirectory(prefix="longrope-bench-") as tmp:  # the searches' run folders
        _run_sections(r, only, quick, Path(tmp))
    r["summary"] = summarize(r)
    (out_dir / "bench.json").write_text(json.dumps(r, indent=1, default=str))
    plot(r, out_dir / "bench.png")
    return r


def _run_sections(r: dict[str, Any], only: list[str], quick: bool, work: Path) -> None:
    from longrope.objectives.smollm2 import find_gguf

    try:
        find_gguf()
        have_smol = True
    except Exception:
        have_smol = False
    r.update({"machine": f"{os.cpu_count()} CPU cores, torch {_torch_version()}", "quick": quick})
    big = "builtin:smollm2-135m" if have_smol and not quick else "builtin:tiny-sotu"
    budget = 12 if quick else 300  # full: 32 + 17 generations of 16 children (the issue's ~300)
    if "speed" in only:
        r["speed"] = overhead_and_flops("builtin:tiny-sotu", 512 if quick else 2048, 2 if quick else 7)
    if "memory" in only:
        r["memory"] = memory(big, 512 if quick else (8192 if have_smol else 4096))
        r["memory"]["model"] = big
    if "quality" in only:
        samplers = ["longrope", "random"] if quick else ["longrope", "cmaes", "tpe", "random"]
        r["quality"] = search_quality(work, [512] if quick else [512, 1024], budget,
                                      [0] if quick else [0, 1, 2], samplers)
        r["quality_budget"] = budget
    if "early_abort" in only:
        r["early_abort"] = early_abort(work, budget)
    if "scale" in only:
        r["scale"] = scale_out(work, 6 if quick else 40, real=not quick)
    if "cost" in only:
        r["cost"] = cost_estimate(big, 512 if quick else (16384 if have_smol else 2048))


def _torch_version() -> str:
    import torch

    return torch.__version__


def _spread(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{statistics.median(xs):.2f}" + (f" [{xs[0]:.2f}, {xs[-1]:.2f}]" if len(xs) > 1 else "")


def summarize(r: dict[str, Any]) -> dict[str, float]:
    s = {"overhead": r["speed"]["overhead"], "memory": r["memory"]["memory"],
         "cpu_efficiency": r["speed"]["cpu_efficiency"],
         "early_abort_saved": r["early_abort"]["early_abort_saved"]}
    s.update({k: v for k, v in r["scale"].items() if k.startswith("scale_out")})
    target = max(r["quality"], key=int)  # keys are strings once read back from bench.json
    row = r["quality"][target]
    best_base = min(statistics.median(row[m]["heldout"]) for m in ("pi", "ntk", "yarn"))
    s["ga_vs_best_baseline"] = statistics.median(row["ga"]["heldout"]) / best_base
    return s


def render(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']}{' (quick mode: tiny budgets)' if r['quick'] else ''}", "",
             "| figure | measured | goal | met |", "|---|---|---|---|"]
    for k, v in r["summary"].items():
        op, goal = GOALS[k]
        met = v <= goal if op == "<=" else v >= goal
        lines.append(f"| {k} | {v:.3f} | {op} {goal} | {'yes' if met else 'NO'} |")
    for target, row in r["quality"].items():
        evals = f", {r['quality_budget']} evaluations per search" if "quality_budget" in r else ""
        lines += ["", f"held-out perplexity at {target} (median [min, max] over seeds{evals}):", "",
                  "| method | held-out | search set |", "|---|---|---|"]
        for m, v in row.items():
            searched = _spread(v["search"]) if "search" in v else "-"
            lines.append(f"| {m} | {_spread(v['heldout'])} | {searched} |")
    c = r["cost"]
    lines += ["", f"cost: {c['model']} at {c['length']} tokens: {c['seconds_per_doc']:.2f} s per document, "
              f"{c['seconds_per_eval']:.1f} s per 5-document evaluation, peak RSS "
              f"{c['peak_rss_bytes'] / 2**30:.2f} GiB; paper-default search (1,344 evaluations): "
              + ", ".join(f"{h:.1f} h on {n} worker{'s' if int(n) > 1 else ''}"
                          for n, h in c["full_search_hours"].items())]
    ea = r["early_abort"]
    lines.append(f"early abort: {ea['tokens_with']} vs {ea['tokens_without']} tokens, "
                 f"same best: {ea['same_best']}; {ea.get('above_cutoff', float('nan')):.0%} of candidates "
                 f"scored above the parent cut-off, at most {ea.get('exact_ceiling', float('nan')):.1%} "
                 "could be saved by any exact abort")
    sc = r["scale"]
    lines.append("scale-out end to end (with worker start-up and model load): " + ", ".join(
        f"{k[len('end_to_end_'):]} {v:.3f}" for k, v in sc.items() if k.startswith("end_to_end_")))
    return "\n".join(lines)


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
