"""The `eval` verb: perplexity per method and length, as a table or JSON."""

from __future__ import annotations

import argparse

from longrope.objectives.specs import DEVICES, DTYPES
from longrope.spaces import UserError


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity of each method at each length on the search or held-out documents."""
    from longrope.objectives.evaluate import as_json, parse_lengths, render, run_eval
    from longrope.objectives.specs import ObjectiveSpec

    lengths = parse_lengths(args.lengths)
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        raise UserError("--methods is empty")
    spec = ObjectiveSpec.of(args.model, args.data, tokenizer=args.tokenizer, text_column=args.text_column,
                            dtype=args.dtype, device=args.device, threads=args.threads,
                            search_docs=args.samples, heldout_docs=args.samples, split_seed=args.split_seed)
    spec.model.validate("model")  # the validator the run config uses
    spec.data.validate("data")
    results = run_eval(spec, lengths, methods, args.split, progress=not args.json)
    print(as_json(results, args.tail) if args.json else render(results, args.tail))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="perplexity per method and length (none/pi/ntk/yarn/... or factors .json)",
        description=cmd_eval.__doc__ + " Methods: none, pi, ntk, yarn, dynamic_ntk, llama3, or a "
        "factors JSON file (ours or an exported HF config). Each document's first L tokens are scored "
        "in one forward pass.")
    e.add_argument("--model", default="builtin:tiny-sotu", help="HF folder, .gguf, or builtin:NAME")
    e.add_argument("--tokenizer", default="", help="a folder holding the tokenizer, for a model folder "
                   "without one (default: the model's own)")
    e.add_argument("--data", default="builtin:sotu", help="builtin:sotu, .txt folder/file, .jsonl, .parquet")
    e.add_argument("--text-column", default="text", help="text column for jsonl/parquet/hub data")
    e.add_argument("--lengths", required=True, help="comma-separated lengths, e.g. 1024,2048")
    e.add_argument("--methods", default="none,pi,ntk,yarn", help="comma-separated methods")
    e.add_argument("--split", choices=["heldout", "search"], default="heldout", help="document pool")
    e.add_argument("--samples", type=int, default=5, help="documents per length (default 5)")
    e.add_argument("--split-seed", type=int, default=0, help="seed of the document split")
    e.add_argument("--dtype", default="auto", choices=DTYPES)
    e.add_argument("--device", default="auto", choices=DEVICES)
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    e.add_argument("--tail", action="store_true", help="also report last-quarter perplexity")
    e.add_argument("--json", action="store_true", help='print {"method": {"length": ppl}} only')
    e.set_defaults(func=cmd_eval)
