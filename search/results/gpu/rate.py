"""GPU cost figures for issue 18 (run by g3.sh): SmolLM2-135M's forward rate at L tokens against
the card's bf16 matmul rate, and the evaluator's time per candidate with 1 and 5 documents a
forward. The FLOP count and the matmul rate are the bench speed section's own
(search/cli/bench/timing.py forward_flops, objectives/devices.py matmul_rate); rate.json came from
this script's first form (its own copies of both, commit 5a4c11b), whose matmul rate was the mean
of 10 back-to-back 8192³ products (792 TFLOP/s on the H200) where matmul_rate takes the median of
single synchronised ones (743: speed.json). Usage: rate.py [cuda|cpu] [L].
"""

import dataclasses
import json
import os
import sys
import time

import torch

from longrope.objectives.devices import device_name, matmul_rate, sync
from longrope.objectives.models import load_model
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.search.cli.bench.timing import forward_flops
from longrope.spaces import method

REPS = int(os.environ.get("RATE_REPS", 5))
MODEL, DATA = "builtin:smollm2-135m", "builtin:sotu-train"


def timed(fn, dev: str, warm: int = 2, reps: int = REPS) -> float:
    """Mean seconds of `fn()` over `reps` back-to-back calls (as run on the H200; the bench's
    devices.median_seconds takes the median of single synchronised calls instead)."""
    for _ in range(warm):
        fn()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(dev)
    return (time.perf_counter() - t0) / reps


def forward(dev: str, length: int) -> dict:
    m = load_model(MODEL, "bfloat16", dev)
    c = m.model.config
    flops = forward_flops(m.model, length)
    ids = torch.randint(0, c.vocab_size, (1, length), device=m.device)
    with torch.no_grad():
        secs = timed(lambda: m.model(ids), dev)
    return {"forward_seconds": secs, "forward_tflop": flops / 1e12, "forward_tflops": flops / secs / 1e12,
            "attn_implementation": str(getattr(c, "_attn_implementation", "?"))}


def evaluation(dev: str, length: int, batch: int) -> dict:
    spec = ObjectiveSpec.of(MODEL, DATA, device=dev, dtype="bfloat16", search_docs=5, heldout_docs=3)
    ev = Evaluator(dataclasses.replace(spec, batch_docs=batch))
    f = method("yarn", ev.geometry, length)
    ev.evaluate(f, length)  # warm-up
    if dev == "cuda":  # the peak of this evaluation, not the process's: until session 36 both rows
        # showed the bare forward's (its bf16 logits alone 1.5 GiB at 16k), read before them
        sync(dev)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    e = ev.evaluate(f, length)
    s = time.perf_counter() - t0
    out = {"seconds": s, "tokens": e.tokens, "ppl": e.ppl, "s_per_1k": 1000 * s / e.tokens}
    if dev == "cuda":  # allocated before it (both models' weights) and the peak above that
        out["base_mem_gb"] = base / 2**30
        out["peak_above_base_gb"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    return out


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    length = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    out = {"device": device_name(dev), "length": length,
           "matmul_tflops": matmul_rate(dev, torch.bfloat16) / 1e12}
    out.update(forward(dev, length))
    out["forward_vs_matmul"] = out["forward_tflops"] / out["matmul_tflops"]
    for batch in (1, 5):
        out[f"eval_batch{batch}"] = evaluation(dev, length, batch)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
