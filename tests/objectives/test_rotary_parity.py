"""The patch equals transformers: λ = 1 is the plain model, uniform λ = s is
`linear`, Phi-3 style factors are `longrope`, and n̂ keeps the first positions."""

import math

import pytest
import torch
import transformers

from hf_configs import ARCHS, set_rope, tiny_config
from longrope.objectives.rotary import apply_factors, patch_model
from longrope.spaces import RescaleFactors, RopeGeometry, mscale_su

L0, L = 32, 96
S = L / L0


def build(arch, rope_scaling=None, state=None, **kw):
    cfg = tiny_config(arch, L0=L0, **kw)
    if rope_scaling:
        set_rope(cfg, rope_scaling)
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    if state is not None:
        m.load_state_dict(state)
    return m


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 128, (1, L), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_identity_factors_are_bit_identical(arch, ids):
    m = build(arch)
    ref = logits(m, ids)
    g = RopeGeometry.from_config(m.config)
    apply_factors(m, RescaleFactors.uniform(1.0, g.n_freqs))
    assert torch.equal(logits(m, ids), ref)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_uniform_s_equals_linear(arch, ids):
    plain = build(arch)
    linear = build(arch, {"rope_type": "linear", "factor": S}, state=plain.state_dict())
    ref = logits(linear, ids)
    g = RopeGeometry.from_config(plain.config)
    apply_factors(plain, RescaleFactors.uniform(S, g.n_freqs))
    torch.testing.assert_close(logits(plain, ids), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_phi3_style_factors_equal_longrope(arch, ids):
    plain = build(arch)
    g = RopeGeometry.from_config(plain.config)
    gen = torch.Generator().manual_seed(2)
    long = torch.sort(1 + (S * 1.2 - 1) * torch.rand(g.n_freqs, generator=gen)).values.tolist()
    short = torch.sort(1 + 0.2 * torch.rand(g.n_freqs, generator=gen)).values.tolist()
    rs = {"rope_type": "longrope", "long_factor": long, "short_factor": short,
          "original_max_position_embeddings": L0}
    hf = build(arch, rs, state=plain.state_dict(), max_position_embeddings=L)
    ref = logits(hf, ids)
    assert ids.shape[1] > L0  # HF picks long_factor above L0
    apply_factors(plain, RescaleFactors(tuple(long), n_hat=0, mscale=mscale_su(S, L0)))
    assert plain.model.rotary_emb.mscale == pytest.approx(math.sqrt(1 + math.log(S) / math.log(L0)))
    torch.testing.assert_close(logits(plain, ids), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_n_hat_keeps_first_positions(arch, ids):
    m = build(arch)
    ref = logits(m, ids)
    g = RopeGeometry.from_config(m.config)
    k = 8
    apply_factors(m, RescaleFactors.uniform(S, g.n_freqs, n_hat=k, mscale=1.2))
    out = logits(m, ids)
    torch.testing.assert_close(out[:, :k], ref[:, :k], rtol=0, atol=1e-6)
    assert (out[:, k:] - ref[:, k:]).abs().max() > 1e-3  # the rest really changed


def test_switching_is_a_buffer_copy(ids):
    m = build("llama")
    rot = patch_model(m)
    ptr = rot.inv_freq.data_ptr()
    g = RopeGeometry.from_config(m.config)
    a = RescaleFactors.uniform(2.0, g.n_freqs)
    rot.set_factors(a)
    first = logits(m, ids)
    rot.set_factors(RescaleFactors.uniform(3.0, g.n_freqs))
    rot.set_factors(a)
    assert rot.inv_freq.data_ptr() == ptr and patch_model(m) is rot
    assert torch.equal(logits(m, ids), first)
