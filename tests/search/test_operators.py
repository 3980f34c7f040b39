"""Operators against hand-computed children, with scripted random draws."""

import numpy as np
import pytest

from longrope.search.operators import crossover, mutate, next_generation
from longrope.spaces import RescaleFactors, SearchSpace

SPACE = SearchSpace(n_freqs=4, lambda_max=5.0, n_hats=(0, 2, 4, 8))  # sigma·span = 0.1·4 = 0.4


class Script:
    """Stands in for a numpy Generator: hands out pre-written draws in order."""

    def __init__(self, random=(), normal=(), integers=()):
        self.r, self.n, self.i = list(random), list(normal), list(integers)

    def random(self, size):
        out, self.r = self.r[:size], self.r[size:]
        return np.array(out)

    def normal(self, size):
        out, self.n = self.n[:size], self.n[size:]
        return np.array(out)

    def integers(self, high, size):
        out, self.i = self.i[:size], self.i[size:]
        return np.array(out)


def lam(f):
    return [round(x, 6) for x in f.lambdas]


def test_mutation_hand_checked():
    parent = RescaleFactors((1.0, 1.0, 2.0, 3.0), n_hat=2)
    rng = Script(random=[0.1, 0.9, 0.9, 0.2, 0.1], normal=[1.0, 5.0, 5.0, -1.0], integers=[1])
    child = mutate(parent, rng, SPACE, p=0.3, sigma=0.1)
    # gene 0: 1 + 0.4 = 1.4 lifts gene 1; gene 3: 3 - 0.4 = 2.6; n̂ coin 0.1 < 0.3, up one: 2 -> 4
    assert lam(child) == [1.4, 1.4, 2.0, 2.6] and child.n_hat == 4


def test_mutation_moves_whole_plateaus():
    parent = RescaleFactors((1.0, 1.0, 1.0, 5.0), n_hat=0)
    space = SearchSpace(n_freqs=4, lambda_max=5.0, n_hats=(0,))
    up = mutate(parent, Script([0.1, 0.9, 0.9, 0.9, 0.9], [1.0, 0, 0, 0], [0]), space, 0.3, 0.1)
    assert lam(up) == [1.4, 1.4, 1.4, 5.0]  # raising the first 1.0 lifts the whole run
    par2 = RescaleFactors((1.0, 5.0, 5.0, 5.0))
    down = mutate(par2, Script([0.9, 0.9, 0.9, 0.1, 0.9], [0, 0, 0, -1.0], [0]), space, 0.3, 0.1)
    assert lam(down) == [1.0, 4.6, 4.6, 4.6]  # lowering the last 5.0 lowers the whole run


def test_plateaus_move_with_a_real_rng():
    space = SearchSpace(n_freqs=8, lambda_max=10.0, n_hats=(0,))
    parent = RescaleFactors((1.0,) * 4 + (8.0,) * 4)
    rng = np.random.default_rng(0)
    kids = [mutate(parent, rng, space) for _ in range(300)]
    assert any(len(set(k.lambdas[:4])) == 1 and k.lambdas[0] > 1.0 for k in kids)
    assert any(len(set(k.lambdas[4:])) == 1 and k.lambdas[4] != 8.0 for k in kids)


def test_crossover_hand_checked():
    a, b = RescaleFactors((1.0, 2.0, 3.0, 4.0), n_hat=0), RescaleFactors((2.5,) * 4, n_hat=8)
    child = crossover(a, b, Script(random=[0.1, 0.9, 0.9, 0.9, 0.1]), SPACE, p=0.3)
    assert lam(child) == [2.5, 2.5, 3.0, 4.0] and child.n_hat == 8  # running max repairs 2.5 > 2.0
    child = crossover(a, b, Script(random=[0.9, 0.9, 0.2, 0.9, 0.5]), SPACE, p=0.3)
    assert lam(child) == [1.0, 2.0, 2.5, 4.0] and child.n_hat == 0


