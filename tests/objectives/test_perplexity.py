import math

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from longrope.objectives import perplexity
from longrope.objectives.perplexity import COMPLETE, FAILED, PRUNED, document_nll, score
from longrope.spaces import RescaleFactors

F = RescaleFactors.uniform(1.0, 4)


class _Rot:
    def set_factors(self, f):
        self.f = f


@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_chunked_nll_equals_labels_loss(tiny_model_dir, chunk):
    m = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, m.config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(ids, labels=ids).loss.item()
        per_token = torch.nn.functional.cross_entropy(m(ids).logits[0, :-1], ids[0, 1:], reduction="none")
    mean, tail = document_nll(m, ids[0].numpy(), chunk=chunk)
    assert mean == pytest.approx(ref, abs=1e-5)
    # the tail is the last quarter of the 99 scored tokens: the final 24
    assert tail == pytest.approx(per_token[-24:].mean().item(), abs=1e-5)
    assert tail != pytest.approx(per_token[-25:].mean().item(), abs=1e-5)


def fake_nll(values):
    it = iter(values)
    return lambda model, ids, chunk: (next(it), 0.0)


@settings(max_examples=300, deadline=None)
@given(nlls=st.lists(st.floats(0, 10), min_size=1, max_size=6), thr_log=st.floats(0.01, 10))
def test_early_abort_never_prunes_a_candidate_under_threshold(nlls, thr_log):
    docs = [np.zeros(8, np.int64)] * len(nlls)
    full = math.exp(sum(nlls) / len(nlls))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(perplexity, "document_nll", fake_nll(nlls))
        ev = score(None, _Rot(), F, docs, threshold=math.exp(thr_log))
    if full < math.exp(thr_log):
        assert ev.status == COMPLETE and ev.ppl == pytest.approx(full)
    if ev.status == PRUNED:
        assert full > math.exp(thr_log) and ev.ppl <= full + 1e-9  # bound is a lower bound


def test_early_abort_prunes_an_obvious_loser(monkeypatch):
    monkeypatch.setattr(perplexity, "document_nll", fake_nll([9.0, 9.0, 9.0, 9.0, 9.0]))
    ev = score(None, _Rot(), F, [np.zeros(8, np.int64)] * 5, threshold=math.exp(1.0))
    assert ev.status == PRUNED and len(ev.doc_nll) == 1 and ev.tokens == 8
    assert "after 1/5 documents" in ev.reason


def test_nan_is_a_failed_evaluation(monkeypatch):
    monkeypatch.setattr(perplexity, "document_nll", fake_nll([1.0, float("nan")]))
    ev = score(None, _Rot(), F, [np.zeros(8, np.int64)] * 2)
    assert ev.status == FAILED and ev.ppl == math.inf and "nan" in ev.reason.lower()


def test_the_tail_of_a_span_under_four_tokens_is_its_last_token():
    """eval --lengths 2,3 --tail printed nan: a quarter of under 4 tokens is none."""
    from longrope.objectives.perplexity import mean_and_tail

    nll = torch.tensor([1.0, 2.0, 4.0])
    assert mean_and_tail(nll) == (pytest.approx(7 / 3), 4.0)
    assert mean_and_tail(torch.arange(8.0)) == (3.5, 6.5)  # 4 and more: the last quarter, as before


def test_an_infinite_nll_fails_the_candidate():
    """answer_scores turns a NaN needle NLL into inf on purpose: only this check makes such a
    candidate FAILED (with a reason) instead of a complete trial of ppl inf."""
    import math
    from types import SimpleNamespace

    from longrope.objectives.perplexity import FAILED, score_items

    rot = SimpleNamespace(set_factors=lambda f: None)
    out = score_items(rot, None, [0, 1], 64, None, "samples", lambda items: [(math.inf, False, 64) for _ in items])
    assert out.status == FAILED and out.ppl == math.inf
