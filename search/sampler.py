"""LongRoPESampler: the LongRoPE evolution (paper section 3.2) as an Optuna sampler.

Generations are synchronous. Each trial owns a slot (g, j): generation g,
child j. Generation 0 is the seeds followed by mutants of them, `population`
in all; generation g >= 1 is `mutants` + `crossovers` children of the
`parents` best complete trials of generations < g. Because the survivors are
always kept, "the best 32 of parents ∪ children" equals "the best 32 of all
evaluated so far", so generation g is a pure function of (seed, g, evaluated
population); worker count, arrival order and restarts cannot change it.

A trial's parameters are its genes only: ``lambda_{i:03d}`` for the searched
pairs (every pair, or from the critical dimension c on, keeping their pair
index), ``n_hat``, and ``mscale`` when the space searches it. The pairs below c
are not parameters: they are a pure function of λ_c and c (SearchSpace.expand),
and c is part of the frozen config, so storing them would only add a second
copy that could disagree; `from_params` rebuilds the full vector.

All bookkeeping lives in the Optuna storage: the slot in each trial's system
attrs (and in user attrs of a re-queued trial), the chosen parents in study
system attrs (keys in longrope.runs.vocab). Any process can pick the search up
from the journal alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from longrope.runs.optuna_io import set_study_system_attr, set_trial_system_attr, trial_id
from longrope.runs.vocab import REASON, REQUEUED, SLOT, parents_key
from longrope.spaces import RescaleFactors, SearchSpace, UserError

from .operators import MAX_TRIES, mutate, next_generation

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def param_name(i: int) -> str:
    return f"lambda_{i:03d}"


def to_params(f: RescaleFactors, space: SearchSpace) -> dict[str, float | int]:
    """The genes of f as trial parameters (see the module docstring)."""
    c = space.first_searched
    d: dict[str, float | int] = {param_name(i): f.lambdas[i] for i in range(c, len(f.lambdas))}
    d["n_hat"] = f.n_hat
    if space.searches_mscale:
        d["mscale"] = f.mscale
    return d


def from_params(params: dict, space: SearchSpace) -> RescaleFactors:
    """The candidate a trial's parameters stand for: its genes, expanded to every pair."""
    genes = [float(params[param_name(i)]) for i in range(space.first_searched, space.n_freqs)]
    mscale = float(params["mscale"]) if space.searches_mscale else space.mscale
    return RescaleFactors(tuple(space.expand(genes).tolist()), n_hat=int(params["n_hat"]), mscale=mscale)


def slot_of(t: FrozenTrial) -> tuple[int, int] | None:
    """The slot a trial holds or was queued for: the sampler's copy (before_trial), else the
    queue's (a re-queued copy killed before before_trial ran has only that one)."""
    slot = t.system_attrs.get(SLOT) or t.user_attrs.get(SLOT)
    return None if slot is None else tuple(slot)


def owns_slot(t: FrozenTrial) -> bool:
    """A trial abandoned by a crash gave its slot to its re-queued copy."""
    return SLOT in t.system_attrs and not t.system_attrs.get(REQUEUED)


def no_parents_message(trials: list[FrozenTrial], g: int) -> str:
    """Why generation g cannot be bred: every earlier candidate failed (or was pruned), and
    what the failures said, most frequent first."""
    from collections import Counter

    earlier = [t for t in trials if t.system_attrs[SLOT][0] < g]
    reasons = Counter(t.user_attrs.get(REASON, t.state.name.lower()) for t in earlier)
    said = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
    return (f"generation {g} has no parents: none of the {len(earlier)} candidates before it scored "
            f"completely ({said}); fix the cause in events.log, then resume")


