"""CMA-ES, TPE and random search on the same objective, for comparison.

They search a monotone-by-construction parametrisation: λ_0 = 1 + step_0,
λ_i = λ_{i-1} + step_i with steps >= 0, clipped to λmax (step_0 may span the
whole range; later steps up to 4·(λmax − 1)/n, so a few can climb to λmax, or
up to a seed's own step where it is steeper, so each seed is enqueued exactly).
n̂ is categorical. The exact seeds are enqueued first, as for the evolution.
With a critical dimension c the steps start at λ_c = s + step_c (the pairs
below c follow λ_c, SearchSpace.expand), or, when the pairs below c are searched
too, at λ_0 = 1 + step_0 with λ_c.. lifted to s; a searched mscale is one more float
parameter, snapped onto its grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from copy import copy as copy_of
from functools import cached_property

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from longrope.runs.optuna_io import set_trial_system_attr, trial_id
from longrope.runs.vocab import COPY_OF, DRAW, REQUEUED
from longrope.spaces import RescaleFactors, SearchSpace


class StepParametrisation:
    def __init__(self, space: SearchSpace, seeds: Sequence[RescaleFactors] = ()):
        """`seeds`: factors to enqueue exactly; a step of theirs above 4·span/n (YaRN's and NTK's
        steep ramps) widens that step's range, or the seed would be scored with its ramp cut."""
        self.space = space
        self.first = space.first_searched
        n = space.n_freqs - self.first
        span = space.lambda_max - space.gene_min
        bounds = np.array([span] + [4 * span / n] * (n - 1))
        for f in seeds:
            bounds = np.maximum(bounds, self._steps(f))
        self.bounds = bounds.tolist()

    def distributions(self) -> dict[str, BaseDistribution]:
        d: dict[str, BaseDistribution] = {
            f"step_{i:03d}": FloatDistribution(0.0, max(b, 1e-9))
            for i, b in enumerate(self.bounds, start=self.first)
        }
        d["n_hat"] = CategoricalDistribution(self.space.n_hats)
        if self.space.searches_mscale:
            d["mscale"] = FloatDistribution(self.space.mscale_grid[0], self.space.mscale_grid[1])
        return d

    def factors(self, params: dict) -> RescaleFactors:
        sp = self.space
        steps = np.array([params[f"step_{i:03d}"] for i in range(self.first, sp.n_freqs)])
        lam = sp.expand(np.clip(sp.gene_min + np.cumsum(steps), sp.gene_lows, sp.lambda_max))
        mscale = sp.snap_mscale(params["mscale"]) if sp.searches_mscale else sp.mscale
        return RescaleFactors(tuple(lam.tolist()), n_hat=int(params["n_hat"]), mscale=mscale)

    def _steps(self, f: RescaleFactors) -> np.ndarray:
        sp = self.space
        lam = np.clip(np.maximum.accumulate(sp.genes(f)), sp.gene_lows, sp.lambda_max)
        return np.diff(np.concatenate([[sp.gene_min], lam]))

    def params(self, f: RescaleFactors) -> dict:
        sp = self.space
        steps = np.minimum(self._steps(f), self.bounds)
        d = {f"step_{i:03d}": float(s) for i, s in enumerate(steps, start=self.first)}
        d["n_hat"] = f.n_hat if f.n_hat in sp.n_hats else sp.n_hats[0]
        if sp.searches_mscale:
            d["mscale"] = min(max(f.mscale, sp.mscale_grid[0]), sp.mscale_grid[1])
        return d


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "tpe":
        with warnings.catch_warnings():  # a warning per search that multivariate is experimental: noise
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def draw_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def read_by(t: FrozenTrial, below: int) -> bool:
    """Whether the sampler of a draw whose history ends below draw `below` reads trial t: every
    trial that is no draw (the seeds, all scored before the first draw) and the draws below."""
    return DRAW not in t.system_attrs or t.system_attrs[DRAW] < below


class History:
    """The study as the sampler of one draw reads it: the draws below `below` and no others, so
    that what it reads is the same whatever order the results before it arrived in; and each
    trial at the number an uninterrupted run gives it (canonical_numbers), since TPE orders what
    it reads by number and CMA-ES takes a generation's first popsize trials by number."""

    def __init__(self, study: optuna.Study, below: int):
        self._study, self._below = study, below

    @cached_property
    def _numbers(self) -> dict[int, int]:  # on the first read: many sampler calls read no trial
        return canonical_numbers(self._study._get_trials(deepcopy=False, use_cache=True))

    def __getattr__(self, name):  # the storage, the direction, ...: the study's own
        if name in ("trials", "best_trial", "best_trials", "best_value"):  # read past the filter: say so
            raise AttributeError(f"History.{name}: a sampler read the study past its draw's history")
        return getattr(self._study, name)

    def _get_trials(self, deepcopy=True, states=None, use_cache=False):
        seen = []
        for t in self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache):
            if read_by(t, self._below):
                t = t if deepcopy else copy_of(t)
                t.number = self._numbers.get(t.number, t.number)
                seen.append(t)
        return sorted(seen, key=lambda t: t.number)

    def get_trials(self, deepcopy=True, states=None):
        return self._get_trials(deepcopy=deepcopy, states=states)


