"""workers.batch_docs: the documents of one candidate in one forward equal one at a time
(float32, 1e-5), the early abort stops where one at a time stops, and a batch that does not
fit in GPU memory is halved rather than lost."""

import math
import weakref

import numpy as np
import pytest
import torch
import transformers

from longrope.objectives import perplexity
from longrope.objectives.perplexity import COMPLETE, PRUNED, score
from longrope.objectives.rotary import patch_model
from longrope.objectives.specs import ObjectiveSpec
from longrope.search.config import from_dict
from longrope.spaces import RescaleFactors, UserError


@pytest.fixture(scope="module")
def patched(tiny_model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rot = patch_model(m)
    return m, rot


def _docs(vocab: int, n: int = 6, length: int = 64) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (length,), generator=gen).numpy() for _ in range(n)]


def _forwards(model) -> list[int]:
    """Count decoder forwards (and their batch sizes) through a hook."""
    seen: list[int] = []
    model.model.register_forward_hook(lambda mod, args, kw, out: seen.append(kw["input_ids"].shape[0]),
                                      with_kwargs=True)
    return seen


FACTORS = RescaleFactors((1.0, 1.1, 1.3, 1.6, 1.9, 2.2, 2.6, 3.0), n_hat=4, mscale=1.1)


@pytest.mark.parametrize("batch", [2, 4, 6, 16])
def test_batched_equals_one_at_a_time(patched, batch):
    m, rot = patched
    docs = _docs(m.config.vocab_size)
    one = score(m, rot, FACTORS, docs)
    seen = _forwards(m)
    many = score(m, rot, FACTORS, docs, batch=batch)
    m.model._forward_hooks.clear()
    assert len(seen) == math.ceil(6 / batch) and max(seen) == min(batch, 6)
    assert many.status == one.status == COMPLETE
    assert many.doc_nll == pytest.approx(one.doc_nll, abs=1e-5)
    assert many.ppl == pytest.approx(one.ppl, rel=1e-5)
    assert many.extra["tail_ppl"] == pytest.approx(one.extra["tail_ppl"], rel=1e-5)
    assert many.tokens == one.tokens == 6 * 64


def test_early_abort_stops_at_the_same_document(patched):
    m, rot = patched
    docs = _docs(m.config.vocab_size)
    full = score(m, rot, FACTORS, docs)
    # a threshold the exact bound crosses after the 3rd document: sum of 3 NLLs / 6 > log(thr)
    nll = full.doc_nll
    thr = math.exp((sum(nll[:3]) / 6 + sum(nll[:2]) / 6) / 2)
    one = score(m, rot, FACTORS, docs, threshold=thr)
    many = score(m, rot, FACTORS, docs, threshold=thr, batch=4)
    assert one.status == many.status == PRUNED and len(one.doc_nll) == 3
    assert many.doc_nll == pytest.approx(one.doc_nll, abs=1e-5)
    assert many.ppl == pytest.approx(one.ppl, rel=1e-5) and many.reason == one.reason
    assert many.tokens == 4 * 64  # the whole first batch ran
    # status's "early abort saved" counts what the pruned trial did not run, not its unscored
    # documents: 3 of 6 documents' tokens one at a time, 2 with the first batch of 4 run whole
    from optuna.trial import TrialState, create_trial

    from longrope.runs.status import tokens_saved
    from longrope.runs.vocab import DOC_NLL, TOKENS

    def trial(ev, state):
        return create_trial(state=state, value=ev.ppl if state == TrialState.COMPLETE else None,
                            user_attrs={DOC_NLL: list(ev.doc_nll), TOKENS: ev.tokens})
    done = trial(full, TrialState.COMPLETE)
    assert tokens_saved([done, trial(one, TrialState.PRUNED)]) == 3 * 64 == full.tokens - one.tokens
    assert tokens_saved([done, trial(many, TrialState.PRUNED)]) == 2 * 64 == full.tokens - many.tokens


@pytest.mark.parametrize("oom, text", [(torch.cuda.OutOfMemoryError, "CUDA out of memory (simulated)"),
                                       (RuntimeError, "CUDA error: out of memory")])  # CUDA's, outside torch's
def test_out_of_memory_halves_the_batch(patched, monkeypatch, oom, text):
    m, rot = patched
    docs = _docs(m.config.vocab_size)
    real = perplexity.token_nll
    sizes: list[int] = []
    held: list[weakref.ref] = []  # what each failed forward allocated

    def tight(model, ids, chunk=1024, first=1):
        # the smaller batch runs with the failed one's tensors freed (a retry inside the `except`
        # kept them alive through the error's traceback: on a GPU, its memory too)
        assert all(r() is None for r in held)
        sizes.append(len(ids))
        if np.ndim(ids) == 2 and len(ids) > 2:
            activations = torch.zeros(len(ids), 8)
            held.append(weakref.ref(activations))
            raise oom(text)  # a new one each time: an error kept (its traceback) keeps the forward's tensors
        return real(model, ids, chunk, first)

    monkeypatch.setattr(perplexity, "token_nll", tight)
    try:
        many = score(m, rot, FACTORS, docs, batch=6)
        assert sizes == [6, 3, 1, 2, 1, 2]  # the second 3 is not tried: 3 failed at this length
        sizes.clear()  # the next candidate tries no batch known not to fit: no forward wasted
        again = score(m, rot, FACTORS, docs, batch=6)
        assert sizes == [1, 2, 1, 2] and again.doc_nll == many.doc_nll
        score(m, rot, FACTORS, [d[:32] for d in docs], batch=6)  # another length has its own record
        assert sizes[4:6] == [6, 3]
    finally:
        m.__dict__.pop(perplexity.OOM_AT, None)  # the module's model: what it learned goes with the test
    monkeypatch.setattr(perplexity, "token_nll", real)
    assert many.doc_nll == pytest.approx(score(m, rot, FACTORS, docs).doc_nll, abs=1e-5)


def test_batch_docs_reaches_the_workers_and_is_checked():
    cfg = from_dict({"workers": {"batch_docs": 3}})
    assert ObjectiveSpec.from_config(cfg).batch_docs == 3
    with pytest.raises(UserError, match=r"workers.batch_docs = 0 must be >= 1"):
        from_dict({"workers": {"batch_docs": 0}})
