"""Sliding-window perplexity (eval --stride): each token scored once, by hand on two windows,
and --stride L is exactly the default."""

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

from longrope.objectives.evaluate import run_eval
from longrope.objectives.perplexity import document_nll, stride_span, stride_windows, strided_nll
from longrope.objectives.specs import ObjectiveSpec
from longrope.spaces import UserError


@given(n=st.integers(2, 80), window=st.integers(2, 40), stride=st.integers(1, 40))
def test_windows_score_each_token_once_with_context(n, window, stride):
    stride = min(stride, window)
    if n > window and stride == window:  # a later window's first token would have no context
        with pytest.raises(ValueError, match=f"stride {window} must be in"):
            stride_windows(n, window, stride)
        return
    w = stride_windows(n, window, stride)
    scored = [t for _, end, first in w for t in range(first, end)]
    assert scored == list(range(1, n))  # every prediction once, in order
    assert w[0] == (0, min(window, n), 1)
    for (a, b, first), (_, prev_end, _) in zip(w[1:], w, strict=False):
        assert b - a == window and first == prev_end and b - first <= stride
        assert first - a >= max(window - stride, 1)  # the context a later window gives its first scored token


def test_two_windows_by_hand(tiny_model_dir):
    """A length-8 document, L = 6, S = 2: window [0, 6) scores tokens 1..5, window [2, 8) tokens
    6 and 7 (context 4 and 5 tokens): the mean of those 7 NLLs from the model's own logits."""
    m = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, m.config.vocab_size, (8,), generator=torch.Generator().manual_seed(3))
    assert stride_windows(8, 6, 2) == [(0, 6, 1), (2, 8, 6)]
    with torch.no_grad():
        first = m(ids[None, 0:6]).logits[0]
        second = m(ids[None, 2:8]).logits[0]
    ce = torch.nn.functional.cross_entropy
    nll_1 = ce(first[0:5], ids[1:6], reduction="none")  # positions 0..4 predict tokens 1..5
    nll_2 = ce(second[3:5], ids[6:8], reduction="none")  # window positions 3, 4 = tokens 5, 6
    want = torch.cat([nll_1, nll_2])
    mean, tail, tokens = strided_nll(m, ids.numpy(), 6, 2)
    assert mean == pytest.approx(want.mean().item(), abs=1e-6)
    assert tail == pytest.approx(want[-1:].mean().item(), abs=1e-6)  # the last quarter of 7: 1 token
    assert tokens == 12
    # not the one-pass number: tokens 6 and 7 lost their first two tokens of context
    assert mean != pytest.approx(document_nll(m, ids.numpy())[0], abs=1e-6)


def test_stride_equal_to_the_length_is_one_pass_exactly(tiny_model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, 40)
    assert stride_span(40, 40) == 40
    assert strided_nll(m, ids, 40, 40)[:2] == document_nll(m, ids)


@pytest.fixture(scope="module")
def spec(tiny_model_dir, text_corpus_dir):
    return ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), search_docs=2, heldout_docs=2)


def test_eval_stride_L_equals_the_default_and_a_smaller_stride_differs(spec):
    for n in (24, 48):
        default = run_eval(spec, [n], ["none", "lm_infinite:global=2,local=16"], "heldout", progress=False)
        same = run_eval(spec, [n], ["none", "lm_infinite:global=2,local=16"], "heldout", progress=False,
                        stride=n)
        for m in default:
            a, b = default[m][n], same[m][n]
            assert (a.ppl, a.doc_nll, a.tokens, a.extra["tail_ppl"]) == (b.ppl, b.doc_nll, b.tokens,
                                                                         b.extra["tail_ppl"])
    slid = run_eval(spec, [48], ["none"], "heldout", progress=False, stride=16)["none"][48]
    assert slid.ok and slid.length == 48 and slid.tokens == 2 * 3 * 48  # ceil(48/16) windows per document
    assert slid.ppl != default["none"][48].ppl


@pytest.mark.parametrize("stride, task, message", [(0, "ppl", "between 1 and the shortest length (24)"),
                                                   (25, "ppl", "between 1 and the shortest length (24)"),
                                                   (8, "passkey", "--stride goes with --task ppl")])
def test_bad_strides(spec, stride, task, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_eval(spec, [24, 48], ["none"], "heldout", progress=False, task=task, stride=stride)


def test_stride_checks_the_documents_reach_what_its_windows_cover_before_scoring(spec, monkeypatch):
    """Windows of L advancing by S cover 2L - S tokens: a pool checked at L alone let earlier
    (method, length) cells score, for minutes on a real model, before a short document failed."""
    from longrope.objectives.workers import Evaluator

    seen, check = [], Evaluator.check_pool
    monkeypatch.setattr(Evaluator, "check_pool", lambda self, lengths, pool: (seen.append(lengths),
                                                                              check(self, lengths, pool)))
    run_eval(spec, [24, 48], ["none"], "heldout", progress=False, stride=16)
    assert seen == [[stride_span(24, 16), stride_span(48, 16)]] == [[32, 80]]


@pytest.mark.parametrize("text", ["1,256", "0", "", "256,-4"])
def test_lengths_below_two_tokens_are_refused(text):
    """A window of one token predicts nothing."""
    from longrope.objectives.evaluate import parse_lengths

    with pytest.raises(UserError, match="integers >= 2"):
        parse_lengths(text)
    assert parse_lengths("2,256") == [2, 256]
