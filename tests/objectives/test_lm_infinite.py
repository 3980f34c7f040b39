"""LM-Infinite as an eval method: the method string, the Λ mask, the capped distance the rotary
sees, the attention against a by-hand reference, and equality with `none` up to n_local tokens."""

import math
import types

import numpy as np
import pytest
import torch
import transformers

from longrope.objectives import lm_infinite as lmi
from longrope.objectives.evaluate import run_eval
from longrope.objectives.methods import check_method, method_factors, split_methods
from longrope.objectives.rotary import CandidateRotary
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.spaces import RescaleFactors, RopeGeometry, UserError

# --- the method string -------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("lm_infinite", (10, None)),
    ("lm_infinite:global=4", (4, None)),
    ("lm_infinite:local=128", (10, 128)),
    ("lm_infinite:global=4,local=128", (4, 128)),
    ("lm_infinite:local=7, global=0", (0, 7)),
])
def test_parse_good(name, expected):
    assert lmi.parse(name) == expected
    check_method(name)


@pytest.mark.parametrize("name", [
    "lm_infinite:", "lm_infinite:global", "lm_infinite:global=", "lm_infinite:global=x",
    "lm_infinite:global=1.5", "lm_infinite:global=-1", "lm_infinite:local=0", "lm_infinite:window=3",
    "lm_infinite:global=2,global=3", "lm_infinite:global=2,", "lm_infinite:global=2;local=3",
])
def test_parse_bad_is_one_line(name):
    with pytest.raises(UserError) as e:
        check_method(name)
    assert "\n" not in str(e.value) and "lm_infinite:global=G,local=W" in str(e.value)


def test_not_a_method_name_prefix():
    with pytest.raises(UserError, match="unknown method"):
        check_method("lm_infinitee")


def test_method_list_keeps_parameters_together():
    assert split_methods("none,lm_infinite:global=4,local=128,yarn") == \
        ["none", "lm_infinite:global=4,local=128", "yarn"]
    assert split_methods("lm_infinite,lm_infinite:local=5,pi,") == ["lm_infinite", "lm_infinite:local=5", "pi"]
    # named twice: scored twice for one column before
    assert split_methods("none,yarn,none,yarn") == ["none", "yarn"]


def test_lengths_given_twice_are_scored_once():
    from longrope.objectives.evaluate import parse_lengths

    assert parse_lengths("512,128,512") == [128, 512]


def test_method_factors_resolves_defaults_from_the_geometry():
    g = RopeGeometry(rotary_dim=16, base=10000.0, original_length=64)
    plan = method_factors("lm_infinite", g, 256)
    assert (plan.n_global, plan.n_local, plan.cap) == (10, 64, 64)
    assert plan.factors == RescaleFactors.uniform(1.0, 8, mscale=1.0)
    assert method_factors("lm_infinite:global=3,local=20", g, 256).n_local == 20


# --- the mask ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_global, n_local, cap", [(4, 16, 20), (10, 32, 32), (0, 8, 8), (3, 5, 2)])
def test_mask_is_lambda_shaped_without_duplicates(n_global, n_local, cap):
    L = 64
    near, far = lmi.branches(L, n_global, n_local, cap)
    assert far.shape == (L, min(n_global, L))
    both = near[:, : far.shape[1]] & far
    assert not both.any()  # a key is seen once, at one distance
    for i in range(L):
        want = {j for j in range(i + 1) if i - j < n_local or j < n_global}
        got = set(torch.nonzero(near[i]).flatten().tolist()) | set(torch.nonzero(far[i]).flatten().tolist())
        assert got == want
        if i >= n_global + n_local - 1:
            assert len(got) == n_global + n_local  # a far query: exactly both branches
        else:
            assert len(got) < n_global + n_local
        for j in range(far.shape[1]):  # the capped copy: global, outside the window, beyond L0
            assert bool(far[i, j]) == (j <= i and i - j >= n_local and i - j > cap)


# --- the distance the rotary sees --------------------------------------------------------------

LAYOUTS = {  # name -> (layout, rotary dims, head dim, transformers' own apply_rotary_pos_emb)
    "llama": ("half", 16, 16, transformers.models.llama.modeling_llama.apply_rotary_pos_emb),
    "cohere": ("interleaved", 16, 16, transformers.models.cohere.modeling_cohere.apply_rotary_pos_emb),
    "phi3-partial": ("half", 16, 24, transformers.models.phi3.modeling_phi3.apply_rotary_pos_emb),
}
L0, LENGTH = 20, 48


def _setting(arch, n_global=4, n_local=12):
    layout, r, D, apply = LAYOUTS[arch]
    g = RopeGeometry(rotary_dim=r, base=100.0, original_length=L0)  # low θ: distances matter
    rot = CandidateRotary(g, layout=layout)
    plan = lmi.LMInfinite(n_global, n_local, L0, RescaleFactors.uniform(1.0, g.n_freqs))
    rot.set_factors(plan.factors)
    return lmi._State(plan, rot, layout, {}), rot, D, apply


def _rotated(rot, apply, q, k, pos_q, pos_k):
    """q at positions pos_q and k at pos_k, rotated by transformers' own function."""
    cq, sq = rot(q, pos_q[None])
    ck, sk = rot(k, pos_k[None])
    return apply(q, q, cq, sq)[0], apply(k, k, ck, sk)[1]


