"""CMA-ES, TPE and random search on the same objective, for comparison.

They search a monotone-by-construction parametrisation: λ_0 = 1 + step_0,
λ_i = λ_{i-1} + step_i with steps >= 0, clipped to λmax (step_0 may span the
whole range; later steps up to 4·(λmax − 1)/n, so a few can climb to λmax).
n̂ is categorical. The exact seeds are enqueued first, as for the evolution.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from longrope.spaces import RescaleFactors, SearchSpace


class StepParametrisation:
    def __init__(self, space: SearchSpace):
        self.space = space
        n = space.n_freqs
        span = space.lambda_max - space.lambda_min
        self.bounds = [span] + [4 * span / n] * (n - 1)

    def distributions(self) -> dict[str, BaseDistribution]:
        d: dict[str, BaseDistribution] = {
            f"step_{i:03d}": FloatDistribution(0.0, max(b, 1e-9)) for i, b in enumerate(self.bounds)
        }
        d["n_hat"] = CategoricalDistribution(self.space.n_hats)
        return d

    def factors(self, params: dict) -> RescaleFactors:
        steps = np.array([params[f"step_{i:03d}"] for i in range(self.space.n_freqs)])
        lam = np.minimum(self.space.lambda_min + np.cumsum(steps), self.space.lambda_max)
        return RescaleFactors(tuple(lam.tolist()), n_hat=int(params["n_hat"]), mscale=self.space.mscale)

    def params(self, f: RescaleFactors) -> dict:
        lam = np.clip(np.maximum.accumulate(np.asarray(f.lambdas)), self.space.lambda_min,
                      self.space.lambda_max)
        steps = np.diff(np.concatenate([[self.space.lambda_min], lam]))
        steps = np.minimum(steps, self.bounds)
        d = {f"step_{i:03d}": float(s) for i, s in enumerate(steps)}
        d["n_hat"] = f.n_hat if f.n_hat in self.space.n_hats else self.space.n_hats[0]
        return d


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
