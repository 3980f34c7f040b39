"""Seeds reproduce transformers' ROPE_INIT_FUNCTIONS exactly."""

import math

import numpy as np
import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from hf_configs import ARCHS, tiny_config
from longrope.spaces import RopeGeometry, UserError, method

L0 = 64
SCALES = [2, 4, 8, 16]


def hf_inv_freq(arch, rope_scaling, seq_len=None, theta=10000.0, L0=L0, **kw):
    cfg = tiny_config(arch, L0=L0, theta=theta, rope_scaling=rope_scaling, **kw)
    inv, att = ROPE_INIT_FUNCTIONS[rope_scaling["rope_type"]](cfg, torch.device("cpu"), seq_len=seq_len)
    return cfg, inv.double().numpy(), att


def ours(cfg, name, L):
    g = RopeGeometry.from_config(cfg)
    f = method(name, g, L)
    return f.inv_freq(g), f.mscale


def assert_rel(a, b, tol=1e-6):
    np.testing.assert_array_less(np.abs(a - b) / np.abs(b), tol)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("s", SCALES)
def test_pi_equals_linear(arch, s):
    cfg, inv, att = hf_inv_freq(arch, {"rope_type": "linear", "factor": float(s)})
    mine, m = ours(cfg, "pi", s * L0)
    assert_rel(mine, inv)
    assert m == att == 1.0


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("s", SCALES)
def test_ntk_equals_dynamic_factor_one_at_target(arch, s):
    cfg, inv, _ = hf_inv_freq(arch, {"rope_type": "dynamic", "factor": 1.0}, seq_len=s * L0)
    assert_rel(ours(cfg, "ntk", s * L0)[0], inv)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("s", SCALES)
def test_dynamic_ntk_equals_dynamic_at_target(arch, s):
    cfg, inv, _ = hf_inv_freq(arch, {"rope_type": "dynamic", "factor": float(s)}, seq_len=s * L0)
    assert_rel(ours(cfg, "dynamic_ntk", s * L0)[0], inv)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_yarn_equals_hf(arch, s, theta):
    # YaRN's correction range depends on L0: use a realistic 4k L0 too.
    for l0 in (L0, 4096):
        cfg, inv, att = hf_inv_freq(
            arch,
            {"rope_type": "yarn", "factor": float(s), "original_max_position_embeddings": l0},
            theta=theta,
            L0=l0,
        )
        mine, m = ours(cfg, "yarn", s * l0)
        assert_rel(mine, inv)
        assert m == pytest.approx(att, rel=1e-12)
        assert m == pytest.approx(0.1 * math.log(s) + 1)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("s", SCALES)
def test_llama3_equals_hf(arch, s):
    rs = {"rope_type": "llama3", "factor": float(s), "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 4096}
    cfg, inv, _ = hf_inv_freq(arch, rs, theta=500000.0, L0=4096)
    assert_rel(ours(cfg, "llama3", s * 4096)[0], inv)


def test_yarn_blends_inverse_frequencies_not_lambdas():
    g = RopeGeometry(rotary_dim=64, base=10000.0, original_length=4096)
    lam = np.array(method("yarn", g, 8 * 4096).lambdas)
    ramp_region = (lam > 1.0 + 1e-9) & (lam < 8.0 - 1e-9)
    assert ramp_region.any()
    # In the ramp, 1/λ is linear in the index (a λ-blend would make λ linear).
    inv = 1 / lam[ramp_region]
    assert np.allclose(np.diff(inv, 2), 0, atol=1e-12)
    assert not np.allclose(np.diff(lam[ramp_region], 2), 0, atol=1e-6)


def test_unknown_seed_lists_known():
    g = RopeGeometry(rotary_dim=64, base=10000.0, original_length=4096)
    with pytest.raises(UserError, match="unknown method 'yarm'.*pi"):
        method("yarm", g, 8192)


def test_seeds_are_monotone_and_start_at_one():
    g = RopeGeometry(rotary_dim=128, base=500000.0, original_length=8192)
    for name in ("pi", "ntk", "yarn", "dynamic_ntk", "llama3"):
        lam = np.array(method(name, g, 8 * 8192).lambdas)
        assert np.all(np.diff(lam) >= -1e-12), name
        assert lam[0] == pytest.approx(1.0, abs=0.01) or name == "pi"


@pytest.mark.parametrize("name", ["none", "pi", "ntk", "yarn", "dynamic_ntk", "llama3"])
def test_at_or_below_the_trained_length_every_method_is_the_model_as_trained(name):
    """eval --lengths below L0: s = L/L0 < 1 compressed positions (PI's λ = 0.5 at L0/2, which
    check_usable refuses in a factors file); every method now leaves them, as HF's dynamic does."""
    g = RopeGeometry(rotary_dim=64, base=10000.0, original_length=4096)
    for length in (1024, 2048, 4096):
        f = method(name, g, length)
        assert f.lambdas == pytest.approx((1.0,) * 32, abs=1e-12) and f.mscale == 1.0, (name, length, f.mscale)
