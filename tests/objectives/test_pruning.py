"""Pruning rules (objectives/pruning.py): the exact bound never prunes a candidate that would
beat the cut-off; the Wilcoxon rule (Optuna's WilcoxonPruner) prunes a consistently worse
candidate after a few items, and not one that is better on average."""

import math

import numpy as np
import pytest

from longrope.objectives import perplexity
from longrope.objectives.perplexity import COMPLETE, PRUNED, score
from longrope.objectives.pruning import Cutoff, as_cutoff
from longrope.spaces import RescaleFactors

F = RescaleFactors.uniform(1.0, 4)
REF = tuple(2.0 + 0.3 * math.sin(k) for k in range(12))  # the worst parent's NLL per document


class _Rot:
    def set_factors(self, f):
        self.f = f


def scored(monkeypatch, nlls, cut):
    it = iter(nlls)
    monkeypatch.setattr(perplexity, "document_nll", lambda model, ids, chunk: (next(it), 0.0))
    return score(None, _Rot(), F, [np.zeros(8, np.int64)] * len(nlls), threshold=cut)


def test_wilcoxon_prunes_a_consistently_worse_candidate_long_before_the_exact_bound(monkeypatch):
    worse = [v + 0.1 for v in REF]  # 5% worse on every document
    parent_ppl = math.exp(sum(REF) / len(REF))
    exact = scored(monkeypatch, worse, Cutoff(parent_ppl, "exact"))
    wil = scored(monkeypatch, worse, Cutoff(parent_ppl, "wilcoxon", REF, p=0.1))
    assert exact.status == COMPLETE  # 5% worse: no bound on a partial sum can show it
    assert wil.status == PRUNED and len(wil.doc_nll) == 4  # p = 1/16 < 0.1 after 4 paired items
    assert "Wilcoxon" in wil.reason and wil.ppl <= math.exp(sum(worse) / len(worse))


def test_wilcoxon_startup_and_p_set_the_first_document_it_can_prune_at(monkeypatch):
    # one-sided signed-rank test: after k documents all worse, p = 2^-k; with p 0.3 and a startup
    # of 2 the candidate goes after 2 documents (0.25 < 0.3), with Cutoff's own startup (3) after 3
    worse = [v + 0.1 for v in REF]
    parent_ppl = math.exp(sum(REF) / len(REF))
    early = scored(monkeypatch, worse, Cutoff(parent_ppl, "wilcoxon", REF, p=0.3, startup=2))
    assert early.status == PRUNED and len(early.doc_nll) == 2
    assert len(scored(monkeypatch, worse, Cutoff(parent_ppl, "wilcoxon", REF, p=0.3)).doc_nll) == 3


def test_wilcoxon_compares_the_same_documents_when_the_first_ones_are_easy(monkeypatch):
    # documents in a fixed order, the first ones easiest: the candidate's first four (mean 1.70)
    # beat the parent's mean over all twelve (2.05) though it is worse on every one of them;
    # Optuna's never-prune-a-better-mean safety must see the parent's same four documents
    ramp = tuple(1.5 + 0.1 * k for k in range(12))
    worse = [v + 0.05 for v in ramp]
    ev = scored(monkeypatch, worse, Cutoff(math.exp(sum(ramp) / 12), "wilcoxon", ramp, p=0.1))
    assert ev.status == PRUNED and len(ev.doc_nll) == 4


def test_wilcoxon_keeps_a_candidate_that_is_better_on_average(monkeypatch):
    # the eventual best of a crafted search: worse than the parent on three documents (the
    # first among them), better on the other nine; the test may not drop it on the way
    better = [v + 0.2 if k in (0, 3, 7) else v - 0.1 for k, v in enumerate(REF)]
    ev = scored(monkeypatch, better, Cutoff(math.exp(sum(REF) / len(REF)), "wilcoxon", REF, p=0.1))
    assert ev.status == COMPLETE and ev.ppl < math.exp(sum(REF) / len(REF))


def test_wilcoxon_needs_the_parent_values_else_it_is_the_exact_bound(monkeypatch):
    worse = [v + 0.1 for v in REF]
    ev = scored(monkeypatch, worse, Cutoff(math.exp(sum(REF) / len(REF)), "wilcoxon", ()))
    assert ev.status == COMPLETE
    far = scored(monkeypatch, [v + 5 for v in REF], Cutoff(math.exp(sum(REF) / len(REF)), "wilcoxon", ()))
    assert far.status == PRUNED and "lower bound" in far.reason and len(far.doc_nll) == 4


def test_a_bare_threshold_is_the_exact_rule_and_bad_rules_are_refused():
    assert as_cutoff(3.0) == Cutoff(3.0, "exact") and as_cutoff(None) is None
    with pytest.raises(ValueError, match="unknown pruning rule"):
        Cutoff(3.0, "median")
