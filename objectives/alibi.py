"""ALiBi (Press et al. 2022, arXiv 2108.12409) on a Llama body: the position scheme built to
extrapolate, as the twin of the rotary test bed (``builtin:tiny-sotu-alibi``).

No rotary embedding: every head adds a fixed linear penalty to its attention scores,

    score(i, j) = q_i · k_j / sqrt(D) − m_h · (i − j),   j <= i,

with head-specific slopes m_h (ALiBi section 3): for n heads a power of two, the geometric
sequence m_h = 2^(−8h/n), h = 1..n; otherwise the n' = 2^⌊log2 n⌋ slopes of that rule followed
by every other slope of the 2n' rule, the first n − n' of them (the paper's reference code).

How it runs on transformers' Llama, unchanged weights and modules otherwise: the config carries
``position_encoding = "alibi"`` (spaces.is_alibi; saved in config.json: the folder says so), the
shared rotary module is replaced by `NoRotary` (cos = 1, sin = 0: the rotation is the identity,
exactly), and the attention is a function registered through transformers' AttentionInterface
under ``NAME`` that adds the bias inside one SDPA call. `convert` does both; `models.load_model`
and the trainer call it whenever the config says ALiBi. A plain `AutoModelForCausalLM` load of
such a folder without `convert` would run it as a RoPE model: the loader here is the way in.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

NAME = "longrope_alibi"  # the attention implementation name this module registers


def slopes(n_heads: int) -> list[float]:
    """The head slopes m_1..m_n of ALiBi section 3 (and footnote for n not a power of two)."""
    if n_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {n_heads}")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    base = 2 ** int(math.floor(math.log2(n_heads)))
    if base == n_heads:
        return power_of_two(n_heads)
    return power_of_two(base) + power_of_two(2 * base)[0::2][: n_heads - base]


def bias(length: int, head_slopes: list[float], device: Any = None):
    """[H, L, L] float32: −m_h·(i − j) on and below the diagonal, −inf above (causal)."""
    import torch

    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    dist = (i - j).to(torch.float32)
    m = torch.tensor(head_slopes, dtype=torch.float32, device=device)[:, None, None]
    return (-m * dist).masked_fill(j > i, -math.inf)


@lru_cache(maxsize=1)  # the last (length, heads, device): every layer of a forward shares it
def _bias_for(length: int, n_heads: int, device: str):
    return bias(length, slopes(n_heads), device)


def attention(module: Any, query, key, value, attention_mask, scaling: float | None = None,
              dropout: float = 0.0, **kwargs: Any):
    """transformers' attention-function signature: q [B, H, L, D], k/v [B, Hkv, L, D] (not
    rotated: `NoRotary`); returns ([B, L, H, D], None). Scores in float32 (the bias reaches
    −m·L, beyond bf16's resolution at long L), output back in q's dtype."""
    import torch

    if key.shape[2] != query.shape[2]:
        raise ValueError("the ALiBi twin scores whole sequences without a KV cache")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    length = query.shape[2]
    mask = _bias_for(length, query.shape[1], str(query.device))[None]
    if attention_mask is not None:  # padding, as transformers' sdpa mask gives it
        keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        mask = mask.masked_fill(~keep[..., :length, :length], -math.inf)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.float(), key.float(), value.float(), attn_mask=mask,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _no_rotary_class():
    import torch
    from torch import nn

    class NoRotary(nn.Module):
        """The rotary module's interface with the identity rotation: cos = 1, sin = 0, so
        q·cos + rotate_half(q)·sin = q exactly."""

        def __init__(self, head_dim: int):
            super().__init__()
            self.head_dim = head_dim

        def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
            shape = (*position_ids.shape, self.head_dim)
            return (torch.ones(shape, dtype=x.dtype, device=x.device),
                    torch.zeros(shape, dtype=x.dtype, device=x.device))

    return NoRotary


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # a boolean padding/causal mask, or None


def convert(model: Any) -> Any:
    """Make a Llama-family transformers model an ALiBi model in place (idempotent): the rotary
    module becomes the identity and every attention layer adds the ALiBi bias. Returns it."""
    from longrope.spaces import ALIBI_KEY, architecture_of

    from .attention import model_configs
    register()
    arch = architecture_of(model.config)
    inner = getattr(model, arch.decoder)
    head_dim = getattr(model.config, "head_dim", None) or \
        model.config.hidden_size // model.config.num_attention_heads
    setattr(inner, arch.rotary, _no_rotary_class()(head_dim))
    for c in model_configs(model):
        c._attn_implementation = NAME
        setattr(c, ALIBI_KEY, "alibi")
    return model
