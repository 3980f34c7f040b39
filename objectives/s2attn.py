"""Shifted sparse attention (S2-Attn; LongLoRA, Chen et al. 2024, section 3.2), for fine-tuning.

The sequence is cut into groups of G tokens and every head attends causally inside its group
only, so attention costs O(L·G) instead of O(L²). Half the heads (the upper half) use groups
shifted by G/2, so information crosses group borders and, layer after layer, spans the whole
sequence. Used while training only; the merged model runs full attention (the paper's point:
trained with S2-Attn, inference needs no change).

The paper's code shifts by rolling the shifted heads' tokens by G/2, which puts the
sequence's last G/2 tokens in one group with its first G/2 and lets the latter see the
former: a causal leak across the sequence's ends. Here the shifted groups are
[−G/2, G/2), [G/2, 3G/2), …, [L − G/2, L + G/2): both end groups are half groups (attended on
their own, without pads or a mask), so no token ever sees a later one. `allowed` states the
pattern; tests hold the attention to it.
"""

from __future__ import annotations

from typing import Any

NAME = "longrope_s2"


def allowed(length: int, group: int, shifted: bool, device: Any = None):
    """[L, L] bool: may query i attend key j. Causal, and in the same group of G tokens; for a
    shifted head the groups start at −G/2. One group (G >= L) is full causal attention."""
    import torch

    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    if group >= length:
        return j <= i
    off = group // 2 if shifted else 0
    return (j <= i) & ((i + off) // group == (j + off) // group)


def fits(length: int, group: int) -> bool:
    """Can `length` tokens be cut into groups of `group`: one group, or an even size dividing it."""
    return group >= length or (length % group == 0 and group % 2 == 0)


def check_group(length: int, group: int) -> None:
    """One clear line for a group size the grouping cannot take."""
    if not fits(length, group):
        raise ValueError(f"S2-Attn needs an even group size that divides the sequence length; "
                         f"got group {group} for length {length}")


def attention(module: Any, query, key, value, attention_mask, scaling: float | None = None,
              dropout: float = 0.0, *, group: int, **kwargs: Any):
    """transformers' attention-function signature: q [B, H, L, D], k/v [B, Hkv, L, D] (rotated);
    returns ([B, L, H, D], None). `group`: G, bound by `register`."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    B, H, L, D = query.shape
    if key.shape[2] != L:
        raise ValueError("S2-Attn trains on whole sequences, without a KV cache")
    if attention_mask is not None and _pads(attention_mask, L):
        raise ValueError("S2-Attn trains on unpadded sequences (a padding mask was given)")
    check_group(L, group)
    if key.shape[1] != H:  # grouped-query heads: each query head gets its own copy of its kv head
        key = key.repeat_interleave(H // key.shape[1], dim=1)
        value = value.repeat_interleave(H // value.shape[1], dim=1)
    p = dropout if module.training else 0.0
    scale = scaling if scaling is not None else D ** -0.5
    if group >= L:  # one group: full causal attention
        return sdpa(query, key, value, is_causal=True, dropout_p=p, scale=scale).transpose(1, 2), None
    h, half = H // 2, group // 2
    plain = _in_groups(query[:, :h], key[:, :h], value[:, :h], group, p, scale)
    # shifted heads: groups [-G/2, G/2), [G/2, 3G/2), ..., [L - G/2, L + G/2). The n - 1 whole ones
    # are the middle L - G tokens; the two end half groups hold G/2 real tokens each and are
    # attended as two groups of G/2 (no pads, no mask: every call is a plain causal kernel)
    qs, ks, vs = query[:, h:], key[:, h:], value[:, h:]
    middle = _in_groups(*(x[:, :, half:L - half] for x in (qs, ks, vs)), group, p, scale)
    ends = _in_groups(*(torch.cat([x[:, :, :half], x[:, :, L - half:]], dim=2) for x in (qs, ks, vs)),
                      half, p, scale)
    shifted = torch.cat([ends[:, :, :half], middle, ends[:, :, half:]], dim=2)
    return torch.cat([plain, shifted], dim=1).transpose(1, 2).contiguous(), None


def _in_groups(q, k, v, size: int, p: float, scale: float):
    """Causal attention inside each run of `size` consecutive tokens: [B, h, m·size, D] -> same.
    The groups become batch rows of one causal SDPA call, the kernel full attention uses too."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    B, h, L, D = q.shape
    m = L // size

    def split(x):  # [B, h, m·size, D] -> [B·m, h, size, D]
        return x.reshape(B, h, m, size, D).transpose(1, 2).reshape(B * m, h, size, D)

    out = sdpa(split(q), split(k), split(v), is_causal=True, dropout_p=p, scale=scale)
    return out.reshape(B, m, h, size, D).transpose(1, 2).reshape(B, h, L, D)


def _pads(mask, length: int) -> bool:
    """Does the mask (bool keep, or 0 / -inf additive) hide any key causal attention would see?"""
    import torch

    keep = mask if mask.dtype == torch.bool else mask == 0
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return bool((causal & ~keep[..., :length, :length]).any())


def register(group: int) -> str:
    """Register S2-Attn with group size `group` under NAME; returns NAME for
    ``config._attn_implementation``."""
    from functools import partial

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, partial(attention, group=group))
    AttentionMaskInterface.register(NAME, sdpa_mask)  # causal without padding: None
    return NAME