class LongRoPESampler(optuna.samplers.BaseSampler):
    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        population: int = 64,
        parents: int = 32,
        mutants: int = 16,
        crossovers: int = 16,
        mutation_prob: float = 0.3,
        crossover_prob: float = 0.3,
        sigma: float = 0.05,
        seeds: Sequence[RescaleFactors] = (),
        stream: int = 0,
    ):
        if parents > population:
            raise ValueError(f"parents ({parents}) must not exceed population ({population})")
        if mutants + crossovers < 1:
            raise ValueError("need at least one mutant or crossover per generation")
        self.space = space
        self.seed, self.stream = seed, stream
        self.population, self.n_parents = population, parents
        self.mutants, self.crossovers = mutants, crossovers
        self.p_mut, self.p_cross, self.sigma = mutation_prob, crossover_prob, sigma
        self.seeds = [space.clip(s) for s in seeds]
        self._children: dict[int, list[RescaleFactors]] = {}
        self._slots: dict[int, tuple[int, int]] = {}

    # -- slots -------------------------------------------------------------------
    @property
    def children_per_generation(self) -> int:
        return self.mutants + self.crossovers

    def slot_of_index(self, m: int) -> tuple[int, int]:
        if m < self.population:
            return 0, m
        g, j = divmod(m - self.population, self.children_per_generation)
        return g + 1, j

    def slots_before(self, g: int) -> int:
        """Number of slots in generations < g."""
        return 0 if g == 0 else self.population + (g - 1) * self.children_per_generation

    def owned(self, study: optuna.Study) -> list[FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if owns_slot(t)]

    def next_slot(self, study: optuna.Study) -> tuple[int, int]:
        waiting = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                   if SLOT in t.user_attrs]
        if waiting:
            return tuple(waiting[0].user_attrs[SLOT])
        return self.slot_of_index(len(self.owned(study)))

    def ready(self, study: optuna.Study) -> bool:
        """True when the next slot's earlier generations have all finished."""
        g, _ = self.next_slot(study)
        done = sum(1 for t in self.owned(study) if t.state in FINISHED
                   and t.system_attrs[SLOT][0] < g)
        return done == self.slots_before(g)

    # -- generations -------------------------------------------------------------
    def rng(self, g: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, g])

    def parents(self, study: optuna.Study, g: int) -> list[FrozenTrial]:
        """The best complete trials of generations < g, ties broken by slot."""
        done = [t for t in self.owned(study) if t.state == TrialState.COMPLETE
                and t.system_attrs[SLOT][0] < g and t.value is not None and math.isfinite(t.value)]
        done.sort(key=lambda t: (t.value, tuple(t.system_attrs[SLOT])))
        return done[: self.n_parents]

    def cutoff_parent(self, study: optuna.Study, g: int) -> FrozenTrial | None:
        """Generation g's pruning cut-off: its worst parent, once there are enough parents."""
        if g == 0:
            return None
        par = self.parents(study, g)
        return par[-1] if len(par) == self.n_parents else None

    def threshold(self, study: optuna.Study, g: int) -> float | None:
        """The cut-off parent's ppl (None before there is one)."""
        worst = self.cutoff_parent(study, g)
        return None if worst is None else worst.value

    def generation(self, study: optuna.Study, g: int) -> list[RescaleFactors]:
        if g in self._children:
            return self._children[g]
        rng = self.rng(g)
        n = self.space.n_freqs
        if g == 0:
            out: list[RescaleFactors] = []
            seen: set = set()
            for s in self.seeds:
                if self.space.key(s) not in seen and len(out) < self.population:
                    seen.add(self.space.key(s))
                    out.append(s)
            # the rest: mutants of the seeds in turn (a copy: `out` grows while they are bred)
            base = list(out) or [self.space.repair(RescaleFactors.uniform(1.0, n, mscale=self.space.mscale))]
            if not out:
                out.append(base[0])
                seen.add(self.space.key(base[0]))
            tries, bred_on = 0, False
            while len(out) < self.population:
                # the seeds in turn; once their neighbours are all taken (a mutant moves n̂ one step),
                # any candidate found so far, drawn at random
                parent = base[int(rng.integers(len(base)))] if bred_on else base[len(out) % len(base)]
                child = mutate(parent, rng, self.space, self.p_mut, self.sigma)
                tries += 1
                if self.space.key(child) not in seen:
                    seen.add(self.space.key(child))
                    out.append(child)
                    if bred_on:
                        base.append(child)
                    tries = 0
                elif tries >= MAX_TRIES and not bred_on:
                    base, tries, bred_on = list(out), 0, True
                elif tries >= MAX_TRIES:
                    raise UserError(
                        f"generation 0: only {len(out)} distinct candidates of search.population = "
                        f"{self.population} after {MAX_TRIES} mutants in a row that were all duplicates; "
                        "the space is too small for the population (a coarse space.step, a short stage, "
                        "deployable) or search.mutation_prob is 0: lower search.population or widen the "
                        "space")
        else:
            earlier = [t for t in self.owned(study) if t.system_attrs[SLOT][0] < g]
            running = sum(t.state not in FINISHED for t in earlier)
            if running:  # bred now, the generation would depend on which of them happened to finish
                raise RuntimeError(
                    f"LongRoPESampler: generation {g} is bred from every candidate before it, but "
                    f"{running} of them {'is' if running == 1 else 'are'} not told yet; tell each "
                    "generation before asking the next (study.optimize with n_jobs=1; `longrope "
                    "search` waits for them itself)")
            par = self.parents(study, g)
            if not par:
                raise UserError(no_parents_message(self.owned(study), g))
            n_params = len(self.distributions())
            seen = {self.space.key(from_params(t.params, self.space)) for t in earlier
                    if len(t.params) == n_params}
            out = next_generation(
                [from_params(t.params, self.space) for t in par], rng, self.space,
                self.mutants, self.crossovers, self.p_mut, self.p_cross, self.sigma, seen,
            )
            set_study_system_attr(study, parents_key(g), [t.number for t in par])
        self._children[g] = out
        return out

    # -- Optuna sampler interface ------------------------------------------------
    def distributions(self) -> dict[str, BaseDistribution]:
        sp = self.space
        d: dict[str, BaseDistribution] = {
            param_name(i): FloatDistribution(float(lo), sp.lambda_top)
            for i, lo in enumerate(sp.gene_lows, start=sp.first_searched)
        }
        d["n_hat"] = CategoricalDistribution(sp.n_hats)
        if sp.searches_mscale:
            d["mscale"] = FloatDistribution(sp.mscale_grid[0], sp.mscale_grid[1])
        return d

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self.distributions()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        slot = tuple(trial.user_attrs.get(SLOT) or self.slot_of_index(len(self.owned(study))))
        set_trial_system_attr(study, trial, SLOT, list(slot))
        trial.system_attrs[SLOT] = list(slot)
        self._slots[trial_id(trial)] = slot

    def sample_relative(self, study, trial: FrozenTrial, search_space) -> dict:
        g, j = self._slots.get(trial_id(trial)) or tuple(trial.system_attrs[SLOT])
        return to_params(self.generation(study, g)[j], self.space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise RuntimeError(f"LongRoPESampler samples every parameter jointly; got {param_name!r} "
                           "outside its search space")

    def factors(self, trial: FrozenTrial | optuna.Trial) -> RescaleFactors:
        """The candidate a trial stands for. A live trial (an objective's argument) is asked for
        every gene first, so an objective needs no suggest_* calls of its own."""
        if isinstance(trial, optuna.Trial):
            for name, dist in self.distributions().items():
                if isinstance(dist, CategoricalDistribution):
                    trial.suggest_categorical(name, dist.choices)
                else:
                    trial.suggest_float(name, dist.low, dist.high)
        return from_params(trial.params, self.space)
