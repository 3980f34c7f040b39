import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrope.spaces import N_HAT_PAPER, RescaleFactors, SearchSpace, UserError, resolve_mscale


def space(n=8, s=8.0, **kw):
    return SearchSpace.for_target(n, s, **kw)


def test_defaults_are_the_papers():
    sp = space(s=8)
    assert sp.lambda_max == 10.0 and sp.step == 0.01 and sp.n_hats == N_HAT_PAPER
    assert N_HAT_PAPER == (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
    assert space(s=0.5).lambda_max == 1.25  # short stage


@settings(max_examples=300, deadline=None)
@given(
    lam=st.lists(st.floats(-5, 50, allow_nan=False), min_size=8, max_size=8),
    n_hat=st.integers(0, 1000),
    s=st.sampled_from([1.0, 2.0, 8.0, 3.3]),
)
def test_repair_lands_in_space_and_is_idempotent(lam, n_hat, s):
    sp = space(s=s)
    f = RescaleFactors(tuple(abs(x) + 1e-3 for x in lam), n_hat=n_hat)
    r = sp.repair(f)
    assert sp.contains(r), sp.violations(r)
    assert sp.repair(r) == r
    assert np.all(np.diff(r.lambdas) >= 0)


def test_violations_name_index_and_value():
    sp = space(n=4, s=2)
    with pytest.raises(UserError, match=r"λ\[2\] = 1.5 is below λ\[1\] = 2.0"):
        sp.validate(RescaleFactors((1.0, 2.0, 1.5, 2.0)))
    with pytest.raises(UserError, match=r"λ\[1\] = 1.234 is not on the 0.01 grid"):
        sp.validate(RescaleFactors((1.0, 1.234, 1.5, 2.0)))
    with pytest.raises(UserError, match=r"λ\[3\] = 2.6 is outside \[1.0, 2.5\]"):
        sp.validate(RescaleFactors((1.0, 1.2, 1.5, 2.6)))
    with pytest.raises(UserError, match=r"n_hat = 3 is not one of"):
        sp.validate(RescaleFactors((1.0, 1.2, 1.5, 2.0), n_hat=3))
    with pytest.raises(UserError, match="expected 4 factors, got 3"):
        sp.validate(RescaleFactors((1.0, 1.2, 1.5)))


def test_bad_space_settings():
    with pytest.raises(UserError, match="lambda_max = 0.5 must be >= lambda_min"):
        SearchSpace(n_freqs=4, lambda_max=0.5)
    with pytest.raises(UserError, match="grid step"):
        SearchSpace(n_freqs=4, lambda_max=2, step=0)


def test_grid_key_is_exact_identity():
    sp = space(n=3, s=2)
    a = sp.repair(RescaleFactors((1.004, 1.5, 2.0)))
    b = sp.repair(RescaleFactors((0.999, 1.5, 2.0)))
    assert a == b and sp.key(a) == sp.key(b) == (0, 50, 100, 0)


def test_factors_json_round_trip_exact_and_hashable():
    f = RescaleFactors((1.0, 1.0000000000000002, 2.718281828459045), n_hat=4, mscale=1.1931)
    g = RescaleFactors.from_json(f.to_json())
    assert g == f and hash(g) == hash(f) and g.lambdas[1] == 1.0000000000000002
    assert len({f, g}) == 1


def test_factors_file_errors(tmp_path):
    p = tmp_path / "f.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="malformed"):
        RescaleFactors.load(p)
    p.write_text(json.dumps({"lambdas": [1, "x"]}))
    with pytest.raises(UserError, match=r"lambdas\[1\] must be a finite number, got .x."):
        RescaleFactors.load(p)
    p.write_text(json.dumps({"lambdas": [1, -2]}))
    with pytest.raises(UserError, match=r"λ\[1\] = -2.0 is not a positive"):
        RescaleFactors.load(p)
    with pytest.raises(UserError, match="does not exist"):
        RescaleFactors.load(tmp_path / "missing.json")


def test_mscale_policies():
    assert resolve_mscale("su", 8, 4096) == pytest.approx((1 + np.log(8) / np.log(4096)) ** 0.5)
    assert resolve_mscale("yarn", 8, 4096) == pytest.approx(0.1 * np.log(8) + 1)
    assert resolve_mscale("none", 8, 4096) == 1.0
    assert resolve_mscale(1.3, 8, 4096) == 1.3
    assert resolve_mscale("su", 0.5, 4096) == 1.0
    with pytest.raises(UserError, match="unknown mscale policy"):
        resolve_mscale("sue", 8, 4096)


def test_a_drop_from_pair_0_to_pair_1_is_refused_by_eval_apply_and_the_space():
    """Every non-monotone case tested dropped at λ[2]: a check that skipped pair 1 passed."""
    from longrope.spaces import RescaleFactors, SearchSpace, UserError, check_usable

    bad = RescaleFactors((2.0, 1.5, 3.0, 3.0))
    with pytest.raises(UserError, match=r"λ\[1\] = 1.5 is below λ\[0\] = 2.0"):
        check_usable(bad, "f.json")
    assert any("λ[1] = 1.5 is below λ[0]" in v for v in SearchSpace(n_freqs=4, lambda_max=4.0).violations(bad))


def test_a_5x_configs_theta_is_read_from_rope_parameters():
    """A config saved by transformers 5.x keeps θ only there: unread, the θ check was skipped and
    factors searched at θ = 5e5 went onto a θ = 1e4 model without a word."""
    from longrope.spaces import DeployedFactors

    d = {"rope_parameters": {"rope_type": "longrope", "long_factor": [1.0] * 4, "short_factor": [1.0] * 4,
                             "factor": 2.0, "original_max_position_embeddings": 64, "rope_theta": 5e5}}
    assert DeployedFactors.from_hf(d).base == 5e5


def test_a_zero_lambda_is_refused_and_the_largest_n_hat_taken():
    from longrope.spaces import RescaleFactors, UserError
    from longrope.spaces.factors import N_HAT_MAX

    with pytest.raises(UserError, match="positive finite"):
        RescaleFactors((0.0, 1.0))  # θ/0 in apply_factors
    assert RescaleFactors.from_dict({"lambdas": [1.0], "n_hat": N_HAT_MAX}).n_hat == N_HAT_MAX


def test_clip_takes_an_n_hat_outside_the_choices_to_the_smallest():
    from longrope.spaces import RescaleFactors, SearchSpace

    space = SearchSpace(n_freqs=4, lambda_max=4.0, n_hats=(4, 8, 256))  # no 0: the seeds' n̂ is 4, not 256
    assert space.clip(RescaleFactors.uniform(1.0, 4)).n_hat == 4
