"""Verbs that carry found factors to a model: export and apply."""

from __future__ import annotations

import argparse
import sys

from longrope.runs.export import FORMATS

from .args import add_run_dir


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
    """Make a model folder whose config.json carries exported factors, or a GGUF copy with them."""
    import os
    import tempfile

    from longrope.spaces import UserError

    if os.path.exists(args.factors) and not os.path.isfile(args.factors) and not os.path.isdir(args.factors):
        # a pipe (`apply <(longrope export ...)`, /dev/stdin) can be read once, and it is read twice:
        # spooled to a file, named as given in any error
        from longrope.spaces import read_text

        text = read_text(args.factors, "factors file")
        with tempfile.TemporaryDirectory() as tmp:
            given, args.factors = args.factors, os.path.join(tmp, "factors.json")
            with open(args.factors, "w") as f:
                f.write(text)
            try:
                return _apply(args)
            except UserError as e:
                raise UserError(str(e).replace(args.factors, given)) from None
    return _apply(args)


def _apply(args: argparse.Namespace) -> int:
    import json

    from longrope.runs.export import searched_on_warning
    from longrope.spaces import UserError, read_text

    try:  # provenance only: a file that does not parse is refused below, in one line
        patch = json.loads(read_text(args.factors, "factors file"))
    except (UserError, ValueError):
        patch = {}
    fits = searched_on_warning(patch, args.model_dir) if isinstance(patch, dict) else None
    if str(args.model_dir).lower().endswith(".gguf"):
        from longrope.runs.gguf import apply_to_gguf

        path, warnings = apply_to_gguf(args.factors, args.model_dir, args.output, switch=args.gguf_switch)
        for w in warnings + ([fits] if fits else []):
            print(f"warning: {w}", file=sys.stderr)
        print(path)
        return 0
    if args.gguf_switch:
        raise UserError("--gguf-switch is for a .gguf MODEL; a model folder's config carries both "
                        "factor sets")
    from longrope.runs.export import apply_to_folder

    model = args.model_dir
    if model.startswith("builtin:"):  # the embedded model's folder (SmolLM2's converted from its GGUF)
        from longrope.objectives.models import resolve

        model = resolve(model)[0]
    try:
        print(apply_to_folder(args.factors, model, args.output, copy=args.copy))
    except UserError as e:  # a builtin is named as given, not by its folder inside the install
        raise UserError(str(e).replace(str(model), args.model_dir)) from None
    if fits:  # after the folder is written: a refused apply has no warning to add
        print(f"warning: {fits}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="best factors as a Hugging Face config patch",
                        description=cmd_export.__doc__ + " The JSON has max_position_embeddings, "
                        "original_max_position_embeddings, rope_theta and rope_scaling (rope_type longrope) "
                        "for a model's config.json (`longrope apply` writes them into a copy of a model "
                        "folder), plus a longrope_search block with n̂ and provenance.")
    add_run_dir(ex, "the run to export from")
    ex.add_argument("--target", type=int, help="long target length (default: the longest searched)")
    ex.add_argument("--short", type=int, help="short stage length (default: the longest; λ = 1 if none)")
    ex.add_argument("-o", "--output", help="output file (default: RUN/export/longrope-L.json, "
                    "longrope-L-phi3.json or longrope-L.csv by --format)")
    ex.add_argument("--format", choices=list(FORMATS), default="json",
                    help="; ".join(f"{name}: {what}" for name, (_, what) in FORMATS.items()))
    ex.set_defaults(func=cmd_export)

    ap = sub.add_parser("apply", help="a model folder (or GGUF file) that carries exported factors",
                        description=cmd_apply.__doc__ + " Weights are symlinked unless --copy. In Python, "
                        "longrope.objectives.rotary.apply_factors(model, factors) patches a loaded model, "
                        "n̂ included. A MODEL ending in .gguf gives a GGUF copy for llama.cpp (llama, phi3): "
                        "tensors copied as they are (quantized stays quantized), the factors as llama.cpp's "
                        "rope_freqs (llama) or rope_factors_long/short (phi3) tensors, and the context "
                        "length, L0 and attention factor in its metadata; llama.cpp has no n̂.")
    ap.add_argument("factors", help="a JSON written by `longrope export`, or a config.json with LongRoPE "
                    "rope_scaling (only its rope settings are taken)")
    ap.add_argument("model_dir", metavar="MODEL",
                    help="the Hugging Face model folder to extend, a .gguf file, or builtin:NAME")
    ap.add_argument("-o", "--output", required=True, help="new model folder (new .gguf file for a GGUF)")
    ap.add_argument("--copy", action="store_true", help="copy weights instead of symlinking (folders)")
    ap.add_argument("--gguf-switch", action="store_true",
                    help="llama GGUF: write rope_factors_long/short with rope.scaling.type longrope, which "
                    "recent llama.cpp builds switch on -c > L0, instead of one rope_freqs tensor (the "
                    "long factors at every length)")
    ap.set_defaults(func=cmd_apply)
