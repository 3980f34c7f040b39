"""Genetic operators: pure functions of (parents, rng, space).

Both return children already repaired onto the grid, inside the bounds and
monotone (SearchSpace.repair). `rng` is a numpy Generator, or anything with
`random(n)`, `normal(size=n)` and `integers(n)`, so tests can script draws.

The genes are the space's searched λ: all of them, or with a critical
dimension c only λ_c.. (the pairs below c follow λ_c, SearchSpace.expand)
unless the space searches below c too (then λ_c.. only have the floor s),
plus n̂, plus mscale when the space searches it. With neither option the draws
are exactly those of the plain search.

Mutation differs on purpose from the public LongRoPE code, which draws each
gene between its neighbours' values: there a plateau of equal λ (the 1.0 and
s runs of a YaRN seed) can only erode at its edges. Here a selected gene moves
by a Gaussian step and drags its plateau along: a rise lifts every later gene
that would fall below it, a fall lowers every earlier gene above it. Raising
the first gene of a plateau (or lowering its last) moves the whole plateau.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from longrope.spaces import RescaleFactors, SearchSpace


def mutate(parent: RescaleFactors, rng, space: SearchSpace, p: float = 0.3,
           sigma: float = 0.1) -> RescaleFactors:
    """Each gene mutates with probability p by N(0, (sigma·(λmax − gene_min))²); n̂
    moves to a neighbouring choice with probability p; a searched mscale moves by
    N(0, (sigma·(max − min))²) with probability p. Draw order is fixed: n gene coins,
    n steps, one n̂ coin, one n̂ direction, then (mscale searched) one coin, one step."""
    lam = space.genes(parent)
    n = lam.size
    coins = np.asarray(rng.random(n))
    steps = np.asarray(rng.normal(size=n)) * sigma * (space.lambda_max - space.gene_min)
    for i in np.flatnonzero(coins < p):
        new = lam[i] + steps[i]
        if new >= lam[i]:
            lam[i:] = np.maximum(lam[i:], new)  # rise: later genes may not stay below
        else:
            lam[: i + 1] = np.minimum(lam[: i + 1], new)  # fall: earlier genes may not stay above
    n_hat = parent.n_hat
    coin, direction = float(rng.random(1)[0]), int(rng.integers(2, size=1)[0])
    if coin < p and len(space.n_hats) > 1:
        k = space.n_hats.index(n_hat) if n_hat in space.n_hats else 0
        k = min(max(k + (1 if direction else -1), 0), len(space.n_hats) - 1)
        n_hat = space.n_hats[k]
    mscale = parent.mscale
    if space.searches_mscale:
        lo, hi, _ = space.mscale_grid
        coin, step = float(rng.random(1)[0]), float(np.asarray(rng.normal(size=1))[0])
        if coin < p:
            mscale = min(max(mscale + step * sigma * (hi - lo), lo), hi)
    lam = np.clip(lam, space.gene_lows, space.lambda_max)  # a step may overshoot a bound
    return space.repair(RescaleFactors(tuple(space.expand(lam).tolist()), n_hat=n_hat, mscale=mscale))


def crossover(a: RescaleFactors, b: RescaleFactors, rng, space: SearchSpace,
              p: float = 0.3) -> RescaleFactors:
    """Each gene (and n̂, and a searched mscale) comes from b with probability p, else
    from a; the result is made monotone by a running maximum. Draws: n gene coins,
    one n̂ coin, then (mscale searched) one mscale coin."""
    ga, gb = space.genes(a), space.genes(b)
    coins = np.asarray(rng.random(ga.size))
    lam = np.where(coins < p, gb, ga)
    n_hat = b.n_hat if float(rng.random(1)[0]) < p else a.n_hat
    mscale = a.mscale
    if space.searches_mscale and float(rng.random(1)[0]) < p:
        mscale = b.mscale
    return space.repair(RescaleFactors(tuple(space.expand(lam).tolist()), n_hat=n_hat, mscale=mscale))


MAX_TRIES = 200


class SpaceExhausted(RuntimeError):
    """No child unlike every candidate scored so far turned up in MAX_TRIES draws: the evolution
    ends its stage there (GAProposer), as an early stop."""


def next_generation(
    parents: Sequence[RescaleFactors],
    rng,
    space: SearchSpace,
    n_mutants: int,
    n_crossovers: int,
    p_mutation: float = 0.3,
    p_crossover: float = 0.3,
    sigma: float = 0.1,
    seen: set | None = None,
) -> list[RescaleFactors]:
    """n_mutants mutants then n_crossovers crossovers of uniformly drawn
    parents, none equal (on the grid) to anything in `seen` or to each other.
    A child that keeps colliding is mutated with a doubling step."""
    seen = set() if seen is None else seen
    children: list[RescaleFactors] = []
    for k in range(n_mutants + n_crossovers):
        child, scale = None, sigma
        for attempt in range(MAX_TRIES):
            if k < n_mutants or len(parents) < 2 or attempt >= MAX_TRIES // 2:
                base = parents[int(rng.integers(len(parents), size=1)[0])]
                child = mutate(base, rng, space, p_mutation, scale)
            else:
                i, j = rng.choice(len(parents), size=2, replace=False)
                child = crossover(parents[int(i)], parents[int(j)], rng, space, p_crossover)
            if space.key(child) not in seen:
                break
            if attempt >= MAX_TRIES // 2:
                scale *= 2
        else:
            raise SpaceExhausted(f"no candidate not already scored in {MAX_TRIES} tries: the space is "
                                 "nearly exhausted (a coarse space.step, a short stage, deployable)")
        seen.add(space.key(child))
        children.append(child)
    return children
