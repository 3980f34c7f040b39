"""The scorer's last step, eager or compiled: the LM head and each token's NLL on a chunk of positions.

token_nll (perplexity.py) runs the decoder once, then this on chunks of 1024 final hidden states:
logits = head(h) in the model's dtype, the architecture's post-processing (Granite divides by
logits_scaling, Cohere multiplies by logit_scale), and NLL = logsumexp(logits) - logits[target]
in float32. Eagerly, the float32 cast and logsumexp (max, subtract, exp, sum, log) each make a
full pass over the [chunk, vocab] block. On an H200 at 16k (issue 18, session 14) the scorer took
57.0 ms where a forward that writes every bf16 logit but computes no loss took 46.4 ms: those
passes, which put the scorer at 0.323 of the card's bf16 matmul rate against the goal's 0.35.
torch.compile fuses them into one reduction over the head's output, which it reads once.

``[model] nll``: "eager", "compiled", or "auto": compiled on CUDA (triton ships with CUDA torch),
eager on CPU, where inductor needs a C++ compiler a laptop may lack. A compile that fails (no
compiler, an unsupported op) warns once and scores eagerly: the same NLLs to float32 rounding
(a fused reduction sums in another order), never a failed evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from longrope.spaces import Architecture

from .devices import out_of_memory

KINDS = ("auto", "eager", "compiled")
ATTR = "_longrope_nll"  # set on a loaded model: "eager" or "compiled" (set_kind)

_compiled: Any = None  # torch.compile(head_nll), made on first use, one per process
failures: dict[str, str] = {}  # device type -> why the compile failed there (warned once)


def resolve(kind: str, device: str) -> str:
    """What `kind` means on `device`: auto is compiled on CUDA, eager elsewhere."""
    if kind == "auto":
        return "compiled" if str(device).startswith("cuda") else "eager"
    return kind


def set_kind(model: Any, kind: str) -> str:
    """Make token_nll score `model` with `kind` (auto resolved on the model's device)."""
    if kind not in KINDS:
        raise ValueError(f"nll kind {kind!r}: one of {KINDS}")
    kind = resolve(kind, next(model.parameters()).device)
    setattr(model, ATTR, kind)
    return kind


def logit_scales(arch: Architecture, config: Any) -> tuple[float, float]:
    """(divide, multiply): what the architecture's ForCausalLM.forward does to lm_head's output."""
    divide = float(getattr(config, arch.logits_divided_by)) if arch.logits_divided_by else 1.0
    multiply = float(getattr(config, arch.logits_multiplied_by)) if arch.logits_multiplied_by else 1.0
    return divide, multiply


def postprocess(logits: Any, divide: float, multiply: float) -> Any:
    """logits / divide * multiply, in that order (x / 1.0 and x * 1.0 are exact: skipped)."""
    if divide != 1.0:
        logits = logits / divide
    if multiply != 1.0:
        logits = logits * multiply
    return logits


def nll_of(logits: Any, targets: Any) -> Any:
    """-log softmax(logits)[target] for each row: logsumexp(row) - row[target]."""
    import torch

    return torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None])[:, 0]


def head_nll(hidden: Any, targets: Any, weight: Any, bias: Any, divide: float, multiply: float) -> Any:
    """NLL of each target: lm_head's logits (its weight and bias, in their dtype), post-processed
    and log-softmaxed in float32."""
    import torch.nn.functional as F

    return nll_of(postprocess(F.linear(hidden, weight, bias).float(), divide, multiply), targets)


def chunk_nll(model: Any, arch: Architecture) -> Callable[[Any, Any], Any]:
    """(hidden chunk, targets) -> NLLs for `model`, with the kind set on it (eager by default)."""
    import torch

    head = getattr(model, arch.head)
    divide, multiply = logit_scales(arch, model.config)
    if not isinstance(head, torch.nn.Linear):  # every type in the architecture table has one
        raise TypeError(f"{arch.head} is a {type(head).__name__}, not the Linear head the scorer reads")
    w, b = head.weight, head.bias

    def eager(h: Any, t: Any) -> Any:
        return head_nll(h, t, w, b, divide, multiply)

    if getattr(model, ATTR, "eager") != "compiled":
        return eager

    def compiled(h: Any, t: Any) -> Any:
        global _compiled
        if getattr(model, ATTR) != "compiled" or h.device.type in failures:  # failed before
            setattr(model, ATTR, "eager")
            return eager(h, t)
        try:
            if _compiled is None:
                # default shapes: the first chunk's size is compiled static; the first other size
                # (a document's last chunk) recompiles once with the chunk's length dynamic
                _compiled = torch.compile(head_nll)
            return _compiled(h, t, w, b, divide, multiply)
        except torch.cuda.OutOfMemoryError:
            raise  # batch_nll halves the batch on it
        except Exception as e:  # no C++ compiler, no triton, an op inductor refuses: score eagerly
            oom = _out_of_memory(e)
            if oom is not None:  # out of memory while compiling: a smaller batch, not the eager head
                raise oom from None
            setattr(model, ATTR, "eager")
            _warn_once(h.device.type, e)
            return eager(h, t)

    return compiled


def warm_up(model: Any, arch: Architecture, chunk: int = 1024) -> None:
    """Compile now, when the model is loaded, rather than inside the first candidate's evaluation
    (its recorded seconds, the ETA): a full chunk, then another size, which recompiles with the
    chunk's length dynamic, as a document's last chunk would. Nothing to do for an eager model."""
    import torch

    if getattr(model, ATTR, "eager") != "compiled":
        return
    w = getattr(model, arch.head).weight
    run = chunk_nll(model, arch)
    with torch.no_grad():
        for n in (chunk, chunk - 1):
            run(torch.zeros(n, w.shape[1], dtype=w.dtype, device=w.device),
                torch.zeros(n, dtype=torch.long, device=w.device))


def _out_of_memory(e: BaseException | None) -> BaseException | None:
    """The out-of-memory error behind a compile failure, if one is (devices.out_of_memory): Dynamo
    re-raises what its backend raised (inductor benchmarks kernels on the GPU) as
    BackendCompilerFailed, holding it as `inner_exception`, or in the exception's cause or context."""
    seen: set[int] = set()
    found = None
    while e is not None and id(e) not in seen:
        if out_of_memory(e):  # torch's allocator's, or CUDA's own; the innermost (a wrapper quotes it)
            found = e
        seen.add(id(e))
        e = getattr(e, "inner_exception", None) or e.__cause__ or e.__context__
    return found


def _warn_once(device: str, e: BaseException) -> None:
    if device in failures:
        return
    first = (str(e).strip().splitlines() or [""])[0][:200]
    failures[device] = f"{type(e).__name__}: {first}"
    print(f"warning: torch.compile of the scorer's head failed on {device} ({failures[device]}); "
          "scoring with the eager head (the same NLLs to float32 rounding, slower); "
          "set [model] nll = \"eager\" to skip the attempt", file=sys.stderr)
