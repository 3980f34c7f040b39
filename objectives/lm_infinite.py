"""LM-Infinite (Han et al. 2023, arXiv 2308.16137) as an eval method on any admitted RoPE model.

No training, no factors: the model as trained (λ = 1) with two changes to its attention.

- A Λ-shaped mask: query i sees the local branch, keys j with 0 <= i - j < n_local (itself
  included), and the global branch, the first n_global tokens (j < n_global, j <= i). A key in
  both is seen once. A far query (i >= n_global + n_local - 1) sees exactly n_global + n_local
  keys; a nearer one fewer.
- Distance bounding on the global branch only: a global key outside the local window is seen
  at distance min(i - j, L0), L0 the trained length; a local key always at its true distance.

Defaults: n_global = 10, n_local = L0 (the paper's choice, the training length). With
L <= n_local every key is local and causal: the method equals the plain model (``none``).

How it is computed, exactly and on the model's own weights. A custom attention function is
registered through transformers' AttentionInterface under ``NAME``, and `active()` switches the
model's ``config._attn_implementation`` to it for one scoring call (and back). It receives q and
k already rotated by their own positions, q̃_i = R_i q_i and k̃_j = R_j k_j. RoPE rotations
compose (R_a R_b = R_(a+b)), so q̂_i = R_(L0-i) q̃_i is the query at position L0 and
k̂_j = R_(-j) k̃_j the key at position 0: q̂_i · k̂_j is the score at distance L0, through the
model's own rotary (the frequencies of `rotary`, layout and partial rotary as the model has them).
One softmax over the union of both key sets: one SDPA call over concatenated head dims, queries
[q̃_i, q̂_i], keys [k̃_j, 0] (true distance) and G far copies [0, k̂_j] of the global keys; a
boolean mask gives each visible (i, j) exactly one of the two. Values are padded with zeros to
the doubled width so that PyTorch's fused kernel (not the math fallback) runs.

Cost: the mask is a dense L x (L + G) boolean and the fused kernels turn it into a float L x
(L + G) bias (about 64 MB at 4096 tokens), and the doubled head width doubles the q·k work: fine
for the lengths this project scores on CPU (<= 4096); an O(L x (n_global + n_local)) banded
kernel would be the next step for 100k-token runs. Batches are unpadded sequences at positions
0..L-1 without a KV cache (how the project scores); a padding mask, if any, is respected.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from longrope.spaces import RescaleFactors, UserError, architecture_of

NAME = "longrope_lm_infinite"  # the attention implementation name this module registers
PREFIX = "lm_infinite"
N_GLOBAL = 10

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LMInfinite:
    """A resolved LM-Infinite setting for one model: what `Evaluator.evaluate` takes instead of factors."""

    n_global: int
    n_local: int
    cap: int  # L0: the farthest distance the global branch is seen at
    factors: RescaleFactors  # the rotary underneath (λ = 1: the model as trained)


def is_lm_infinite(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ":")


def parse(name: str) -> tuple[int, int | None]:
    """(n_global, n_local or None for L0) from ``lm_infinite`` or ``lm_infinite:global=4,local=128``."""
    n_global, n_local = N_GLOBAL, None
    if name == PREFIX:
        return n_global, n_local
    usage = f"{name!r}: write lm_infinite or lm_infinite:global=G,local=W (G >= 0, W >= 1 integers)"
    body = name[len(PREFIX) + 1:]
    seen: set[str] = set()
    for part in body.split(","):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in ("global", "local") or key in seen:
            raise UserError(usage)
        seen.add(key)
        try:
            v = int(val.strip())
        except ValueError:
            raise UserError(usage) from None
        if v < (0 if key == "global" else 1):
            raise UserError(usage)
        n_global, n_local = (v, n_local) if key == "global" else (n_global, v)
    return n_global, n_local


def resolve(name: str, geometry: Any) -> LMInfinite:
    """The setting a method string names, on a model with this geometry."""
    n_global, n_local = parse(name)
    L0 = geometry.original_length
    return LMInfinite(n_global, L0 if n_local is None else n_local, L0,
                      RescaleFactors.uniform(1.0, geometry.n_freqs, mscale=1.0))


def branches(length: int, n_global: int, n_local: int, cap: int,
             device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(near [L, L], far [L, G]) booleans, G = min(n_global, L): near[i, j] = key j seen at its true
    distance, far[i, j] = global key j seen at distance `cap` (outside the local window, i - j > cap).
    Every visible (i, j) is in exactly one of them."""
    import torch

    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    d = i - j
    causal = d >= 0
    local = causal & (d < n_local)
    glob = causal & (j < n_global) & ~local
    far = glob & (d > cap)
    return local | (glob & ~far), far[:, :min(n_global, length)]


@dataclass
class _State:
    plan: LMInfinite
    rotary: Any  # the patched CandidateRotary: gives the rotations q̂ and k̂ need
    layout: str  # "half" (Llama) or "interleaved" (Cohere)
    cache: dict


