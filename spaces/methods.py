"""Methods: the closed-form rescalings (PI, NTK, YaRN, ...) expressed as λ vectors.

"Method" is the project's one word for these: what `eval --methods` compares,
what `search.methods` puts into a search's initial population, what the demo
and the bench compare the searched factors with. One function per method, all
``(geometry, target_length) -> RescaleFactors``, in the registry ``METHODS``
(the pattern of transformers' ROPE_INIT_FUNCTIONS): a new method is one
function and one row there.
Each reproduces transformers' own inverse frequencies: λ_i = θ_i / θ'_i where
θ' is what the HF rope type computes, so the tests compare against
``ROPE_INIT_FUNCTIONS`` directly. Numerics in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .errors import UserError
from .factors import RescaleFactors, mscale_yarn
from .geometry import RopeGeometry

MethodFn = Callable[[RopeGeometry, int], RescaleFactors]


def _from_inv(g: RopeGeometry, inv_new: np.ndarray, mscale: float, name: str) -> RescaleFactors:
    lam = g.inv_freq() / inv_new
    return RescaleFactors(tuple(lam.tolist()), n_hat=0, mscale=mscale, meta={"seed": name})


def _ntk_base(g: RopeGeometry, ratio: float) -> np.ndarray:
    """θ'_i for base' = base·ratio^(d/(d-2)) (NTK-aware, bloc97; HF 'dynamic')."""
    d = g.rotary_dim
    base = g.base * ratio ** (d / (d - 2))
    return 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)


def _stretch(g: RopeGeometry, target_length: int) -> float:
    """s = L / L0, at least 1: at or below the trained length a method leaves the model as
    trained (s < 1 would compress positions, which no method means; HF's dynamic floors too)."""
    return max(g.scale(target_length), 1.0)


def none(g: RopeGeometry, target_length: int) -> RescaleFactors:
    """λ = 1: the model as trained (plain RoPE extrapolation)."""
    return RescaleFactors.uniform(1.0, g.n_freqs, mscale=1.0).replace(meta={"seed": "none"})


def pi(g: RopeGeometry, target_length: int) -> RescaleFactors:
    """Position interpolation (Chen et al. 2023): λ = s; HF 'linear' with factor s."""
    s = _stretch(g, target_length)
    return RescaleFactors.uniform(s, g.n_freqs, mscale=1.0).replace(meta={"seed": "pi"})


def ntk(g: RopeGeometry, target_length: int) -> RescaleFactors:
    """NTK-aware base change, base' = base·s^(d/(d-2)), so λ_i = s^(2i/(d-2)).
    Equals HF 'dynamic' with factor 1 evaluated at the target length. Geometric in i, so below
    any critical dimension c it is exactly space.below_critical(λ_c, c): the rule LongRoPE2
    applies to the pairs it does not search."""
    return _from_inv(g, _ntk_base(g, _stretch(g, target_length)), 1.0, "ntk")


def dynamic_ntk(g: RopeGeometry, target_length: int) -> RescaleFactors:
    """HF 'dynamic' configured with factor s, at sequence length L:
    base' = base·(s·L/L0 − (s − 1))^(d/(d-2)), what a user gets from
    rope_scaling={'rope_type': 'dynamic', 'factor': s} at the target length."""
    s = _stretch(g, target_length)
    ratio = s * target_length / g.original_length - (s - 1)
    return _from_inv(g, _ntk_base(g, max(ratio, 1.0)), 1.0, "dynamic_ntk")


def yarn(g: RopeGeometry, target_length: int, beta_fast: float = 32, beta_slow: float = 1) -> RescaleFactors:
    """YaRN (Peng et al. 2023, eq. 18-22) as HF computes it: the ramp blends
    inverse frequencies (not λ), θ' = θ/s·(1−γ) + θ·γ, with truncated
    correction range; attention factor 0.1 ln s + 1."""
    s = _stretch(g, target_length)
    d, base, L0 = g.rotary_dim, g.base, g.original_length

    def correction_dim(rotations: float) -> float:
        return d * math.log(L0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), d - 1)
    if low == high:
        high += 0.001  # HF: prevent a singular ramp
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp  # γ: 1 keeps the original frequency
    inv = g.inv_freq()
    inv_new = inv / s * (1 - extrapolation) + inv * extrapolation
    return _from_inv(g, inv_new, mscale_yarn(s, L0), "yarn")


def llama3(g: RopeGeometry, target_length: int, low_freq_factor: float = 1,
           high_freq_factor: float = 4) -> RescaleFactors:
    """Llama 3.1 rescaling with factor s: wavelengths above L0/low_freq_factor
    are divided by s, below L0/high_freq_factor kept, smoothed in between."""
    s = _stretch(g, target_length)
    L0 = g.original_length
    inv = g.inv_freq()
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > L0 / low_freq_factor, inv / s, inv)
    smooth = (L0 / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * out / s + smooth * out
    medium = ~(wavelen < L0 / high_freq_factor) & ~(wavelen > L0 / low_freq_factor)
    return _from_inv(g, np.where(medium, smoothed, out), 1.0, "llama3")


METHODS: dict[str, MethodFn] = {
    "none": none,
    "pi": pi,
    "ntk": ntk,
    "yarn": yarn,
    "dynamic_ntk": dynamic_ntk,
    "llama3": llama3,
}


# The methods every result is compared with: the product's promise is to beat these.
REFERENCE_METHODS = ("pi", "ntk", "yarn")


def method(name: str, g: RopeGeometry, target_length: int) -> RescaleFactors:
    """Look a method up by name; an unknown name lists the known ones."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)} or a factors .json file")
    return METHODS[name](g, target_length)
