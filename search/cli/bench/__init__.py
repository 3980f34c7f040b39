"""`longrope bench`: speed, memory, scale and search quality, measured side by side.

Every figure is a ratio of two things measured in the same run on the same
machine (never a timed assertion). --quick shrinks budgets so the suite can
check the table's shape; the goals are printed, never asserted. The parts:
``timing`` (the objective's speed, memory and cost, with its probes
``probe_memory`` and ``probe_cost`` run as ``python -m``), ``quality`` (searches),
``report`` (summary, tables, plot).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .compare import compare
from .compare import plot as plot_compare
from .finetune import S2_SCALES, S2_STEPS, recipe, s2_scaling, short_mix_sweep
from .quality import (
    PAPER_BUDGET,
    PAPER_SHAPE,
    early_abort,
    exact_ceiling,
    note,
    plot_pruning,
    pruning,
    quick_documents,
    scale_out,
    search_quality,
)
from .report import GOALS, finite_figures, plot, render, summarize
from .retrieval import QUICK_KEYS, SEARCH_KEYS, retrieval
from .spaces import spaces
from .timing import cost_estimate, memory, overhead_and_flops

__all__ = ["GOALS", "SECTIONS", "exact_ceiling", "finite_figures", "render", "run_bench", "summarize"]


SECTIONS = ("speed", "memory", "quality", "samplers_paper", "early_abort", "pruning", "pruning_paper",
            "scale", "cost", "retrieval", "spaces", "compare", "finetune", "short_mix", "s2_time")


def run_bench(quick: bool, out_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run every section (or `only` these, keeping the others from out_dir/bench.json)."""
    from longrope.spaces import UserError
    from longrope.spaces.files import make_folder

    only = list(dict.fromkeys(only or SECTIONS))  # a name given twice is one section
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        raise UserError(f"unknown bench section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    r: dict[str, Any] = {}
    if len(only) < len(SECTIONS):
        old = out_dir / "bench.json"
        if not old.exists():
            raise UserError(f"--only needs an earlier full bench in {out_dir} (no bench.json there)")
        try:
            r = json.loads(old.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"--only keeps the other sections from {old}, which cannot be read ({e}); "
                            "rerun the whole bench") from None
        if not isinstance(r, dict) or not isinstance(r.get("quick"), bool):
            raise UserError(f"--only keeps the other sections from {old}, which is not a bench's "
                            "results; rerun the whole bench")
        if r["quick"] != quick:
            raise UserError(f"{old} was a {'quick' if r['quick'] else 'full'} bench; "
                            "rerun the same mode or the whole bench")
    make_folder(out_dir, "bench folder")  # after the checks: a refused call writes nothing
    with tempfile.TemporaryDirectory(prefix="longrope-bench-") as tmp:  # the searches' run folders
        partial = len(only) < len(SECTIONS)  # a rerun of some (hours here): each kept once measured,
        with quick_documents(quick):  # so a killed bench loses only the one under way
            for section in [s for s in SECTIONS if s in only]:
                t0 = time.perf_counter()
                note(f"{section} ...")
                _run_sections(r, [section], quick, Path(tmp))
                note(f"{section} done in {time.perf_counter() - t0:.0f} s")
                if partial:
                    _save(r, out_dir)
    if not partial:  # the summary needs every section
        _save(r, out_dir)
    plot(r, out_dir / "bench.png")
    if "compare" in r:
        plot_compare(r["compare"], out_dir / "compare.png")
    if "pruning" in r:
        plot_pruning(r["pruning"], out_dir / "pruning.png")
    return r


def _save(r: dict[str, Any], out_dir: Path) -> None:
    from longrope.spaces.files import atomic_write_text

    r["summary"] = summarize(r)
    atomic_write_text(out_dir / "bench.json", json.dumps(r, indent=1, default=str))


def _run_sections(r: dict[str, Any], only: list[str], quick: bool, work: Path) -> None:
    from longrope.objectives.smollm2 import find_gguf

    try:
        find_gguf()
        have_smol = True
    except Exception:
        have_smol = False
    r.update({"machine": f"{_gpus()}{os.cpu_count()} CPU cores, torch {_torch_version()}", "quick": quick})
    big = "builtin:smollm2-135m" if have_smol and not quick else "builtin:tiny-sotu"
    small = 4  # --quick's evaluations per search: the suite checks the tables' shape, not their numbers
    budget = small if quick else 300  # full: 32 + 17 generations of 16 children (the issue's ~300)
    # the paper's search shape and budget (samplers_paper, pruning_paper); quick: 8 + 1 generation of 4
    shape = dict(population=8, parents=4, mutants=2, crossovers=2, iterations=1) if quick else PAPER_SHAPE
    paper_budget = 12 if quick else PAPER_BUDGET
    samplers = ["longrope", "random"] if quick else ["longrope", "cmaes", "tpe", "random"]
    keys = QUICK_KEYS if quick else SEARCH_KEYS  # pass-key samples per needle-objective evaluation
    r["search_keys"] = keys
    if "speed" in only:
        r["speed"] = overhead_and_flops("builtin:tiny-sotu", 512 if quick else 2048, 2 if quick else 7)
    if "memory" in only:
        r["memory"] = memory(big, 512 if quick else (8192 if have_smol else 4096), 1 if quick else 3)
        r["memory"]["model"] = big
    if "quality" in only:
        r["quality"] = search_quality(work, [512] if quick else [512, 1024], budget,
                                      [0] if quick else [0, 1, 2], samplers)
        r["quality_budget"] = budget
    if "samplers_paper" in only:  # issue 15, 5c: the samplers at the paper's search shape and budget at 8x
        # one seed each, 5 search documents: about 15 min a sampler here, alone
        r["samplers_paper_budget"], r["samplers_paper_shape"] = paper_budget, shape
        r["samplers_paper"] = search_quality(work, [512 if quick else 1024], paper_budget, [0],
                                             samplers, **shape)
    if "early_abort" in only:
        r["early_abort"] = early_abort(work, budget)
    if "pruning" in only:  # issue 15: quality per token of pruners none / exact / wilcoxon
        # three seeds x three pruners: nine searches of ~4 min (12 documents of 1024 tokens)
        r["pruning"] = pruning(work, small if quick else 160, [0] if quick else [0, 1, 2], 2 if quick else 12)
    if "pruning_paper" in only:  # issue 15: the same at the paper's search shape and budget, one seed
        # none and wilcoxon only (exact scores what none does): about 1 h for both here, alone (the
        # none search ran ~40 evaluations a minute); never beside another torch job on 2 cores
        r["pruning_paper"] = pruning(work, paper_budget, [0], 2 if quick else 12,
                                     ("none", "wilcoxon"), **shape)
    if "scale" in only:
        r["scale"] = scale_out(work, 6 if quick else 40, real=not quick)
    if "retrieval" in only:  # the needle objective against plain perplexity, LongRoPE2's Table 6
        # 320 evaluations a search: with 160, 8x needle searches retrieved 0.20 of the held-out keys
        # against YaRN's 0.15; with 320, 0.45 (search/results/progressive.py, one_stage_needle_320)
        r["retrieval_budget"] = small if quick else 320
        # three seeds at each length (one at 4x and 16x before session 36 left the 16x goal on one
        # seed's tie): about 1.5 h here, alone
        seeds = {512: [0]} if quick else {t: [0, 1, 2] for t in (512, 1024, 2048)}
        r["retrieval"] = retrieval(work, seeds, r["retrieval_budget"], keys)
    if "spaces" in only:  # issue 15: LongRoPE's space against LongRoPE2's, equal budget
        r["spaces_budget"] = small if quick else 160
        r["spaces"] = spaces(work, [512] if quick else [512, 1024], [0] if quick else [0, 1, 2],
                             r["spaces_budget"], keys=keys)
    if "compare" in only:  # issue 17: every method and the ALiBi twin on the same text, 1x to 16x
        r["compare_budget"] = small if quick else 160
        lengths = [128, 256] if quick else [128, 256, 512, 1024, 2048]
        r["compare"] = compare(work, lengths, r["compare_budget"], keys=keys)
    if "finetune" in only:  # issue 16: the full recipe at 16x against the base model, and its ablations
        r["finetune_budget"], r["finetune_steps"] = (small, 2) if quick else (64, 300)
        r["finetune"] = recipe(work, r["finetune_budget"], r["finetune_steps"], (2, 4) if quick else (4, 16),
                               keys=keys)
    if "short_mix" in only:  # issue 16: the short-context goal against finetune.short_mix, and its cost
        r["short_mix_budget"], r["short_mix_steps"] = (small, 2) if quick else (64, 300)
        r["short_mix"] = short_mix_sweep(work, r["short_mix_budget"], r["short_mix_steps"],
                                         (0.0, 0.5) if quick else (0.0, 0.25, 0.5, 0.75), 2 if quick else 4,
                                         keys=keys)
    if "s2_time" in only:  # issue 16: S2-Attn's training time against full attention, 4x to 64x
        r["s2_time"] = s2_scaling(work, (2, 4) if quick else S2_SCALES, 2 if quick else S2_STEPS)
    if "cost" in only:
        r["cost"] = cost_estimate(big, 512 if quick else (16384 if have_smol else 2048))


def _gpus() -> str:
    """'1 × NVIDIA H100 80GB HBM3, ' when torch sees GPUs (the models then run there), else ''."""
    import torch

    if not torch.cuda.is_available():
        return ""
    return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, "


def _torch_version() -> str:
    import torch

    return torch.__version__




def cmd_bench(args: argparse.Namespace) -> int:
    """Measure evaluation overhead, memory, CPU efficiency, search quality against PI/NTK/YaRN and
    CMA-ES/TPE/random, early-abort savings, the pruners' quality per token, Ray scale-out, the
    fine-tune recipe, S2-Attn's training time against full attention, and the cost of a full search."""
    only = None if args.only is None else [x.strip() for x in args.only.split(",") if x.strip()]
    if only == []:  # an empty --only (an unset shell variable) must not mean every section
        from longrope.spaces import UserError

        raise UserError(f"--only names no section; choose from {', '.join(SECTIONS)}, or leave it out")
    r = run_bench(args.quick, Path(args.out), only)
    print(json.dumps(r, default=str) if args.json else render(r))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks: speed, memory, scale, search quality",
                       description=cmd_bench.__doc__ + " Every figure is a ratio measured side by side "
                       "in one run; goals are reported, not asserted.")
    b.add_argument("--quick", action="store_true", help="tiny budgets (checks the table's shape)")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object")
    b.add_argument("--out", default="bench-out",
                   help="folder for bench.json and bench.png (default: %(default)s)")
    b.add_argument("--only", metavar="SECTIONS", help=f"comma-separated sections to rerun "
                   f"({', '.join(SECTIONS)}); the others are kept from --out's bench.json")
    b.set_defaults(func=cmd_bench)
