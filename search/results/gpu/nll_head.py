"""The scorer's head and NLL on the card: eager, fused by torch.compile, or F.cross_entropy? (issue 18,
the bench speed measure at 0.323 of the matmul rate against the goal's 0.35.)

perplexity.token_nll runs the decoder once, then the LM head and the NLL over chunks of 1024
positions (objectives/headnll.py): logits in float32, NLL = logsumexp(logits) - logits[target],
eagerly a handful of full passes over each [chunk, vocab] block; `[model] nll = "auto"` compiles it
on CUDA (session 19, before any GPU had run it). This times, at length L on one document, the
decoder alone and the head + NLL in five forms (eager logsumexp, F.cross_entropy, each at chunks
of 1024 and 4096, and headnll's compiled form at 1024, compile excluded: it is timed once apart),
and gives each form's largest NLL difference from the eager scorer's. Usage: nll_head.py
[cuda|cpu] [L]; M= picks the model (builtin:smollm2-135m; builtin:tiny-sotu for a dry run on CPU).
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from longrope.objectives.devices import device_name, median_seconds, sync
from longrope.objectives.headnll import head_nll as scorer_head_nll
from longrope.objectives.models import load_model
from longrope.spaces import architecture_of

MODEL = os.environ.get("M", "builtin:smollm2-135m")
REPS = int(os.environ.get("REPS", 5))


def head_nll(model, hidden, targets, chunk: int, fused: bool):
    """What token_nll's loop computes, as logsumexp - gather (the scorer's) or cross_entropy."""
    arch = architecture_of(model.config)
    head = getattr(model, arch.head)
    out = torch.empty(targets.numel(), dtype=torch.float32, device=hidden.device)
    for a in range(0, targets.numel(), chunk):
        logits = head(hidden[a : a + chunk]).float()
        t = targets[a : a + chunk]
        if fused:
            out[a : a + t.numel()] = F.cross_entropy(logits, t, reduction="none")
        else:
            out[a : a + t.numel()] = torch.logsumexp(logits, -1) - logits.gather(1, t[:, None])[:, 0]
    return out


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    length = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    m = load_model(MODEL, "bfloat16" if dev.startswith("cuda") else "float32", dev)
    model, arch = m.model, architecture_of(m.model.config)
    decoder = getattr(model, arch.decoder)
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=m.device)
    with torch.no_grad():
        def forward():
            return decoder(input_ids=ids, use_cache=False).last_hidden_state

        hidden = forward()[0, :-1]
        targets = ids[0, 1:]
        out = {"device": device_name(dev), "model": MODEL, "length": length,
               "decoder_seconds": median_seconds(forward, REPS, dev)}
        ref = head_nll(model, hidden, targets, 1024, False)
        compiled = torch.compile(scorer_head_nll)
        w, b = model.get_output_embeddings().weight, model.get_output_embeddings().bias

        def run_compiled():
            o = torch.empty(targets.numel(), dtype=torch.float32, device=hidden.device)
            for a in range(0, targets.numel(), 1024):
                t = targets[a : a + 1024]
                o[a : a + t.numel()] = compiled(hidden[a : a + 1024], t, w, b, 1.0, 1.0)
            return o

        t0 = time.perf_counter()
        try:  # a bare image may lack what inductor builds with (a C compiler, Python.h): the eager
            nll = run_compiled()  # forms below are measured all the same; compiles the first
            sync(dev)  # chunk's size, then the last chunk's
            out["compile_seconds"] = time.perf_counter() - t0
            out["compiled_1024"] = {"seconds": median_seconds(run_compiled, REPS, dev),
                                    "max_abs_diff": float((nll - ref).abs().max())}
        except Exception as e:  # noqa: BLE001 (any compile failure is a figure, not the end)
            why = (str(e).strip().splitlines() or [""])[0][:300]  # an empty message: no line
            out["compiled_1024"] = {"error": f"{type(e).__name__}: {why}"}
        for chunk in (1024, 4096):
            for fused in (False, True):
                name = f"{'cross_entropy' if fused else 'logsumexp'}_{chunk}"
                nll = head_nll(model, hidden, targets, chunk, fused)
                def run(c=chunk, f=fused):
                    return head_nll(model, hidden, targets, c, f)

                secs = median_seconds(run, REPS, dev)
                out[name] = {"seconds": secs, "max_abs_diff": float((nll - ref).abs().max())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
