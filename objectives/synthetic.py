"""A synthetic objective with the evaluator interface, for tests and benchmarks.

``synthetic:COST`` (COST = seconds of sleep per document, default 0) scores a
candidate by a smooth function of (λ, n̂) that has a known optimum, returned
as five per-document NLLs so early abort behaves as on real text. It is not a
language model and never stands in for one silently: its name says what it is.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from longrope.spaces import RescaleFactors, RopeGeometry, UserError

from .methods import method_factors
from .perplexity import COMPLETE, FAILED, PRUNED, Evaluation
from .pruning import as_cutoff

GEOMETRY = RopeGeometry(rotary_dim=16, base=10000.0, original_length=64, model_type="synthetic")
DOCS = 5


def parse_cost(model: str) -> float:
    arg = model.split(":", 1)[1] if ":" in model else ""
    try:
        return float(arg) if arg else 0.0
    except ValueError:
        raise UserError(f"synthetic objective takes a cost in seconds, got {model!r}") from None


class SyntheticEvaluator:
    def __init__(self, spec):
        self.spec = spec
        self.cost = parse_cost(spec.model.path)
        self.geometry = GEOMETRY
        self.calls = 0

    def check(self, lengths: list[int]) -> RopeGeometry:
        return self.geometry

    def check_pool(self, lengths: list[int], pool: str) -> None:
        """eval's check before it scores (a search is refused sooner, by search/plan.py)."""
        if self.spec.task.kind != "ppl":  # its one score would pass for needle perplexity or accuracy
            raise UserError("the synthetic objective has no text to hide a pass key in: it scores perplexity "
                            "only (objective.kind = \"ppl\", eval --task ppl)")

    def task_records(self, length: int, pool: str = "search") -> None:
        return None

    def precision(self) -> None:  # no model: nothing to score in
        return None

    def method(self, name: str, length: int):
        return method_factors(name, self.geometry, length)

    def target_curve(self, length: int) -> np.ndarray:
        """The optimum: λ rising smoothly from 1 to 1.1·s (like searched factors do)."""
        s = max(length / GEOMETRY.original_length, 1.0)
        x = np.linspace(0, 1, GEOMETRY.n_freqs)
        return 1 + (1.1 * s - 1) * x**2

    def evaluate(self, factors: RescaleFactors, length: int, threshold: float | None = None,
                 pool: str = "search", kind: str | None = None, stride: int | None = None) -> Evaluation:
        if not isinstance(factors, RescaleFactors):
            raise UserError("the synthetic objective scores factors only (no native rotary, no lm_infinite)")
        if stride is not None:
            raise UserError("the synthetic objective has no documents to slide a window over (--stride)")
        t0 = time.perf_counter()
        self.calls += 1
        lam = np.asarray(factors.lambdas)
        if not np.all(np.isfinite(lam)):
            return Evaluation(factors, length, FAILED, math.inf, reason="non-finite λ")
        err = float(np.mean((lam - self.target_curve(length)) ** 2))
        base = 2.0 + err + 0.02 * abs(math.log2(factors.n_hat + 1) - 2) + (0.0 if pool == "search" else 0.01)
        nlls: list[float] = []
        cut = as_cutoff(threshold)
        watch = cut.watch(DOCS) if cut is not None else None
        for d in range(DOCS):
            if self.cost:
                time.sleep(self.cost)
            nlls.append(base * (0.9 + 0.05 * d))
            why = watch.step(nlls[-1]) if watch is not None else None
            if why is not None:
                return Evaluation(factors, length, PRUNED, watch.bound, tuple(nlls), length * (d + 1),
                                  time.perf_counter() - t0, reason=f"{why} documents")
        return Evaluation(factors, length, COMPLETE, math.exp(sum(nlls) / DOCS), tuple(nlls),
                          length * DOCS, time.perf_counter() - t0, extra={"tail_ppl": math.exp(base)})

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()
