"""Subcommands beyond `config`, registered into the CLI. Heavy imports stay
inside the functions so `longrope --help` starts fast."""

from __future__ import annotations

import argparse
import json
import sys

from longrope.spaces import UserError

from .cli import _REGISTRY


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity of each method at each length on the search or held-out documents."""
    from longrope.objectives.evaluate import as_json, parse_lengths, render, run_eval
    from longrope.objectives.workers import ObjectiveSpec

    lengths = parse_lengths(args.lengths)
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        raise UserError("--methods is empty")
    spec = ObjectiveSpec(model=args.model, data=args.data, text_column=args.text_column,
                         dtype=args.dtype, device=args.device, threads=args.threads,
                         search_docs=args.samples, heldout_docs=args.samples, split_seed=args.split_seed)
    results = run_eval(spec, lengths, methods, args.split, progress=not args.json)
    print(as_json(results, args.tail) if args.json else render(results, args.tail))
    return 0


def _run_search(cfg, run_dir: str, resume: bool, progress: bool = True) -> dict:
    """Kept for callers not yet moved: see longrope.search.driver.run_search."""
    from .driver import run_search

    return run_search(cfg, run_dir, resume=resume, progress=progress)


def _overrides(cfg, args: argparse.Namespace):
    if getattr(args, "workers", None) is not None:
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        cfg.workers.count = args.workers
        if args.workers > 1:
            cfg.workers.backend = "ray"
    if getattr(args, "address", None):
        cfg.workers.address = args.address
        cfg.workers.backend = "ray"
    if getattr(args, "max_evals", None) is not None:
        if args.max_evals < 1:
            raise UserError(f"--max-evals must be >= 1, got {args.max_evals}")
        cfg.search.max_evals = args.max_evals
    return cfg


def cmd_search(args: argparse.Namespace) -> int:
    """Run (or continue) a search described by a TOML config into a run directory."""
    from . import config

    cfg = _overrides(config.load(args.config), args)
    results = _run_search(cfg, args.run_dir, resume=False, progress=not args.quiet)
    print(f"done: {', '.join(results)} in {args.run_dir}; export with: longrope export {args.run_dir}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted search from its journal; the result equals an uninterrupted run."""
    from longrope.runs import Run

    from . import config

    run = Run.open(args.run_dir)
    try:
        cfg = config.from_dict(run.config())
    except UserError as e:
        raise UserError(f"{run.path / 'config.toml'}: {e}") from None
    cfg = _overrides(cfg, args)
    results = _run_search(cfg, args.run_dir, resume=True, progress=not args.quiet)
    print(f"done: {', '.join(results)} in {args.run_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per stage: evaluations done / budget, best ppl, generation, running/failed/pruned, ETA."""
    from longrope.runs import Run
    from longrope.runs.status import render_status

    print(render_status(Run.open(args.run_dir), args.json))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the best factors as a Hugging Face config patch (or CSV)."""
    from longrope.runs import Run
    from longrope.runs.export import export

    path, warnings = export(Run.open(args.run_dir), args.target, args.short, args.output, args.format)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(path)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Make a model folder whose config.json carries exported factors."""
    from longrope.runs.export import apply_to_folder

    print(apply_to_folder(args.factors, args.model_dir, args.output, copy=args.copy))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Search builtin:tiny-sotu at 4x and 8x its training length on SOTU addresses, then compare
    none/PI/NTK/YaRN/searched on held-out documents, export the factors and plot ppl vs length."""
    from .demo import run_demo

    run_demo(args.run_dir, args.json, args.max_evals)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure evaluation overhead, memory, CPU efficiency, search quality against PI/NTK/YaRN and
    CMA-ES/TPE/random, early-abort savings, Ray scale-out and the cost of a full search."""
    from pathlib import Path

    from .bench import render, run_bench

    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    r = run_bench(args.quick, Path(args.out), only)
    print(json.dumps(r, default=str) if args.json else render(r))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks: speed, memory, scale, search quality",
                       description=cmd_bench.__doc__ + " Every figure is a ratio measured side by side "
                       "in one run; goals are reported, not asserted.")
    b.add_argument("--quick", action="store_true", help="tiny budgets (checks the table's shape)")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object")
    b.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")
    b.add_argument("--only", metavar="SECTIONS", help="comma-separated sections to rerun (speed, memory, "
                   "quality, early_abort, scale, cost); the others are kept from --out's bench.json")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the one-command demo search on the embedded model and data",
                       description=cmd_demo.__doc__)
    d.add_argument("--run-dir", help="where to keep the run (default: a new temporary folder); "
                   "an existing demo run is resumed")
    d.add_argument("--max-evals", type=int, help="cap on evaluations per stage (default: demo.toml)")
    d.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser(
        "eval", help="perplexity per method and length (none/pi/ntk/yarn/... or factors .json)",
        description=cmd_eval.__doc__ + " Methods: none, pi, ntk, yarn, dynamic_ntk, llama3, or a "
        "factors JSON file (ours or an exported HF config). Each document's first L tokens are scored "
        "in one forward pass.")
    e.add_argument("--model", default="builtin:tiny-sotu", help="HF folder, .gguf, or builtin:NAME")
    e.add_argument("--data", default="builtin:sotu", help="builtin:sotu, .txt folder/file, .jsonl, .parquet")
    e.add_argument("--text-column", default="text", help="text column for jsonl/parquet/hub data")
    e.add_argument("--lengths", required=True, help="comma-separated lengths, e.g. 1024,2048")
    e.add_argument("--methods", default="none,pi,ntk,yarn", help="comma-separated methods")
    e.add_argument("--split", choices=["heldout", "search"], default="heldout", help="document pool")
    e.add_argument("--samples", type=int, default=5, help="documents per length (default 5)")
    e.add_argument("--split-seed", type=int, default=0, help="seed of the document split")
    e.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    e.add_argument("--tail", action="store_true", help="also report last-quarter perplexity")
    e.add_argument("--json", action="store_true", help='print {"method": {"length": ppl}} only')
    e.set_defaults(func=cmd_eval)

    for name, fn, is_resume in (("search", cmd_search, False), ("resume", cmd_resume, True)):
        p = sub.add_parser(name, help=fn.__doc__.split(";")[0].rstrip("."), description=fn.__doc__)
        if is_resume:
            p.add_argument("run_dir", help="an existing run directory")
        else:
            p.add_argument("config", help="TOML run config (see `longrope config`)")
            p.add_argument("--run-dir", required=True, help="where the run lives; an existing run "
                           "with the same search-defining config is resumed")
        p.add_argument("--workers", type=int, help="model replicas; more than 1 uses Ray")
        p.add_argument("--address", help="join this Ray cluster (else RAY_ADDRESS, else local)")
        p.add_argument("--max-evals", type=int, help="cap on evaluations per stage")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=fn)

    st = sub.add_parser("status", help="progress of a run", description=cmd_status.__doc__)
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="one JSON object with a 'stages' list")
    st.set_defaults(func=cmd_status)

    ex = sub.add_parser("export", help="best factors as a Hugging Face config patch",
                        description=cmd_export.__doc__ + " The JSON has max_position_embeddings, "
                        "original_max_position_embeddings and rope_scaling (rope_type longrope) to merge "
                        "into a model's config.json, plus a longrope_search block with n̂ and provenance.")
    ex.add_argument("run_dir")
    ex.add_argument("--target", type=int, help="long target length (default: the longest searched)")
    ex.add_argument("--short", type=int, help="short stage length (default: the longest; λ = 1 if none)")
    ex.add_argument("-o", "--output", help="output file (default: RUN/export/longrope-L.json)")
    ex.add_argument("--format", choices=["json", "phi3", "csv"], default="json",
                    help="phi3: rope_scaling with only type/short_factor/long_factor, which Phi3Config in "
                    "transformers 4.57 requires; csv: one long factor per line, like the reference "
                    "implementation")
    ex.set_defaults(func=cmd_export)

    ap = sub.add_parser("apply", help="a model folder whose config carries exported factors",
                        description=cmd_apply.__doc__ + " Weights are symlinked unless --copy. In Python, "
                        "longrope.objectives.rotary.apply_factors(model, factors) patches a loaded model, "
                        "n̂ included.")
    ap.add_argument("factors", help="a JSON written by `longrope export`")
    ap.add_argument("model_dir", help="the Hugging Face model folder to extend")
    ap.add_argument("-o", "--output", required=True, help="new model folder")
    ap.add_argument("--copy", action="store_true", help="copy weights instead of symlinking")
    ap.set_defaults(func=cmd_apply)


_REGISTRY.append(register)