_STATES: dict[int, _State] = {}  # id(config) -> the setting its attention layers run with


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # a boolean padding/causal mask, or None


@contextmanager
def active(model: Any, rotary: Any, plan: LMInfinite):
    """Run the model's attention as LM-Infinite with `plan` inside the block; restore it after."""
    from .attention import model_configs

    _register()
    configs = {id(c): c for c in model_configs(model)}
    before = {k: c._attn_implementation for k, c in configs.items()}
    state = _State(plan, rotary, architecture_of(model.config).rotary_layout, {})
    try:
        for k, c in configs.items():
            _STATES[k] = state
            c._attn_implementation = NAME
        yield state
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]
            _STATES.pop(k, None)


def rotation(rotary: Any, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm (cos, sin) [n, r] of `rotary` at `positions`, float32: its cos/sin divided by the
    attention factor it folds in, so applying them only rotates."""
    import torch

    factors = getattr(rotary, "factors", None)
    if factors is None or factors.n_hat:
        raise UserError("lm_infinite needs a pure rotation (factors with n̂ = 0), not the native rotary")
    x = torch.zeros(1, dtype=torch.float32, device=positions.device)
    cos, sin = rotary(x, positions[None])
    norm = torch.sqrt(cos.float() ** 2 + sin.float() ** 2)
    return cos[0].float() / norm[0], sin[0].float() / norm[0]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """x [B, H, n, D] rotated by (cos, sin) [n, r] on its first r dims (the rest passes, as in
    partial rotary); float32 arithmetic, x's dtype back."""
    import torch

    r = cos.shape[-1]
    xr, rest = x[..., :r].float(), x[..., r:]
    if layout == "interleaved":
        turned = torch.stack([-xr[..., 1::2], xr[..., ::2]], dim=-1).flatten(-2)
    else:
        turned = torch.cat((-xr[..., r // 2:], xr[..., : r // 2]), dim=-1)
    return torch.cat(((xr * cos + turned * sin).to(x.dtype), rest), dim=-1)


def _plan_tensors(state: _State, length: int, device: torch.device):
    """The masks and rotations for one sequence length, computed once per forward (all layers)."""
    import torch

    key = (length, str(device))
    if key not in state.cache:
        p = state.plan
        near, far = branches(length, p.n_global, p.n_local, p.cap, device)
        g = far.shape[1] if bool(far.any()) else 0
        rot_q = rotation(state.rotary, p.cap - torch.arange(length, device=device)) if g else None
        rot_k = rotation(state.rotary, -torch.arange(g, device=device)) if g else None
        state.cache.clear()
        state.cache[key] = (near, far[:, :g], g, rot_q, rot_k)
    return state.cache[key]


def augmented(state: _State, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """(q, k, v, mask) for one SDPA call whose softmax runs over both branches (see the module
    docstring); k and v already have as many heads as q. Without far pairs: the inputs, unchanged,
    with the Λ mask."""
    import torch

    length = query.shape[2]
    near, far, g, rot_q, rot_k = _plan_tensors(state, length, query.device)
    if not g:
        return query, key, value, near
    q_far = rotate(query, *rot_q, state.layout)  # each query moved to position L0
    k_far = rotate(key[:, :, :g], *rot_k, state.layout)  # each global key moved to position 0
    q = torch.cat((query, q_far), dim=-1)
    k = torch.cat((torch.cat((key, torch.zeros_like(key)), dim=-1),
                   torch.cat((torch.zeros_like(k_far), k_far), dim=-1)), dim=2)
    v = torch.cat((value, value[:, :, :g]), dim=2)
    v = torch.cat((v, torch.zeros_like(v)), dim=-1)  # same width as q and k: the fused kernel
    return q, k, v, torch.cat((near, far), dim=1)


def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: q [B, H, L, D], k/v [B, Hkv, L, D] rotated;
    returns ([B, L, H, D], None)."""
    import torch

    state = _STATES.get(id(module.config))
    if state is None:
        raise RuntimeError(f"attention {NAME!r} used outside lm_infinite.active()")
    if key.shape[2] != query.shape[2]:
        raise UserError("lm_infinite scores whole sequences without a KV cache")
    pos = kwargs.get("position_ids")
    length, width = query.shape[2], query.shape[-1]
    if pos is not None and not torch.equal(pos[0], torch.arange(length, device=pos.device)):
        raise UserError("lm_infinite expects positions 0..L-1 (one unpadded sequence per row)")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    q, k, v, mask = augmented(state, query, key, value)
    if attention_mask is not None:  # padding, as transformers' sdpa mask gives it
        pad = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        pad = pad[..., :length, :length]
        mask = mask & torch.cat((pad, pad[..., : k.shape[2] - length]), dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scaling if scaling is not None else width ** -0.5)
    return out[..., :width].transpose(1, 2).contiguous(), None
