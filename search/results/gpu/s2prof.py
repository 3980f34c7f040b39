"""Where a fine-tune step's time goes, S2-Attn against full attention (for the next GPU trip: on
the H200 S2-Attn took 1.47x full attention's time at 16k, timed cold; see README, "On a GPU").

The recipe's model set-up (objectives/finetune.py prepare: YaRN factors, LoRA+, gradient
checkpointing on CUDA), then per kind: 3 warm steps, `STEPS` timed steps (median), and one step
under torch.profiler whose top operators by device time are printed.
Usage: s2prof.py DEV [L] [STEPS]   (M=builtin:tiny-sotu DEV=cpu L=512 for a dry run here)
"""

import json
import os
import statistics
import sys
import time

import torch

from longrope.objectives.attention import set_attention
from longrope.objectives.devices import sync
from longrope.objectives.finetune import prepare, step_loss
from longrope.objectives.methods import method_factors
from longrope.objectives.models import load_model
from longrope.objectives.s2attn import register
from longrope.objectives.specs import FinetuneSpec

MODEL = os.environ.get("M", "builtin:smollm2-135m")


def main() -> None:
    dev = sys.argv[1]
    length = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    m = load_model(MODEL, "auto", dev)
    model = prepare(m.model, FinetuneSpec(), method_factors("yarn", m.geometry, length))
    if m.device == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    full, s2 = model.config._attn_implementation, register(length // 4)
    ids = torch.randint(0, m.model.config.vocab_size, (1, length), device=m.device)
    answer = torch.zeros_like(ids, dtype=torch.bool)

    def one_step():
        model.zero_grad(set_to_none=True)
        step_loss(model, ids, answer).backward()
        sync(m.device)

    out, tables = {"model": MODEL, "length": length}, {}
    for name, impl in (("s2", s2), ("full", full), ("s2_again", s2)):
        set_attention(model, impl)
        for _ in range(3):
            one_step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            one_step()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                        if m.device == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            one_step()
        key = "self_cuda_time_total" if m.device == "cuda" else "self_cpu_time_total"
        tables[name] = prof.key_averages().table(sort_by=key, row_limit=12)
    out["ratio"] = out["s2"] / out["full"]
    for name, t in tables.items():
        print(f"=== {name}\n{t}")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
