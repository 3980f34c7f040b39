"""Long-context perplexity, chunked, with exact early abort.

ppl = exp(mean over documents of each document's mean token NLL). The LM head
runs on the final hidden states in chunks of positions, so the L × vocab
logits never exist at once (64 GB at 128k tokens × 128k vocab in fp32). The
decoder, the head and the model's own logit post-processing (Granite divides
by logits_scaling, Cohere multiplies by logit_scale) come from the table in
longrope.spaces.architectures, and run on each chunk in float32.

Early abort is exact, not a heuristic: token NLLs are >= 0, so after k of n
documents the final mean is at least (sum of the k document NLLs) / n. Once
that bound exceeds ln(threshold) the candidate cannot score under the
threshold (the worst surviving parent), and it is recorded as pruned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longrope.spaces import Architecture, RescaleFactors, architecture_of

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


@dataclass(frozen=True)
class Evaluation:
    """One candidate scored at one length."""

    factors: RescaleFactors
    length: int
    status: str  # complete | pruned | failed
    ppl: float  # exp(mean doc NLL); for pruned: the lower bound that pruned it; inf when failed
    doc_nll: tuple[float, ...] = ()  # mean token NLL of each document scored
    tokens: int = 0  # tokens run through the model
    seconds: float = 0.0
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == COMPLETE


def document_nll(model: Any, ids: np.ndarray, chunk: int = 1024) -> tuple[float, float]:
    """(mean token NLL, mean NLL over the last quarter) of one document, one forward pass."""
    import torch

    arch = architecture_of(model.config)
    decoder, head = getattr(model, arch.decoder), getattr(model, arch.head)
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)[None]
    with torch.no_grad():
        hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[0]
        targets = x[0, 1:]
        n = targets.numel()
        nll = torch.empty(n, dtype=torch.float32, device=device)
        for a in range(0, n, chunk):
            logits = postprocess_logits(head(hidden[a : a + chunk][: n - a]).float(), arch, model.config)
            t = targets[a : a + chunk]
            nll[a : a + t.numel()] = torch.logsumexp(logits, -1) - logits.gather(1, t[:, None])[:, 0]
        q = n - n // 4
        return float(nll.mean()), float(nll[q:].mean()) if n - q else float("nan")


def postprocess_logits(logits: Any, arch: Architecture, config: Any) -> Any:
    """What the architecture's ForCausalLM.forward does to lm_head's output, in the same order."""
    if arch.logits_divided_by:
        logits = logits / float(getattr(config, arch.logits_divided_by))
    if arch.logits_multiplied_by:
        logits = logits * float(getattr(config, arch.logits_multiplied_by))
    return logits


def score(
    model: Any,
    rotary: Any,
    factors: RescaleFactors,
    docs: list[np.ndarray],
    threshold: float | None = None,
    chunk: int = 1024,
) -> Evaluation:
    """Score a candidate on `docs` (each already cut to the target length).

    threshold: a perplexity; stop once the candidate provably cannot get under it.
    """
    t0 = time.perf_counter()
    rotary.set_factors(factors)
    length = len(docs[0])
    n = len(docs)
    log_thr = math.log(threshold) if threshold is not None and math.isfinite(threshold) else None
    nlls: list[float] = []
    tails: list[float] = []
    tokens = 0
    for i, d in enumerate(docs):
        v, tail = document_nll(model, d, chunk)
        tokens += len(d)
        if not math.isfinite(v):
            return Evaluation(factors, length, FAILED, math.inf, tuple(nlls), tokens,
                              time.perf_counter() - t0, reason=f"NLL is {v} on document {i}")
        nlls.append(v)
        tails.append(tail)
        bound = sum(nlls) / n
        if log_thr is not None and i < n - 1 and bound > log_thr:
            return Evaluation(factors, length, PRUNED, math.exp(bound), tuple(nlls), tokens,
                              time.perf_counter() - t0,
                              reason=f"lower bound {math.exp(bound):.4f} > threshold {threshold:.4f} "
                                     f"after {i + 1}/{n} documents")
    ppl = math.exp(sum(nlls) / n)
    return Evaluation(factors, length, COMPLETE, ppl, tuple(nlls), tokens, time.perf_counter() - t0,
                      extra={"tail_ppl": math.exp(sum(tails) / n)})
