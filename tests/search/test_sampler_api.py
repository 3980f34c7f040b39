"""LongRoPESampler as a plain Optuna sampler, outside `longrope search` (the README's Python use):
an objective needs no suggest calls, the result is a pure function of the seed, and asking a
generation before the last one is told is refused instead of breeding from whatever finished."""

import optuna
import pytest

from longrope.search.sampler import LongRoPESampler
from longrope.spaces import SearchSpace

SPACE = SearchSpace.for_target(8, 4.0)
SHAPE = dict(population=8, parents=4, mutants=2, crossovers=2)


def optimize(seed: int) -> list[tuple]:
    sampler = LongRoPESampler(SPACE, seed=seed, **SHAPE)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: sum((x - 2.5) ** 2 for x in sampler.factors(t).lambdas), n_trials=20)
    return [(t.params["n_hat"], t.value) for t in study.trials]


def test_optimize_with_factors_only_is_deterministic():
    a = optimize(0)
    assert len(a) == 20 and a == optimize(0) and a != optimize(1)
    assert min(v for _, v in a[8:]) < min(v for _, v in a[:8])  # the children improve on generation 0


def test_asking_past_an_untold_generation_is_refused():
    sampler = LongRoPESampler(SPACE, seed=0, **SHAPE)
    study = optuna.create_study(sampler=sampler)
    gen0 = [study.ask() for _ in range(8)]
    for t in gen0[:-1]:
        study.tell(t, sum(sampler.factors(t).lambdas))
    early = study.ask()  # generation 1's first child, with one of generation 0 still out
    sampler.factors(gen0[-1])
    with pytest.raises(RuntimeError, match="generation 1 is bred from every candidate before it, but 1 of them is"):
        sampler.factors(early)