@pytest.mark.parametrize("arch", list(LAYOUTS))
def test_far_global_key_is_scored_at_distance_L0(arch):
    state, rot, D, apply = _setting(arch)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, LENGTH, D, generator=gen) for _ in range(3))
    pos = torch.arange(LENGTH)
    qt, kt = _rotated(rot, apply, q, k, pos, pos)
    qa, ka, _, mask = lmi.augmented(state, qt, kt, v)
    scores = qa @ ka.transpose(-1, -2)
    near, far = lmi.branches(LENGTH, 4, 12, L0)
    # by hand: the query rotated at position L0, the global key at position 0
    q_at_L0, _ = _rotated(rot, apply, q, k, torch.full((LENGTH,), L0), pos)
    _, k_at_0 = _rotated(rot, apply, q, k, pos, torch.zeros(LENGTH, dtype=torch.long))
    checked = 0
    for i, j in torch.nonzero(far).tolist():
        hand = (q_at_L0[0, :, i] * k_at_0[0, :, j]).sum(-1)
        true = (qt[0, :, i] * kt[0, :, j]).sum(-1)
        torch.testing.assert_close(scores[0, :, i, LENGTH + j], hand, rtol=1e-5, atol=1e-5)
        assert (hand - true).abs().max() > 1e-3  # the true distance would be seen otherwise
        checked += 1
    assert checked == int(far.sum()) > 50
    for i, j in [(5, 3), (40, 39), (20, 2)]:  # local, local, global within L0: the true distance
        assert near[i, j]
        torch.testing.assert_close(scores[0, :, i, j], (qt[0, :, i] * kt[0, :, j]).sum(-1))
    assert torch.equal(mask, torch.cat((near, far), 1))


@pytest.mark.parametrize("arch", list(LAYOUTS))
def test_attention_equals_a_by_hand_softmax(arch, monkeypatch):
    """One softmax over both branches, grouped-query heads, against scores written out per pair."""
    state, rot, D, apply = _setting(arch)
    module = types.SimpleNamespace(config=object())
    monkeypatch.setitem(lmi._STATES, id(module.config), state)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, LENGTH, D, generator=gen)
    k, v = (torch.randn(1, 2, LENGTH, D, generator=gen) for _ in range(2))
    pos = torch.arange(LENGTH)
    qt, kt = _rotated(rot, apply, q, k, pos, pos)
    out, _ = lmi.attention(module, qt, kt, v, None, scaling=D**-0.5, position_ids=pos[None])
    kh, vh = kt.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    q_at_L0, _ = _rotated(rot, apply, q, k, torch.full((LENGTH,), L0), pos)
    k_at_0 = k.repeat_interleave(2, 1)  # position 0 is no rotation
    near, far = lmi.branches(LENGTH, 4, 12, L0)
    far_full = torch.zeros(LENGTH, LENGTH, dtype=torch.bool)
    far_full[:, : far.shape[1]] = far
    s = torch.where(far_full, q_at_L0 @ k_at_0.transpose(-1, -2), qt @ kh.transpose(-1, -2)) * D**-0.5
    s = s.masked_fill(~(near | far_full), -math.inf)
    ref = (torch.softmax(s, -1) @ vh).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_refuses_outside_its_context():
    with pytest.raises(RuntimeError, match="outside"):
        lmi.attention(types.SimpleNamespace(config=object()), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4),
                      torch.zeros(1, 1, 2, 4), None)


# --- on a model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec(tiny_model_dir, text_corpus_dir):
    return ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), search_docs=2, heldout_docs=2)


def test_equals_none_up_to_n_local_and_differs_beyond(spec):
    """The tiny Llama (L0 = 32): lm_infinite is `none` while every key is local."""
    methods = ["none", "lm_infinite", "lm_infinite:global=2,local=16"]
    res = run_eval(spec, [16, 32, 96], methods, "heldout", progress=False)
    ppl = {m: np.array([res[m][n].ppl for n in (16, 32, 96)]) for m in methods}
    np.testing.assert_allclose(ppl["lm_infinite"][:2], ppl["none"][:2], rtol=1e-5)
    np.testing.assert_allclose(ppl["lm_infinite:global=2,local=16"][0], ppl["none"][0], rtol=1e-5)
    assert abs(ppl["lm_infinite"][2] / ppl["none"][2] - 1) > 1e-5
    assert abs(ppl["lm_infinite:global=2,local=16"][1] / ppl["none"][1] - 1) > 1e-5


def test_restores_the_model_and_works_for_ppl_and_stride(spec):
    ev = Evaluator(spec)
    model = ev.loaded.model
    before = model.config._attn_implementation
    plan = method_factors("lm_infinite:global=4,local=24", ev.geometry, 128)
    none = ev.evaluate(method_factors("none", ev.geometry, 128), 128, pool="heldout")
    lm = ev.evaluate(plan, 128, pool="heldout")
    assert model.config._attn_implementation == before and not lmi._STATES
    assert ev.evaluate(method_factors("none", ev.geometry, 128), 128, pool="heldout").ppl == none.ppl
    assert lm.ok and lm.ppl != none.ppl
    strided = ev.evaluate(plan, 64, pool="heldout", stride=32)
    assert strided.ok and strided.tokens == 2 * 64 * 2  # 2 windows of 64 on each of 2 documents


def test_passkey_and_needle_on_the_embedded_model():
    """The needle samples go through the same attention (the tiny test tokenizer has no digits)."""
    spec = ObjectiveSpec.of("builtin:tiny-sotu", "builtin:sotu", search_docs=1, heldout_docs=1,
                            kind="needle", depths=2, per_depth=1)
    res = run_eval(spec, [256], ["none", "lm_infinite:global=4,local=64"], "heldout", progress=False,
                   task="passkey")
    none, lm = res["none"][256], res["lm_infinite:global=4,local=64"][256]
    assert none.ok and lm.ok and 0 <= lm.extra["passkey"] <= 1 and set(lm.extra["by_depth"]) == {0.0, 1.0}
    assert lm.ppl != none.ppl  # the needle NLL changed: the attention did