@pytest.mark.parametrize("seed", range(5))
def test_generation_children_valid_and_new(seed):
    space = SearchSpace.for_target(16, 8.0)
    rng = np.random.default_rng(seed)
    parents = [space.repair(RescaleFactors(tuple(np.sort(rng.uniform(1, 10, 16))))) for _ in range(8)]
    seen = {space.key(p) for p in parents}
    before = set(seen)
    kids = next_generation(parents, rng, space, 16, 16, seen=seen)
    assert len(kids) == 32
    assert all(space.contains(k) for k in kids)
    keys = [space.key(k) for k in kids]
    assert len(set(keys)) == 32 and not set(keys) & before


def test_generation_is_a_pure_function_of_its_inputs():
    space = SearchSpace.for_target(8, 4.0)
    parents = [space.repair(RescaleFactors.uniform(x, 8)) for x in (1.5, 2.0, 3.0)]
    a = next_generation(parents, np.random.default_rng([1, 2]), space, 4, 4)
    b = next_generation(parents, np.random.default_rng([1, 2]), space, 4, 4)
    c = next_generation(parents, np.random.default_rng([1, 3]), space, 4, 4)
    assert a == b and a != c


# -- LongRoPE2: critical dimension and searched mscale -------------------------------------------
CRIT = SearchSpace.for_target(6, 2.0, ratio=2.5, critical_dim=2, n_hats=(0, 2),
                              mscale_grid=(1.0, 1.5, 1e-4))  # genes λ_2..λ_5 in [2, 5]; sigma·span 0.3


def test_mutation_with_critical_dim_and_mscale_hand_checked():
    parent = CRIT.repair(RescaleFactors((1.0, 1.0, 2.0, 2.0, 3.0, 4.0), n_hat=0, mscale=1.2))
    rng = Script(random=[0.1, 0.9, 0.9, 0.9, 0.9, 0.1], normal=[1.0, 0, 0, 0, 1.0], integers=[1])
    child = mutate(parent, rng, CRIT, p=0.3, sigma=0.1)
    # 4 gene coins (pairs 2..5 only), n̂ coin 0.9 (stays), mscale coin 0.1: + 1.0·0.1·0.5
    # gene λ_2: 2 + 0.3 = 2.3 lifts λ_3; pairs 0, 1 follow: 2.3^(0/2), 2.3^(1/2)
    assert lam(child) == [1.0, round(2.3 ** 0.5, 6), 2.3, 2.3, 3.0, 4.0]
    assert child.n_hat == 0 and child.mscale == 1.25


def test_crossover_with_critical_dim_and_mscale_hand_checked():
    a = CRIT.repair(RescaleFactors((1.0, 1.0, 2.0, 3.0, 4.0, 5.0), mscale=1.1))
    b = CRIT.repair(RescaleFactors((1.0, 1.0, 4.0, 4.0, 4.0, 4.0), n_hat=2, mscale=1.4))
    child = crossover(a, b, Script(random=[0.1, 0.9, 0.9, 0.9, 0.9, 0.2]), CRIT, p=0.3)
    # gene λ_2 from b (4.0) and the running max; n̂ from a; mscale coin 0.2 < 0.3: from b
    assert lam(child) == [1.0, 2.0, 4.0, 4.0, 4.0, 5.0] and child.n_hat == 0 and child.mscale == 1.4


