"""Stage 2 of the tiny test bed: teach the pretrained ``tiny-sotu`` to retrieve a pass key.

A model that only predicts the next word from the last few dozen tokens cannot show what a
context-extension search is for: at 8x its perplexity mostly measures "do not break the
model". This stage fine-tunes the stage-1 model (train_tiny.py) on a mix of

- plain windows of the training stream (the stage-1 objective, so the language model stays), and
- pass-key samples built by the runtime's own ``NeedleBuilder`` (objectives/needle.py) from
  TRAINING documents: the key hidden at a uniformly random depth of a random window, the
  question at the end, the answer as the last tokens,

each sample ``SEQ_LEN`` tokens. The loss is the mean next-token NLL over all tokens plus
``answer_weight`` times the mean NLL of the answer tokens: the answer is 5 of 128 tokens, and
without the extra weight retrieval is learned slowly (an issue-14 probe with plain loss reached
0.80-0.93 after 1,500 steps). Evaluation-pool documents are never used: the pass-key accuracy
this module reports is on them, by depth, the way ``longrope eval --task passkey`` measures it.

Usage::

    python -m longrope.objectives.builtin.retrieval_tune --init DIR --out DIR --steps 2500
    python -m longrope.objectives.builtin.retrieval_tune --pretrain-steps 1800 --out DIR --steps 2500

The second form trains stage 1 (train_tiny.py) into DIR first: the shipped model in one command.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..needle import NeedleBuilder, answer_scores, make_samples
from .tiny_corpus import eval_texts, training_texts
from .train_tiny import SEQ_LEN, _lr_at, _sample_batch, _token_stream, load_fp32, train


def passkey_batch(builder: NeedleBuilder, docs: list[np.ndarray], n: int, rng: np.random.Generator):
    """`n` pass-key samples of SEQ_LEN tokens from random windows of random training `docs`:
    (ids [n, SEQ_LEN], answer mask [n, SEQ_LEN - 1] over the shifted targets)."""
    import torch

    ids, mask = [], []
    for _ in range(n):
        doc = docs[int(rng.integers(len(docs)))]
        start = int(rng.integers(0, len(doc) - 2 * SEQ_LEN))
        s = builder.build(doc[start:start + 2 * SEQ_LEN], SEQ_LEN, float(rng.random()), builder.key(rng))
        ids.append(s.ids)
        m = [False] * (SEQ_LEN - 1)
        for j in range(s.answer_at, SEQ_LEN):
            m[j - 1] = True  # target j is predicted at position j - 1
        mask.append(m)
    return torch.tensor(ids), torch.tensor(mask)


def passkey_by_depth(model, builder: NeedleBuilder, docs: list[np.ndarray], length: int,
                     depths: int = 10, per_depth: int = 10, seed: int = 0) -> dict[float, float]:
    """Exact-match pass-key accuracy at `length` per depth, on `docs` (the evaluation pool)."""
    samples = make_samples(builder, docs, length, depths, seed, per_depth)
    hits: dict[float, list[bool]] = {}
    for s in samples:
        hits.setdefault(s.depth, []).append(answer_scores(model, s)[1])
    return {d: sum(v) / len(v) for d, v in hits.items()}


def finetune(init: str | Path, out: str | Path, *, steps: int = 2000, seed: int = 0,
             batch_size: int = 16, passkey_frac: float = 0.5, answer_weight: float = 4.0,
             lr: float = 1e-3, warmup: int = 50, threads: int = 2, progress: bool = True,
             command: str | None = None) -> dict:
    """Fine-tune the model in `init` and save it with its tokenizer to `out`; return the record
    (training.json gains a "retrieval" entry next to the stage-1 record)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    t0 = time.time()
    init, out = Path(init), Path(out)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(init))
    builder = NeedleBuilder(tok)
    texts = training_texts()
    stream, starts = _token_stream(tok, texts)
    # each training document without its BOS, cut from the stream rather than tokenized again
    docs = [d[1:] for d in np.split(stream.numpy(), starts[1:].numpy()) if len(d) - 1 > 3 * SEQ_LEN]
    model = load_fp32(init).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    n_key = round(batch_size * passkey_frac)
    ema = None
    bar = tqdm(range(steps), disable=not progress, desc="retrieval", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, lr, warmup, steps)
        plain = _sample_batch(stream, starts, batch_size - n_key, gen, 0.02)[:, :SEQ_LEN]
        keyed, answer = passkey_batch(builder, docs, n_key, rng)
        batch = torch.cat([plain, keyed])
        logits = model(input_ids=batch[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        mask = torch.cat([torch.zeros(len(plain), SEQ_LEN - 1, dtype=torch.bool), answer])
        loss = nll.mean() + answer_weight * nll[mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        bar.set_postfix(loss=f"{ema:.3f}", answer=f"{float(nll[mask].mean()):.3f}")
    bar.close()
    model.eval()
    theta = json.loads((init / "config.json").read_text()).get("rope_theta", 10000.0)
    stage1 = json.loads((init / "training.json").read_text()) if (init / "training.json").exists() else {}
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(out))
    if init.resolve() != out.resolve():  # stage 1's tokenizer files (patched for 4.57), unchanged
        for name in ("tokenizer.json", "tokenizer_config.json", "split.json"):
            if (init / name).exists():
                (out / name).write_bytes((init / name).read_bytes())
    cfg = json.loads((out / "config.json").read_text())  # save_pretrained drops the top-level
    cfg["rope_theta"] = theta  # rope_theta transformers 4.x reads
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    record = {"steps": steps, "batch_size": batch_size, "passkey_frac": passkey_frac,
              "answer_weight": answer_weight, "peak_lr": lr, "warmup_steps": warmup, "seed": seed,
              "schedule": "linear warmup, cosine decay to 0.1 x peak", "seq_len": SEQ_LEN,
              "wall_seconds": round(time.time() - t0, 1), "final_loss_smoothed": ema,
              "train_docs_for_keys": len(docs), "command": command}
    stage1 = stage1.get("stage1", stage1)
    (out / "training.json").write_text(json.dumps({"stage1": stage1, "retrieval": record}, indent=2) + "\n")
    return record


def report(folder: str | Path, lengths: Sequence[int] = (SEQ_LEN, 8 * SEQ_LEN), per_depth: int = 10) -> dict:
    """Pass-key accuracy by depth at each length on the evaluation pool, plain RoPE."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    builder = NeedleBuilder(tok)
    docs = [np.asarray(d) for d in tok(eval_texts(), add_special_tokens=False)["input_ids"]]
    docs = [d for d in docs if len(d) >= 2 * max(lengths)]
    model = load_fp32(folder)
    return {str(n): passkey_by_depth(model, builder, docs, n, per_depth=per_depth) for n in lengths}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m longrope.objectives.builtin.retrieval_tune",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--init", help="stage-1 model folder (train_tiny's output)")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="train stage 1 (train_tiny.py, this many steps) into --out first, instead of --init")
    p.add_argument("--out", required=True, help="output folder (may equal --init)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and keys")
    p.add_argument("--batch-size", type=int, default=16, help="samples of 128 tokens per step")
    p.add_argument("--passkey-frac", type=float, default=0.5, help="share of pass-key samples")
    p.add_argument("--answer-weight", type=float, default=4.0, help="extra weight of the answer NLL")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--report-only", action="store_true", help="only print --init's pass-key table")
    p.add_argument("--alibi", action="store_true", help="with --pretrain-steps: stage 1 with ALiBi instead "
                   "of RoPE (builtin/tiny-sotu-alibi); an --init folder says itself which it is")
    args = p.parse_args(argv)
    cmd = shlex.join(["python", "-m", "longrope.objectives.builtin.retrieval_tune",
                      *(sys.argv[1:] if argv is None else argv)])
    if args.pretrain_steps:
        train(args.out, steps=args.pretrain_steps, seed=args.seed, evaluate=False,
              progress=not args.no_progress, command=cmd, alibi=args.alibi)
        args.init = args.out
    if not args.init:
        p.error("give --init, or --pretrain-steps to train stage 1 first")
    if not args.report_only:
        rec = finetune(args.init, args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                       passkey_frac=args.passkey_frac, answer_weight=args.answer_weight, lr=args.lr,
                       progress=not args.no_progress, command=cmd)
        print(json.dumps(rec, indent=2), file=sys.stderr)
    table = report(args.init if args.report_only else args.out)
    for n, row in table.items():
        cells = " ".join(f"{v:.2f}" for v in row.values())
        print(f"passkey @ {n:>5} by depth 0..1: {cells}  mean {np.mean(list(row.values())):.3f}"
              f"  min {min(row.values()):.2f}")
    return 0 if all(math.isfinite(v) for r in table.values() for v in r.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
