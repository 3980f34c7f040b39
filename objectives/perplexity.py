"""Long-context perplexity, chunked, with exact early abort.

ppl = exp(mean over documents of each document's mean token NLL). The LM head
runs on the final hidden states in chunks of positions, so the L × vocab
logits never exist at once (64 GB at 128k tokens × 128k vocab in fp32). The
decoder, the head and the model's own logit post-processing (Granite divides
by logits_scaling, Cohere multiplies by logit_scale) come from the table in
longrope.spaces.architectures, and run on each chunk in float32.

Scoring stops early when the candidate's Cutoff says so (pruning.py): the
exact bound (token NLLs are >= 0, so after k of n documents the final mean is
at least their sum / n) or, with the Wilcoxon rule, a paired test against the
worst surviving parent. A stopped candidate is recorded as pruned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longrope.spaces import Architecture, RescaleFactors, architecture_of

from .pruning import Cutoff, as_cutoff

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


def token_nll(model: Any, ids: np.ndarray, chunk: int = 1024, first: int = 1) -> Any:
    """NLL of each token ids[first:] given the tokens before it, from one forward pass of `ids`
    (a float32 tensor of len(ids) - first values)."""
    import torch

    arch = architecture_of(model.config)
    decoder, head = getattr(model, arch.decoder), getattr(model, arch.head)
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)[None]
    with torch.no_grad():
        hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[0]
        targets = x[0, first:]
        n = targets.numel()
        hidden = hidden[first - 1 : first - 1 + n]  # the positions that predict the targets
        nll = torch.empty(n, dtype=torch.float32, device=device)
        for a in range(0, n, chunk):
            logits = postprocess_logits(head(hidden[a : a + chunk]).float(), arch, model.config)
            t = targets[a : a + chunk]
            nll[a : a + t.numel()] = torch.logsumexp(logits, -1) - logits.gather(1, t[:, None])[:, 0]
        return nll


def mean_and_tail(nll: Any) -> tuple[float, float]:
    """(mean, mean over the last quarter) of a vector of token NLLs."""
    n = nll.numel()
    q = n - n // 4
    return float(nll.mean()), float(nll[q:].mean()) if n - q else float("nan")


def document_nll(model: Any, ids: np.ndarray, chunk: int = 1024) -> tuple[float, float]:
    """(mean token NLL, mean NLL over the last quarter) of one document, one forward pass."""
    return mean_and_tail(token_nll(model, ids, chunk))


def stride_span(window: int, stride: int) -> int:
    """How many tokens of each document a strided evaluation scores: 2L - S (L itself for S = L)."""
    return 2 * window - stride


def stride_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over n tokens: (start, end, first) = run ids[start:end], score ids[first:end].
    The first window scores all its tokens; each later one ends `stride` further (the last maybe
    less, to end at n) and scores only the tokens the previous one did not, with the window's
    remaining tokens (up to window - stride) as context. Each token is scored once."""
    out = [(0, min(window, n), 1)]
    while out[-1][1] < n:
        end = min(out[-1][1] + stride, n)
        out.append((max(end - window, 0), end, out[-1][1]))
    return out


def strided_nll(model: Any, ids: np.ndarray, window: int, stride: int,
                chunk: int = 1024) -> tuple[float, float, int]:
    """(mean token NLL, last-quarter mean, tokens run) of one document scored by sliding windows
    of `window` tokens advancing by `stride`; stride >= len(ids) is document_nll's single pass."""
    import torch

    parts = [token_nll(model, ids[a:b], chunk, first - a) for a, b, first in stride_windows(len(ids), window,
                                                                                              stride)]
    runs = sum(b - a for a, b, _ in stride_windows(len(ids), window, stride))
    return (*mean_and_tail(torch.cat(parts)), runs)


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
    factors: RescaleFactors | None,
    docs: list[np.ndarray],
    threshold: float | Cutoff | None = None,
    chunk: int = 1024,
    stride: int | None = None,
    window: int | None = None,
) -> Evaluation:
    """Score a candidate on `docs` (each already cut to the target length): document perplexity.

    threshold: the Cutoff to stop at (pruning.py), or a bare ppl for the exact bound.
    factors None: the model's own rotary (eval's ``native``).
    stride: sliding windows of `window` tokens (the target length) advancing by `stride` over
    each document (cut to stride_span(window, stride) tokens); None: one pass over each.
    """
    if stride is None:
        out = score_items(rotary, factors, docs, len(docs[0]), threshold, "documents",
                          lambda d: (*document_nll(model, d, chunk), len(d)))
    else:
        out = score_items(rotary, factors, docs, window or len(docs[0]), threshold, "documents",
                          lambda d: strided_nll(model, d, window or len(d), stride, chunk))
    if out.ok:
        tails = out.extra.pop("side")
        out.extra["tail_ppl"] = math.exp(sum(tails) / len(tails))
    return out


def score_items(rotary: Any, factors: RescaleFactors | None, items: list, length: int,
                threshold: float | Cutoff | None, what: str, measure) -> Evaluation:
    """The scoring loop every objective shares: ``measure(item) -> (nll, side, tokens)`` per
    item (a document, a needle sample), ppl = exp(mean nll), and the exact early abort.

    threshold: a Cutoff (pruning.py: the exact bound, or the exact bound and a Wilcoxon test
    against the worst parent), or a bare ppl for the exact bound; a candidate stopped by it is
    recorded as pruned, its score the exact lower bound.
    The side values (tail NLL, exact match) come back in extra["side"] for a complete score.
    """
    t0 = time.perf_counter()
    rotary.set_factors(factors)
    n = len(items)
    cut = as_cutoff(threshold)
    watch = cut.watch(n) if cut is not None else None
    nlls: list[float] = []
    side: list[Any] = []
    tokens = 0
    for i, item in enumerate(items):
        v, extra, used = measure(item)
        tokens += used
        if not math.isfinite(v):
            return Evaluation(factors, length, FAILED, math.inf, tuple(nlls), tokens,
                              time.perf_counter() - t0, reason=f"NLL is {v} on {what[:-1]} {i}")
        nlls.append(v)
        side.append(extra)
        why = watch.step(v) if watch is not None else None
        if why is not None:
            return Evaluation(factors, length, PRUNED, watch.bound, tuple(nlls), tokens,
                              time.perf_counter() - t0, reason=f"{why} {what}")
    return Evaluation(factors, length, COMPLETE, math.exp(sum(nlls) / n), tuple(nlls), tokens,
                      time.perf_counter() - t0, extra={"side": side})
