"""The `eval` verb: perplexity per method and length, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longrope.objectives.methods import known_methods, split_methods
from longrope.objectives.specs import DEVICES, DTYPES, NLLS
from longrope.spaces import UserError
from longrope.spaces.files import make_folder


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity (or needle perplexity, or pass-key accuracy) of each method at each length on the
    search or held-out documents."""
    from longrope.objectives.evaluate import as_json, parse_lengths, plot_depths, render, run_eval
    from longrope.objectives.models import gguf_scaling
    from longrope.objectives.specs import ObjectiveSpec

    lengths = parse_lengths(args.lengths)
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    methods = split_methods(args.methods)
    if not methods:
        raise UserError("--methods is empty")
    if args.task == "ppl" and (args.depths or args.plot):
        raise UserError("--depths and --plot go with --task needle or passkey")
    if args.plot and args.task != "passkey":  # its heatmap's colours are an accuracy's 0..1
        raise UserError("--plot draws pass-key accuracy: use it with --task passkey")
    if args.tail and args.task != "ppl":
        raise UserError("--tail (last-quarter perplexity) goes with --task ppl")
    if args.depths is not None and args.depths < 1:
        raise UserError(f"--depths must be >= 1, got {args.depths}")
    if args.task == "ppl" and (args.per_depth is not None or args.key_seed):
        raise UserError("--per-depth and --key-seed go with --task needle or passkey")
    if args.per_depth is not None and args.per_depth < 1:
        raise UserError(f"--per-depth must be >= 1, got {args.per_depth}")
    spec = ObjectiveSpec.of(args.model, args.data, tokenizer=args.tokenizer, text_column=args.text_column,
                            split=args.data_split, config=args.data_config, per_line=args.per_line,
                            streaming=args.streaming, stream_docs=args.stream_docs,
                            dtype=args.dtype, device=args.device, threads=args.threads, nll=args.nll,
                            search_docs=args.samples, heldout_docs=args.samples, split_seed=args.split_seed,
                            kind="ppl" if args.task == "ppl" else "needle", depths=args.depths or 10,
                            per_depth=args.per_depth or args.samples, seed=args.key_seed)
    try:  # the validators the run config uses, their messages in the flags typed here
        spec.model.validate("model")
        spec.data.validate("data")
        spec.task.validate("objective")
    except UserError as e:
        raise UserError(_as_flags(str(e))) from None
    if args.plot:  # its folder before the evaluation: a bad --plot must not cost the numbers
        plot = Path(args.plot)
        if plot.is_dir():
            raise UserError(f"--plot {plot} is a folder; name a file, e.g. {plot / 'depths.png'}")
        make_folder(plot.absolute().parent, "folder for --plot")
    if (what := gguf_scaling(args.model)) is not None:  # as the search says it (search/plan.py)
        print(f"note: {args.model} carries rope scaling of its own ({what}), which transformers' GGUF loader "
              "drops: every method here, native included, runs on the model without it, not as llama.cpp "
              "runs it; evaluate the original model (its Hugging Face folder; factors as a .json method)",
              file=sys.stderr)
    results = run_eval(spec, lengths, methods, args.split, progress=not args.json, task=args.task,
                       stride=args.stride)
    by_depth = args.depths is not None
    print(as_json(results, args.tail, args.task, by_depth) if args.json
          else render(results, args.tail, args.task, by_depth), flush=True)
    if args.plot:  # after the table: a write that fails now still leaves the numbers printed
        plot_depths(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


FLAGS = {"data.stream_docs": "--stream-docs", "data.streaming": "--streaming",
         "data.split_seed": "--split-seed", "data.heldout_docs": "--samples", "data.search_docs": "--samples",
         "data.text_column": "--text-column", "model.threads": "--threads",
         "objective.per_depth": "--per-depth", "objective.seed": "--key-seed", "objective.depths": "--depths"}


def _as_flags(message: str) -> str:
    """A config validator's message with its keys named as eval's flags (data.stream_docs = 5 ->
    --stream-docs 5)."""
    for key, flag in FLAGS.items():
        message = message.replace(f"{key} = ", f"{flag} ").replace(key, flag)
    return message.replace("--streaming true", "--streaming")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="perplexity per method and length (none/pi/ntk/yarn/lm_infinite/... or factors .json)",
        description=cmd_eval.__doc__ + " Methods: " + known_methods() + " (ours, an export or a "
        "model's config.json: short factors up to L0, long beyond, as transformers applies them); native "
        "is the model exactly as its config defines it. lm_infinite is LM-Infinite (Han et al. 2023), "
        "no factors: the model as trained, each token attending to the first G tokens and to the W "
        "most recent (itself included), the first G seen at distance at most L0 (the trained length); "
        "lm_infinite:global=G,local=W sets them (defaults G = 10, W = L0); it equals none up to W tokens. "
        "Each document's first L tokens are scored in one forward pass, or, with --stride S, by "
        "sliding windows.")
    e.add_argument("--model", default="builtin:tiny-sotu",
                   help="HF folder, .gguf, or builtin:NAME (default: %(default)s, the embedded model)")
    e.add_argument("--tokenizer", default="", help="a folder holding the tokenizer, for a model folder "
                   "without one (default: the model's own)")
    e.add_argument("--data", default="builtin:sotu",
                   help="builtin:sotu, a folder of .txt files, a .txt/.jsonl/.json/.csv/.parquet file or "
                   "a folder of them, or a hub dataset id (default: %(default)s, State of the Union "
                   "addresses; give your own to score your model on its text)")
    e.add_argument("--text-column", default="text", help="text column for jsonl/parquet/hub data")
    # the [data] keys a run's documents depend on, so a run's held-out scores can be re-scored here
    e.add_argument("--data-split", default="train", metavar="NAME",
                   help="the dataset's split (data.split; a file's one split is train)")
    e.add_argument("--data-config", default="", metavar="NAME", help="the hub dataset's configuration")
    e.add_argument("--per-line", action="store_true", help=".txt: one document per line (data.per_line)")
    e.add_argument("--streaming", action="store_true",
                   help="read only the first documents of the split (data.streaming; --stream-docs)")
    e.add_argument("--stream-docs", type=int, default=0, metavar="N",
                   help="with --streaming: documents read (default 2 x --samples); the split is drawn over "
                   "them, so a streamed run's held-out documents need its count (its report prints the "
                   "command)")
    e.add_argument("--lengths", required=True, help="comma-separated lengths, e.g. 1024,2048")
    e.add_argument("--methods", default="none,pi,ntk,yarn",
                   help="comma-separated methods, e.g. none,yarn,lm_infinite:global=4,local=128 (a key=value "
                   "item continues the method before it; default: %(default)s)")
    e.add_argument("--split", choices=["heldout", "search"], default="heldout",
                   help="document pool of the split a run makes (default: %(default)s)")
    e.add_argument("--samples", type=int, default=5, help="documents per length (default 5)")
    e.add_argument("--split-seed", type=int, default=0, help="seed of the document split")
    e.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="the model's dtype (auto: float32 on a CPU, bfloat16 on a GPU that computes in "
                   "it, else float16)")
    e.add_argument("--device", default="auto", choices=DEVICES,
                   help="where the model runs (auto: cuda if a GPU is seen)")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    e.add_argument("--nll", default="auto", choices=NLLS,
                   help="the head's float32 log-softmax: auto (torch.compile on GPU, eager on CPU), eager or "
                   "compiled; the same NLLs to float32 rounding")
    e.add_argument("--task", choices=["ppl", "needle", "passkey"], default="ppl",
                   help="ppl: document perplexity; needle: perplexity of a pass key hidden in each "
                   "document, answer tokens only; passkey: fraction of those keys greedy decoding "
                   "retrieves (exact match)")
    e.add_argument("--depths", type=int, help="needle/passkey: report a depth x length table per method "
                   "(needle perplexity or pass-key accuracy), with this many depths (default: 10 depths, "
                   "aggregated); --samples documents per depth")
    e.add_argument("--per-depth", type=int, metavar="N",
                   help="needle/passkey: samples per depth, each from the next document (a run's "
                   "objective.per_depth; default: --samples)")
    e.add_argument("--key-seed", type=int, default=0, metavar="S",
                   help="needle/passkey: the seed of the hidden keys (a run's objective.seed; default 0)")
    e.add_argument("--plot", metavar="FILE",
                   help="passkey: heatmap PNG of accuracy by depth and length")
    e.add_argument("--stride", type=int, metavar="S",
                   help="ppl: sliding-window perplexity. Each document's first 2L - S tokens are scored, "
                   "each once: a first window of L tokens scores all of them, then windows of L advancing "
                   "by S score only their last S, each with at least L - S tokens of context. Costs one "
                   "forward pass of L tokens per S scored tokens, about L/S times the default per scored "
                   "token (ceil(L/S) passes per document). Documents must reach 2L - S tokens. --stride L "
                   "is exactly the default (first L tokens, one pass; the default has no stride)")
    e.add_argument("--tail", action="store_true", help="also report last-quarter perplexity")
    e.add_argument("--json", action="store_true", help='print {"method": {"length": value}} only (value: '
                   'ppl, needle ppl or accuracy; with --tail {"ppl": ppl, "tail": ppl}; with --depths '
                   '{"method": {"length": {"depth": value}}}; null: that evaluation failed)')
    e.set_defaults(func=cmd_eval)
