"""The n̂ boundary, pinned against an independent numpy computation: positions < n̂
keep the original frequencies and no attention scaling, positions >= n̂ use θ/λ·mscale."""

import numpy as np
import pytest
import torch

from longrope.objectives.rotary import CandidateRotary
from longrope.spaces import RescaleFactors, RopeGeometry

G = RopeGeometry(rotary_dim=16, base=10000.0, original_length=32)


def reference(positions: np.ndarray, f: RescaleFactors) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin per position, (P, rotary_dim), computed from the definition in float64."""
    theta = G.inv_freq()
    lam = np.asarray(f.lambdas)
    rows_cos, rows_sin = [], []
    for p in positions:
        keep = p < f.n_hat
        freqs = p * (theta if keep else theta / lam)
        scale = 1.0 if keep else f.mscale
        emb = np.concatenate([freqs, freqs])
        rows_cos.append(np.cos(emb) * scale)
        rows_sin.append(np.sin(emb) * scale)
    return np.stack(rows_cos), np.stack(rows_sin)


@pytest.mark.parametrize("n_hat", [1, 4, 12])
def test_positions_below_n_hat_are_unscaled_and_from_n_hat_on_scaled(n_hat):
    lam = tuple(np.linspace(1.0, 6.0, G.n_freqs).round(2))
    f = RescaleFactors(lam, n_hat=n_hat, mscale=1.3)
    rot = CandidateRotary(G)
    rot.set_factors(f)
    pos = torch.arange(24)[None]
    cos, sin = rot(torch.zeros(1, 24, 4), pos)
    ref_cos, ref_sin = reference(np.arange(24), f)
    np.testing.assert_allclose(cos[0].numpy(), ref_cos, rtol=0, atol=2e-5)
    np.testing.assert_allclose(sin[0].numpy(), ref_sin, rtol=0, atol=2e-5)
    # the boundary itself: n̂ - 1 is the original encoding, n̂ is the rescaled one
    assert abs(float(cos[0, n_hat - 1, 0]) - np.cos((n_hat - 1) * 1.0)) < 1e-6  # θ_0 = 1, unscaled
    assert abs(float(cos[0, n_hat, 0]) - 1.3 * np.cos(n_hat * 1.0 / lam[0])) < 1e-6
