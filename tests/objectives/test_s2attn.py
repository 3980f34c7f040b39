"""S2-Attn (objectives/s2attn.py): one group is full attention; the groups and the shift are
what the docstring says, on the function and on a tiny model's attention pattern."""

import pytest
import torch

from longrope.objectives import s2attn
from longrope.objectives.attention import set_attention


class _Module(torch.nn.Module):
    pass


def _qkv(B=2, H=4, Hkv=2, L=16, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g),
            torch.randn(B, Hkv, L, D, generator=g))


def test_one_group_is_full_causal_attention():
    q, k, v = _qkv()
    out, _ = s2attn.attention(_Module().eval(), q, k, v, None, group=16)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    assert torch.equal(out, ref.transpose(1, 2))


def test_pattern_by_hand():
    # L = 8, G = 4: plain groups {0..3} {4..7}; shifted groups {0,1} {2..5} {6,7}
    plain, shifted = s2attn.allowed(8, 4, False), s2attn.allowed(8, 4, True)
    assert plain[3].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and plain[4].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert shifted[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0] and shifted[2].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert shifted[5].tolist() == [0, 0, 1, 1, 1, 1, 0, 0] and shifted[7].tolist() == [0] * 6 + [1, 1]


@pytest.mark.parametrize("L, G", [(16, 4), (24, 8), (16, 2)])
def test_each_head_attends_its_groups_only(L, G):
    # q = k = 0: every allowed key weighs the same, so with v = one-hot positions the output row
    # is 1/n on exactly the keys the head may see
    H = 4
    q = torch.zeros(1, H, L, L)
    v = torch.eye(L).expand(1, H, L, L).contiguous()
    out, _ = s2attn.attention(_Module().eval(), q, torch.zeros_like(q), v, None, group=G)
    weights = out[0].transpose(0, 1)  # [H, L, L]
    for h in range(H):
        ok = s2attn.allowed(L, G, shifted=h >= H // 2).float()
        assert torch.allclose(weights[h], ok / ok.sum(-1, keepdim=True), atol=1e-6), h


@pytest.mark.parametrize("L, G", [(32, 8), (24, 4), (16, 2)])
def test_equals_dense_attention_under_the_pattern(L, G):
    # random q, k, v and grouped-query heads: each head equals one SDPA call over all L tokens with
    # `allowed` as its mask (the grouped kernels are only a faster way to the same numbers)
    q, k, v = _qkv(L=L)
    out, _ = s2attn.attention(_Module().eval(), q, k, v, None, group=G)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    for h in range(q.shape[1]):
        mask = s2attn.allowed(L, G, shifted=h >= q.shape[1] // 2)
        ref = torch.nn.functional.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h], attn_mask=mask)
        assert torch.allclose(out[:, :, h], ref, atol=1e-6, rtol=0), h


def test_no_token_sees_a_later_one():
    L, G = 32, 8
    q, k, v = _qkv(L=L)
    base, _ = s2attn.attention(_Module().eval(), q, k, v, None, group=G)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] += 1.0
    v2[:, :, 20:] += 1.0  # change the keys and values from position 20 on
    moved, _ = s2attn.attention(_Module().eval(), q, k2, v2, None, group=G)
    assert torch.equal(moved[:, :20], base[:, :20])


def test_padding_and_bad_groups_are_refused():
    q, k, v = _qkv()
    pad = torch.ones(2, 1, 16, 16, dtype=torch.bool).tril()
    pad[0, :, :, :3] = False
    with pytest.raises(ValueError, match="unpadded"):
        s2attn.attention(_Module(), q, k, v, pad, group=8)
    with pytest.raises(ValueError, match="even group size that divides"):
        s2attn.attention(_Module(), q, k, v, None, group=6)


def test_tiny_model_attention_pattern(tiny_model_dir):
    """One layer: hidden state i moves when token j's embedding moves iff some head lets i see j,
    i.e. j <= i in i's plain group or its shifted group; with G = L, the logits of sdpa."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_hidden_layers = 1
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    L, G = 16, 4
    emb = model.get_input_embeddings()(torch.arange(L)[None] + 5).detach()
    set_attention(model, s2attn.register(G))
    jac = torch.autograd.functional.jacobian(
        lambda e: model.model(inputs_embeds=e).last_hidden_state[0].sum(-1), emb)[:, 0].abs().sum(-1)
    expect = s2attn.allowed(L, G, False) | s2attn.allowed(L, G, True)
    assert torch.equal(jac > 0, expect)
    ids = torch.arange(L)[None] + 5
    set_attention(model, s2attn.register(L))
    one_group = model(input_ids=ids).logits
    set_attention(model, "sdpa")
    assert torch.allclose(one_group, model(input_ids=ids).logits, atol=1e-6, rtol=0)
