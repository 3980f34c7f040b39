"""Long-context perplexity, chunked, with exact early abort.

ppl = exp(mean over documents of each document's mean token NLL). The LM head
runs on the final hidden states in chunks of positions, so the L × vocab
logits never exist at once (64 GB at 128k tokens × 128k vocab in fp32). The
decoder, the head and the model's own logit post-processing (Granite divides
by logits_scaling, Cohere multiplies by logit_scale) come from the table in
longrope.spaces.architectures, and run on each chunk in float32 (headnll.py: eagerly, or
fused by torch.compile on a GPU).

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

from longrope.spaces import RescaleFactors, architecture_of

from .devices import out_of_memory, release_memory
from .headnll import chunk_nll
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
    (a float32 tensor of len(ids) - first values). A 2-D `ids` [B, n] runs B documents of one
    length in one forward and gives [B, n - first]."""
    import torch

    arch = architecture_of(model.config)
    decoder, head_nll = getattr(model, arch.decoder), chunk_nll(model, arch)
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)
    single = x.dim() == 1
    x = x[None] if single else x
    with torch.no_grad():
        hidden = decoder(input_ids=x, use_cache=False).last_hidden_state
        targets = x[:, first:].reshape(-1)
        n = x.shape[1] - first
        hidden = hidden[:, first - 1 : first - 1 + n].reshape(-1, hidden.shape[-1])  # predict targets
        nll = torch.empty(targets.numel(), dtype=torch.float32, device=device)
        for a in range(0, targets.numel(), chunk):
            # the head in the model's dtype, the log-softmax in float32 whatever that dtype is
            t = targets[a : a + chunk]
            nll[a : a + t.numel()] = head_nll(hidden[a : a + chunk], t)
        return nll[:n] if single else nll.view(x.shape[0], n)


OOM_AT = "_longrope_oom_at"  # model attribute: {length: the fewest documents known not to fit}


def batch_nll(model: Any, docs: list[np.ndarray], chunk: int = 1024) -> list[tuple[float, float, int]]:
    """document_nll of each of `docs` (one length) from one batched forward: (mean, tail, tokens)
    per document. When the batch does not fit in GPU memory it is halved, down to one document;
    the replica remembers the size that failed at this length and halves larger batches before
    trying them (each would fail again: a wasted forward per batch, every candidate)."""
    length, failed = len(docs[0]), getattr(model, OOM_AT, {})
    if len(docs) > 1 and len(docs) >= failed.get(length, len(docs) + 1):
        half = len(docs) // 2
        return batch_nll(model, docs[:half], chunk) + batch_nll(model, docs[half:], chunk)
    try:
        rows = token_nll(model, np.stack(docs), chunk)
    except RuntimeError as e:  # torch's allocator's out of memory, or CUDA's own (devices.out_of_memory)
        if len(docs) == 1 or not out_of_memory(e):
            raise
        rows = None  # retried below: in here the error's traceback holds the failed forward's tensors
    if rows is None:
        release_memory()  # what the failed forward allocated is freed before the smaller one runs
        setattr(model, OOM_AT, {**failed, length: len(docs)})  # below any size that failed before
        return batch_nll(model, docs, chunk)  # halved, now that this size is known not to fit
    return [(*mean_and_tail(row), len(d)) for row, d in zip(rows, docs, strict=True)]


def mean_and_tail(nll: Any) -> tuple[float, float]:
    """(mean, mean over the last quarter, at least the last token) of a vector of token NLLs."""
    n = nll.numel()
    q = n - max(n // 4, 1)
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
    remaining tokens (up to window - stride) as context. Each token is scored once. A document
    longer than the window needs stride < window: a later window's first token needs context."""
    if n > window and not 0 < stride < window:
        raise ValueError(f"stride {stride} must be in [1, {window - 1}] for {n} tokens in windows of "
                         f"{window}")
    out = [(0, min(window, n), 1)]
    while out[-1][1] < n:
        end = min(out[-1][1] + stride, n)
        out.append((max(end - window, 0), end, out[-1][1]))
    return out


def strided_token_nll(model: Any, ids: np.ndarray, window: int, stride: int, chunk: int = 1024) -> Any:
    """NLL of each token ids[1:] (a float32 tensor), each scored once by the sliding windows of
    stride_windows(len(ids), window, stride)."""
    import torch

    walk = stride_windows(len(ids), window, stride)
    return torch.cat([token_nll(model, ids[a:b], chunk, first - a) for a, b, first in walk])


def strided_nll(model: Any, ids: np.ndarray, window: int, stride: int,
                chunk: int = 1024) -> tuple[float, float, int]:
    """(mean token NLL, last-quarter mean, tokens run) of one document scored by sliding windows
    of `window` tokens advancing by `stride`; stride >= len(ids) is document_nll's single pass."""
    runs = sum(b - a for a, b, _ in stride_windows(len(ids), window, stride))
    return (*mean_and_tail(strided_token_nll(model, ids, window, stride, chunk)), runs)


def score(
    model: Any,
    rotary: Any,
    factors: RescaleFactors | None,
    docs: list[np.ndarray],
    threshold: float | Cutoff | None = None,
    chunk: int = 1024,
    stride: int | None = None,
    window: int | None = None,
    batch: int = 1,
) -> Evaluation:
    """Score a candidate on `docs` (each already cut to the target length): document perplexity.

    threshold: the Cutoff to stop at (pruning.py), or a bare ppl for the exact bound.
    factors None: the model's own rotary (eval's ``native``).
    stride: sliding windows of `window` tokens (the target length) advancing by `stride` over
    each document (cut to stride_span(window, stride) tokens); None: one pass over each.
    batch: documents per forward (``workers.batch_docs``; single passes only); the early abort
    then looks at each batch's documents in order, so it stops where one at a time stops.
    """
    if stride is None and batch > 1:
        out = score_items(rotary, factors, docs, len(docs[0]), threshold, "documents",
                          lambda group: batch_nll(model, group, chunk), batch)
    elif stride is None:
        out = score_items(rotary, factors, docs, len(docs[0]), threshold, "documents",
                          each(lambda d: (*document_nll(model, d, chunk), len(d))))
    else:
        out = score_items(rotary, factors, docs, window or len(docs[0]), threshold, "documents",
                          each(lambda d: strided_nll(model, d, window or len(d), stride, chunk)))
    if out.ok:
        tails = out.extra.pop("side")
        out.extra["tail_ppl"] = math.exp(sum(tails) / len(tails))
    return out


def each(measure):
    """A one-item measure as the list-of-items measure score_items takes."""
    return lambda items: [measure(item) for item in items]


def score_items(rotary: Any, factors: RescaleFactors | None, items: list, length: int,
                threshold: float | Cutoff | None, what: str, measure, batch: int = 1) -> Evaluation:
    """The scoring loop every objective shares: ``measure(items) -> [(nll, side, tokens)]`` for
    `batch` items at a time (documents, needle samples), ppl = exp(mean nll), and the exact
    early abort.

    threshold: a Cutoff (pruning.py: the exact bound, or the exact bound and a Wilcoxon test
    against the worst parent), or a bare ppl for the exact bound; a candidate stopped by it is
    recorded as pruned, its score the exact lower bound. Within a batch the items are looked
    at in order, so the verdict and the recorded NLLs do not depend on the batch size (only
    the tokens run do).
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
    size = max(batch, 1)
    for start in range(0, n, size):
        results = measure(items[start : start + size])
        tokens += sum(used for _, _, used in results)
        for i, (v, extra, _) in enumerate(results, start):
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