@pytest.mark.parametrize("seed", range(3))
def test_generation_keeps_the_constraints_with_critical_dim_at_ratio_2_5(seed):
    """LLaMA3-8B at 128k: d/2 = 64, c = 34, s = 16; LongRoPE2's released factors reach 1.63 s, so
    the bound is widened to 2.5 s. Children: on the grid, in [s, 2.5 s] from c on, the rule below
    c exactly, monotone, mscale on its grid, all new."""
    from longrope.spaces import below_critical

    s, c = 16.0, 34
    space = SearchSpace.for_target(64, s, ratio=2.5, critical_dim=c, mscale_grid=(1.0, 1.5, 1e-4),
                                   mscale=1.1435)
    rng = np.random.default_rng(seed)
    parents = [space.repair(RescaleFactors(tuple(np.sort(rng.uniform(1, 45, 64))), mscale=1.2))
               for _ in range(8)]
    seen = {space.key(p) for p in parents}
    before = set(seen)
    kids = next_generation(parents, rng, space, 16, 16, seen=seen)
    assert len({space.key(k) for k in kids}) == 32 and not {space.key(k) for k in kids} & before
    for k in kids:
        x = np.array(k.lambdas)
        assert space.contains(k), space.violations(k)
        assert np.all(np.diff(x) >= 0) and np.all(x[c:] >= s) and np.all(x[c:] <= 2.5 * s + 1e-9)
        assert np.allclose(x[c:] * 100, np.round(x[c:] * 100), atol=1e-6)
        assert np.array_equal(x[:c], below_critical(x[c], c)) and x[0] == 1.0
        assert 1.0 <= k.mscale <= 1.5
    assert max(max(k.lambdas) for k in kids) > 1.25 * s  # the widened range is used
    assert len({k.mscale for k in kids}) > 1  # mscale is searched, not a constant


@pytest.mark.parametrize("seed", range(3))
def test_generation_searching_below_the_critical_dim(seed):
    """The same geometry with the pairs below c searched: children on the grid at every pair,
    monotone, >= s from c on, and the pairs below c really vary (no rule ties them to λ_c)."""
    s, c = 16.0, 34
    space = SearchSpace.for_target(64, s, ratio=2.5, critical_dim=c, search_below=True)
    rng = np.random.default_rng(seed)
    parents = [space.repair(RescaleFactors(tuple(np.sort(rng.uniform(1, 45, 64))))) for _ in range(8)]
    seen = {space.key(p) for p in parents}
    kids = next_generation(parents, rng, space, 16, 16, seen=seen)
    for k in kids:
        x = np.array(k.lambdas)
        assert space.contains(k), space.violations(k)
        assert np.all(np.diff(x) >= 0) and np.all(x[c:] >= s) and x.min() >= 1.0
        assert np.allclose(x * 100, np.round(x * 100), atol=1e-6)
    ratios = {round(k.lambdas[c - 1] / k.lambdas[c], 6) for k in kids}
    assert len(ratios) > 5  # λ_{c-1}/λ_c is free; under the NTK rule it would be λ_c^(-1/c)-tied


def test_params_are_the_genes_and_round_trip():
    from longrope.search.sampler import from_params, to_params

    f = CRIT.repair(RescaleFactors((1.0, 1.0, 2.5, 3.0, 4.0, 5.0), n_hat=2, mscale=1.3333))
    params = to_params(f, CRIT)
    assert list(params) == ["lambda_002", "lambda_003", "lambda_004", "lambda_005", "n_hat", "mscale"]
    assert from_params(params, CRIT) == f and from_params(params, CRIT).mscale == 1.3333
    assert list(to_params(f, SPACE.__class__(n_freqs=6, lambda_max=5.0))) == [
        *(f"lambda_{i:03d}" for i in range(6)), "n_hat"]


def test_the_children_of_one_generation_are_distinct_in_a_small_space():
    """Caught before only through a frozen trajectory's digest."""
    from longrope.search.operators import next_generation
    from longrope.spaces import RescaleFactors, SearchSpace

    space = SearchSpace(n_freqs=2, lambda_max=1.2, n_hats=(0,))  # 21 grid points per gene
    parent = space.repair(RescaleFactors.uniform(1.1, 2))
    for seed in range(5):
        kids = next_generation([parent], np.random.default_rng(seed), space, 8, 0, seen={space.key(parent)})
        assert len({space.key(k) for k in kids}) == 8
