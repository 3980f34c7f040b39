"""The document pools and their caches: the token cache's key, each pool's size and documents, and
the head's bias in the scored NLL."""

from types import SimpleNamespace

import numpy as np
import pytest

from longrope.spaces import UserError


def test_the_token_cache_key_changes_with_the_bos_token():
    """Same vocabulary, another BOS (a GGUF that names <|im_start|>): the cached ids carry the
    old BOS, so the fingerprint must differ."""
    from longrope.objectives.data import tokenizer_fingerprint

    class Tok:
        def __init__(self, bos):
            self.bos_token_id = bos

        def get_vocab(self):
            return {"a": 0, "b": 1, "c": 2}

    assert tokenizer_fingerprint(Tok(1)) != tokenizer_fingerprint(Tok(2))


def _evaluator(search_docs, heldout_docs, short_heldout=False):
    """An Evaluator without a model: only its document bookkeeping."""
    from longrope.objectives.data import Split
    from longrope.objectives.workers import Evaluator

    ev = Evaluator.__new__(Evaluator)
    ev.spec = SimpleNamespace(data=SimpleNamespace(search_docs=search_docs, heldout_docs=heldout_docs),
                              task=SimpleNamespace(kind="perplexity"))
    ev.split = Split.make(12, 0)
    ev.tokens = [np.arange(100) + 1000 * i for i in range(12)]
    if short_heldout:
        for i in ev.split.heldout:
            ev.tokens[i] = ev.tokens[i][:10]
    ev.loaded = SimpleNamespace(alibi=False, geometry="geometry", name="tiny")
    ev._docs, ev._samples = {}, {}
    return ev


def test_the_heldout_pool_is_not_served_from_the_search_pools_cache():
    """search_docs == heldout_docs (both 5 by default): the held-out score must not reuse the
    search documents cached for the same length."""
    ev = _evaluator(3, 3)
    search = {int(d[0]) for d in ev.docs(50, "search")}
    heldout = {int(d[0]) for d in ev.docs(50, "heldout")}
    assert len(search) == len(heldout) == 3 and not search & heldout


def test_the_heldout_pool_has_heldout_docs_documents():
    ev = _evaluator(2, 4)
    assert len(ev.docs(50, "search")) == 2 and len(ev.docs(50, "heldout")) == 4


def test_check_refuses_a_heldout_pool_too_short_before_the_run():
    ev = _evaluator(2, 2, short_heldout=True)
    with pytest.raises(UserError, match="heldout documents reach 50 tokens"):
        ev.check([50])
