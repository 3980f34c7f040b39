"""The candidate rotary patch: one module replaces the model's rotary embedding.

It keeps the original inverse frequencies θ_i and the candidate's θ_i / λ_i
and returns cos/sin where positions < n̂ use θ with no attention scaling and
positions >= n̂ use θ/λ times mscale (LongRoPE eq. 5 with n̂). Switching
candidates is a buffer copy, so weights load once per worker. The arithmetic
mirrors transformers' LlamaRotaryEmbedding.forward op for op (float32 outer
product, cat, cos/sin, scale, cast), which is why λ = 1 reproduces the
unpatched logits bit for bit; for an "interleaved" architecture (Cohere) the
cat is CohereRotaryEmbedding's repeat_interleave. Where the rotary module
lives and its layout come from the table in longrope.spaces.architectures.
"""

from __future__ import annotations

import torch
from torch import nn

from longrope.spaces import RescaleFactors, RopeGeometry, UserError, architecture_of


def base_inv_freq(geometry: RopeGeometry) -> torch.Tensor:
    """θ_i = base^(-2i/d) computed as transformers computes its default."""
    d = geometry.rotary_dim
    i = torch.arange(0, d, 2, dtype=torch.int64)  # cpu: moved with the module, as transformers' own
    return 1.0 / (geometry.base ** (i.float() / d))


class CandidateRotary(nn.Module):
    """Drop-in for a decoder's shared rotary module that scores one candidate at a time.

    layout: "half" (cos/sin = cat(f, f), Llama) or "interleaved" (repeat_interleave, Cohere).
    """

    def __init__(self, geometry: RopeGeometry, original_inv_freq: torch.Tensor | None = None,
                 layout: str = "half", native: nn.Module | None = None):
        super().__init__()
        if layout not in ("half", "interleaved"):
            raise ValueError(f"rotary layout must be 'half' or 'interleaved', got {layout!r}")
        self.geometry = geometry
        self.layout = layout
        inv = base_inv_freq(geometry) if original_inv_freq is None else original_inv_freq.float().clone()
        if inv.numel() != geometry.n_freqs:
            raise UserError(f"model has {inv.numel()} rotary frequencies, geometry says {geometry.n_freqs}")
        self.register_buffer("original_inv_freq", inv, persistent=False)
        self.register_buffer("inv_freq", inv.clone(), persistent=False)
        self.register_buffer("lambdas", torch.ones_like(inv), persistent=False)
        self.n_hat = 0
        self.mscale = 1.0
        self.factors: RescaleFactors | None = RescaleFactors.uniform(1.0, geometry.n_freqs)
        self.native = native  # the model's own rotary, kept for `set_native` (eval's "native")

    @property
    def attention_scaling(self) -> float:
        return self.mscale

    def _apply(self, fn, recurse=True):
        """``model.to(torch.bfloat16)`` moves the frequency tables but keeps them float32: θ/λ
        rounded to bf16 (8 bits of mantissa) would misplace every long position, as the
        product position × θ grows (issue 18: tables in float32 whatever the model dtype)."""
        tables = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, t in tables.items():
            if t is not None and t.is_floating_point():
                self._buffers[name] = t.to(self._buffers[name].device)
        return self

    @torch.no_grad()
    def set_factors(self, factors: RescaleFactors | None) -> None:
        """Switch candidate: an in-place copy into the existing buffers. None switches to the
        model's own rotary, exactly as its config defines it (rope_scaling included)."""
        if factors is None:
            if self.native is None:
                raise UserError("this patched model kept no native rotary to switch back to")
            self.factors = None
            return
        if len(factors.lambdas) != self.geometry.n_freqs:
            raise UserError(
                f"factors have {len(factors.lambdas)} values, the model has {self.geometry.n_freqs} "
                "rotary frequencies"
            )
        self.lambdas.copy_(torch.tensor(factors.lambdas, dtype=torch.float32, device=self.lambdas.device))
        self.inv_freq.copy_(self.original_inv_freq / self.lambdas)
        self.n_hat, self.mscale, self.factors = factors.n_hat, factors.mscale, factors

    def _repeat(self, freqs: torch.Tensor) -> torch.Tensor:
        if self.layout == "interleaved":
            return torch.repeat_interleave(freqs, 2, dim=-1)
        return torch.cat((freqs, freqs), dim=-1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
        if self.factors is None:
            return self.native(x, position_ids) if layer_type is None else \
                self.native(x, position_ids, layer_type=layer_type)
        pos = position_ids[..., None].float()
        freqs = pos * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = self._repeat(freqs)
        cos = emb.cos() * self.mscale
        sin = emb.sin() * self.mscale
        if self.n_hat > 0:
            keep = (position_ids < self.n_hat)[..., None]
            f0 = pos * self.original_inv_freq.to(device=x.device, dtype=torch.float)
            e0 = self._repeat(f0)
            cos = torch.where(keep, e0.cos(), cos)
            sin = torch.where(keep, e0.sin(), sin)
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def find_rotary(model: nn.Module) -> tuple[nn.Module, str]:
    """The decoder's shared rotary module's parent and attribute name, from the table."""
    arch = architecture_of(model.config)
    inner = getattr(model, arch.decoder, None)
    if isinstance(getattr(inner, arch.rotary, None), nn.Module):
        return inner, arch.rotary
    raise UserError(
        f"{type(model).__name__}: no shared rotary module at model.{arch.decoder}.{arch.rotary}; "
        "this transformers version is not supported"
    )


def patch_model(model: nn.Module, geometry: RopeGeometry | None = None) -> CandidateRotary:
    """Replace the model's rotary module with a CandidateRotary (idempotent).

    The original frequencies are the model's own default inv_freq when its
    config is unscaled and it is float32 (so λ = 1 is bit-identical), else θ
    from the geometry (a scaled config, or buffers a cast rounded).
    """
    parent, name = find_rotary(model)
    current = getattr(parent, name)
    if isinstance(current, CandidateRotary):
        return current
    geometry = geometry or RopeGeometry.from_config(model.config)
    original = None
    if getattr(current, "rope_type", "default") == "default":
        original = getattr(current, "original_inv_freq", None)
        if original is None:
            original = getattr(current, "inv_freq", None)
        if original is not None and original.dtype != torch.float32:  # a model cast by .to(bf16): 5.x's
            original = None  # buffers are θ rounded by 0.4%, which misplaces every long position
    patched = CandidateRotary(geometry, original, architecture_of(model.config).rotary_layout, current)
    buf = next((b for b in current.buffers()), None)
    if buf is not None:
        patched.to(buf.device)
    setattr(parent, name, patched)
    return patched


def apply_factors(model: nn.Module, factors: RescaleFactors) -> CandidateRotary:
    """Patch an already-loaded transformers model with factors, n̂ included.

    For users who evaluate in their own code: after this call the model's
    forward uses θ/λ (times mscale) for positions >= n̂ and θ below n̂.
    """
    rot = patch_model(model)
    rot.set_factors(factors)
    return rot
