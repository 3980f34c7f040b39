"""LongRoPE2's critical dimension and searched mscale in the search space."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrope.spaces import RescaleFactors, RopeGeometry, SearchSpace, UserError, below_critical, method

TINY_SOTU = Path(__file__).parents[2] / "objectives" / "builtin" / "tiny-sotu"

# LLaMA3-8B 8k -> 128k (s = 16) long factors as LongRoPE2 released them (microsoft/nnscaler,
# examples/longrope2/llama3_8b_longrope2_config.json), pairs 0..34: 0..32 are not on the 0.01 grid
# (derived), 33 on are (searched).
LLAMA3_LONGROPE2 = [
    1, 1.097906416, 1.205398499, 1.323414747, 1.452985542, 1.595242149, 1.751426591, 1.922902493,
    2.111166985, 2.317863779, 2.544797515, 2.79394952, 3.067495105, 3.367822558, 3.697553996,
    4.059568257, 4.457026037, 4.893397485, 5.372492496, 5.898493984, 6.475994392, 7.110035795,
    7.806153921, 8.570426477, 9.40952622, 10.33077921, 11.34222878, 12.45270576, 13.67190555,
    15.01047283, 16.48009443, 18.09360142, 19.8650811, 21.81, 21.87,
]


@pytest.mark.parametrize("geometry, expect", [
    # x = (d/2)·log_θ(L0/2π) = 64·ln(4096/2π)/ln(10^4) = 64·6.4799/9.2103 = 45.03 -> ⌈x⌉ - 1 = 45
    (RopeGeometry(128, 10000.0, 4096), 45),  # Llama-2 7B
    # 64·ln(8192/2π)/ln(5·10^5) = 64·7.1731/13.1224 = 34.98 -> 34
    (RopeGeometry(128, 500000.0, 8192), 34),  # LLaMA3-8B
    # 8·ln(64/2π)/ln(10^4) = 8·2.3210/9.2103 = 2.016 -> 2
    (RopeGeometry(16, 10000.0, 64), 2),  # the synthetic objective's geometry
])
def test_auto_critical_dim_by_hand(geometry, expect):
    c = geometry.critical_dim()
    assert c == expect
    period = 2 * math.pi * geometry.base ** (2 * np.arange(geometry.n_freqs) / geometry.rotary_dim)
    assert period[c] <= geometry.original_length < period[c + 1]  # c: the last pair with a full period


def test_auto_critical_dim_of_the_embedded_model():
    g = RopeGeometry.from_pretrained(TINY_SOTU)
    assert (g.rotary_dim, g.base, g.original_length) == (64, 10000.0, 128)
    # x = 32·ln(128/2π)/ln(10^4) = 32·3.01416/9.21034 = 10.47 -> ⌈x⌉ - 1 = 10: pair 10 turns once in
    # 2π·10^(40/64) = 111.7 tokens, pair 11 in 149.0 > L0 = 128
    assert g.critical_dim() == 10


def test_released_llama3_factors_follow_the_rule_below_their_first_searched_pair():
    lam = np.array(LLAMA3_LONGROPE2)
    np.testing.assert_allclose(below_critical(lam[33], 33), lam[:33], rtol=1e-8)
    with pytest.raises(AssertionError):  # the rule pins c: anchoring one pair later does not fit
        np.testing.assert_allclose(below_critical(lam[34], 34), lam[:34], rtol=1e-3)


@pytest.mark.parametrize("c", [1, 2, 5, 7])
def test_ntk_is_the_rule_for_any_critical_dim(c):
    f = method("ntk", RopeGeometry(16, 10000.0, 64), 256)
    np.testing.assert_allclose(below_critical(f.lambdas[c], c), f.lambdas[:c], rtol=1e-12)


def crit_space(n=8, s=4.0, c=3, **kw):
    return SearchSpace.for_target(n, s, critical_dim=c, **kw)


# any 8 factors, critical dimension, scale and λmax ratio: what the repair properties range over
CRIT_DRAWS = dict(
    lam=st.lists(st.floats(0.5, 40, allow_nan=False), min_size=8, max_size=8),
    c=st.integers(0, 7),
    s=st.sampled_from([1.0, 2.0, 4.0, 3.3, 15.625]),
    ratio=st.sampled_from([1.25, 2.5]),
)


@settings(max_examples=300, deadline=None)
@given(**CRIT_DRAWS, mscale=st.floats(0.1, 3))
def test_repair_with_critical_dim_and_searched_mscale(lam, c, s, ratio, mscale):
    sp = crit_space(s=s, c=c, ratio=ratio, mscale_grid=(1.0, 1.5, 1e-4))
    r = sp.repair(RescaleFactors(tuple(lam), mscale=mscale))
    assert sp.contains(r), sp.violations(r)
    assert sp.repair(r) == r and sp.key(sp.repair(r)) == sp.key(r)
    x = np.array(r.lambdas)
    assert np.all(np.diff(x) >= 0) and (x[0] == 1.0 or c == 0)
    assert np.all(x[c:] >= s - 1e-9) and np.all(x[c:] <= ratio * s + 1e-9)
    assert np.array_equal(x[:c], below_critical(x[c], c))  # exactly the rule, not approximately
    assert 1.0 <= r.mscale <= 1.5 and abs(r.mscale * 1e4 - round(r.mscale * 1e4)) < 1e-6


def test_violations_below_and_from_the_critical_dim():
    sp = crit_space(n=4, s=2.0, c=2, ratio=2.0)
    good = sp.repair(RescaleFactors((1.0, 1.0, 2.5, 3.0)))
    assert good.lambdas == (1.0, 2.5 ** 0.5, 2.5, 3.0) and sp.contains(good)
    with pytest.raises(UserError, match=r"λ\[1\] = 1.5 is not λ\[2\]\^\(1/2\) = 1.58"):
        sp.validate(RescaleFactors((1.0, 1.5, 2.5, 3.0)))
    with pytest.raises(UserError, match=r"λ\[2\] = 1.9 is outside \[2.0, 4.0\]"):
        sp.validate(RescaleFactors((1.0, 1.9 ** 0.5, 1.9, 2.0)))
    assert sp.key(good) == (150, 200, 0)  # genes only: the pairs below c are a function of λ_c


def test_searched_mscale_grid():
    sp = SearchSpace(n_freqs=2, lambda_max=2.0, mscale=1.23456, mscale_grid=(1.0, 1.5, 1e-4))
    assert sp.mscale == 1.2346 and sp.searches_mscale  # the start value is snapped onto the grid
    assert sp.snap_mscale(9.0) == 1.5 and sp.snap_mscale(0.2) == 1.0
    a = sp.repair(RescaleFactors((1.0, 2.0), mscale=1.11114))
    assert a.mscale == 1.1111 and sp.key(a) == (0, 100, 0, 1111)
    with pytest.raises(UserError, match=r"mscale = 1.6 is outside \[1.0, 1.5\]"):
        sp.validate(a.replace(mscale=1.6))
    with pytest.raises(UserError, match=r"mscale = 1.23456 is not on the 0.0001 grid"):
        sp.validate(a.replace(mscale=1.23456))
    fixed = SearchSpace(n_freqs=2, lambda_max=2.0, mscale=1.2)
    assert fixed.repair(a).mscale == 1.2 and len(fixed.key(a)) == 3  # off: the stage's constant


def test_bad_critical_settings():
    with pytest.raises(UserError, match=r"critical dimension 8 is not a pair index in 0..7"):
        crit_space(c=8)
    with pytest.raises(UserError, match=r"no λ on the 0.01 grid lies in \[15.625, 15.625\]"):
        crit_space(s=15.625, ratio=1.0)
    with pytest.raises(UserError, match="mscale grid needs 0 < min <= max"):
        SearchSpace(n_freqs=2, lambda_max=2.0, mscale_grid=(1.5, 1.0, 1e-4))


# -- search_below: the pairs below c are genes too; only the floor λ >= s from c on remains ------
@settings(max_examples=300, deadline=None)
@given(**CRIT_DRAWS)
def test_repair_searching_below_the_critical_dim(lam, c, s, ratio):
    sp = crit_space(s=s, c=c, ratio=ratio, search_below=True)
    r = sp.repair(RescaleFactors(tuple(lam)))
    assert sp.contains(r), sp.violations(r)
    assert sp.repair(r) == r and len(sp.key(r)) == 8 + 1  # every pair is a gene, plus n̂
    x = np.array(r.lambdas)
    assert np.all(np.diff(x) >= 0) and np.all(x >= 1.0) and np.all(x <= ratio * s + 1e-9)
    assert np.all(x[c:] >= s - 1e-9)  # the floor
    assert np.allclose(x * 100, np.round(x * 100), atol=1e-6)  # every pair on the grid, no rule
    free = np.clip(np.maximum.accumulate(sp.snap(np.maximum.accumulate(lam))), 1.0, None)
    assert np.array_equal(x[:c], free[:c])  # below c: LongRoPE's repair, untouched by the floor


def test_searching_below_keeps_what_the_rule_would_overwrite():
    sp = crit_space(n=4, s=2.0, c=2, ratio=2.0, search_below=True)
    f = RescaleFactors((1.0, 1.0, 1.5, 3.0))
    r = sp.repair(f)
    assert r.lambdas == (1.0, 1.0, 2.0, 3.0)  # λ_0, λ_1 stay; λ_2 lifted to the floor s = 2
    assert sp.first_searched == 0 and sp.key(r) == (0, 0, 100, 200, 0)
    assert crit_space(n=4, s=2.0, c=2, ratio=2.0).repair(f).lambdas == (1.0, 2.0 ** 0.5, 2.0, 3.0)
    with pytest.raises(UserError, match=r"λ\[2\] = 1.5 is outside \[2.0, 4.0\]"):
        sp.validate(f)
    with pytest.raises(UserError, match=r"λ\[1\] = 1.005 is not on the 0.01 grid"):
        sp.validate(RescaleFactors((1.0, 1.005, 2.0, 3.0)))
    with pytest.raises(UserError, match="needs a critical dimension"):
        SearchSpace(n_freqs=4, lambda_max=2.0, search_below=True)
