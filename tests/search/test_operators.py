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