def canonical_numbers(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """Each trial's number as an uninterrupted run gives it: the S queued seeds first, in the
    order they were queued, then draw k at S + k; a re-queued copy takes its original's (COPY_OF).
    A resume numbers its copies after the trials asked before it, so by number a copy of draw 9
    came after draw 10. In an uninterrupted run every trial keeps its own number."""
    by_number = {t.number: t for t in trials}

    def root(t: FrozenTrial) -> FrozenTrial:
        for _ in range(len(by_number)):  # a chain of copies, each of the one before
            if t.user_attrs.get(COPY_OF) not in by_number:
                break
            t = by_number[t.user_attrs[COPY_OF]]
        return t

    def draw(t: FrozenTrial) -> int | None:  # a queued copy holds its draw as a user attr until asked
        return t.system_attrs.get(DRAW, t.user_attrs.get(DRAW))

    seeds = sorted(t.number for t in trials if draw(t) is None and COPY_OF not in t.user_attrs)
    rank = {n: i for i, n in enumerate(seeds)}
    out = {}
    for t in trials:
        r = root(t)
        k = draw(t) if draw(t) is not None else draw(r)
        out[t.number] = len(seeds) + k if k is not None else rank.get(r.number, t.number)
    return out


class DrawSeeded(optuna.samplers.BaseSampler):
    """`make_sampler(name, ·)` with its random stream a function of the draw, not of the process.

    Optuna's samplers keep their stream in the process: one made afresh on resume draws again
    what it drew before the interruption, and one re-seeded there draws what an uninterrupted
    run never drew. Here the k-th fresh candidate of the stage (queued ones, seeds and re-queued
    copies, take no draw) is sampled by a sampler seeded with (seed, k), and k is the smallest
    draw no trial holds with its parameters complete (a trial killed inside its ask, before its
    last parameter, gives its draw back). A re-queued copy of a drawn candidate is asked by its
    draw's sampler too, and CMA-ES sees the draw k where it reads trial.number (its ask's seed).
    Random search is then a function of (seed, k) alone: resumed after any interruption, or
    scored by any number of workers, it scores the same candidates. TPE and CMA-ES also read the
    scores: the sampler of draw k reads the seeds and the draws below k - lag + 1 (History), and
    draw k is asked only once those are all scored (may_draw), so at most `lag` draws are out at
    once and what each reads does not depend on the order results arrive in. `lag` is the worker
    count the stage began with (vocab.LAG; 1 in process: each draw reads every one before it):
    TPE and CMA-ES are a function of (seed, lag), on any number of workers, resumed or not.
    """

    def __init__(self, name: str, seed: int, n_params: int, lag: int = 1):
        self.name, self.seed, self.n_params, self.lag = name, seed, n_params, lag
        self.queued = make_sampler(name, seed)  # for queued trials: their parameters are fixed
        self._of: dict[int, optuna.samplers.BaseSampler] = {}  # trial id -> its draw's sampler

    def draw(self, study: optuna.Study) -> int:
        return self._draw(study.get_trials(deepcopy=False))

    def _draw(self, trials: Sequence[FrozenTrial]) -> int:
        held = {t.system_attrs[DRAW] for t in trials
                if DRAW in t.system_attrs and len(t.params) == self.n_params}
        return next(k for k in range(len(held) + 1) if k not in held)

    def may_draw(self, study: optuna.Study) -> bool:
        """Whether the next ask may run: for random search, or a queued trial (a seed, a re-queued
        copy: Optuna asks for those first), always; a fresh draw k once every trial its sampler
        reads is scored."""
        if self.name == "random":  # reads no scores
            return True
        trials = study.get_trials(deepcopy=False)
        live = [t for t in trials if not t.system_attrs.get(REQUEUED)]
        if any(t.state == TrialState.WAITING for t in live):
            return True
        below = self._draw(trials) - self.lag + 1
        return all(t.state.is_finished() for t in live if read_by(t, below))

    def _history(self, study: optuna.Study, trial: FrozenTrial):
        k = trial.system_attrs.get(DRAW)
        return study if k is None else History(study, k - self.lag + 1)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        sampler = self.queued
        copy = "fixed_params" in trial.system_attrs and DRAW in trial.user_attrs
        if "fixed_params" not in trial.system_attrs or copy:  # a fresh draw or a re-queued copy of one
            k = trial.user_attrs[DRAW] if copy else self.draw(study)
            set_trial_system_attr(study, trial, DRAW, k)
            trial.system_attrs[DRAW] = k
            sampler = make_sampler(self.name, draw_seed(self.seed, k))
        self._of[trial_id(trial)] = sampler
        sampler.before_trial(study, trial)
        if copy:  # asked as its original was, whose parameters it holds: CMA-ES counts a candidate
            # toward its generation when it asks for it, and Optuna asks for no fixed parameter
            self.sample_relative(study, trial, self.infer_relative_search_space(study, trial))

    def _sampler(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        return self._of.get(trial_id(trial), self.queued)

    def infer_relative_search_space(self, study, trial):
        return self._sampler(trial).infer_relative_search_space(self._history(study, trial), trial)

    def sample_relative(self, study, trial, search_space):
        study = self._history(study, trial)
        if self.name == "cmaes" and DRAW in trial.system_attrs:
            # CMA-ES seeds its ask with a draw of its stream + trial.number, which a resume shifts
            # (the killed trial and its re-queued copy take numbers): the draw k stands in for it.
            # Not for TPE, which reads trial.number to leave the trial itself out of its history
            trial = copy_of(trial)
            trial.number = trial.system_attrs[DRAW]
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler(trial).sample_independent(self._history(study, trial), trial, param_name,
                                                       param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._of.pop(trial_id(trial), self.queued).after_trial(study, trial, state, values)
