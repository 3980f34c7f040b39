"""The scorer's head and NLL on the card: is its float32 log-softmax worth fusing? (issue 18, the
bench speed measure at 0.323 of the matmul rate against the goal's 0.35.)

perplexity.token_nll runs the decoder once, then the LM head and the NLL over chunks of 1024
positions: logits in float32, NLL = logsumexp(logits) - logits[target], which reads each
[chunk, vocab] block several times. This times, at length L on one document, the decoder alone
and the head + NLL in four forms (logsumexp or F.cross_entropy, chunks of 1024 or 4096), and
gives each form's largest NLL difference from the scorer's own: the digits every stored result
depends on. Nothing here changes the scorer. Usage: nll_head.py [cuda|cpu] [L]; M= picks the model
(builtin:smollm2-135m; builtin:tiny-sotu for a dry run on CPU).
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

from longrope.objectives.devices import device_name, median_seconds
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
