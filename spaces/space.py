"""The set of candidates one stage may propose.

For target length L with s = L / L0 (LongRoPE section 3.2): λ_i on a grid of
``step`` inside [1, λmax] with λmax = 1.25·s by default, non-decreasing in i
(low frequencies stretch at least as much as high ones), and n̂ from a small
set. Short stages (L <= L0) use λmax = ratio·1 (s is taken as at least 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .factors import RescaleFactors

N_HAT_PAPER = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
_EPS = 1e-9


@dataclass(frozen=True)
class SearchSpace:
    """Bounds, grid, monotonicity and n̂ choices for n_freqs factors."""

    n_freqs: int
    lambda_max: float
    step: float = 0.01
    n_hats: tuple[int, ...] = N_HAT_PAPER
    mscale: float = 1.0
    lambda_min: float = 1.0

    def __post_init__(self) -> None:
        if self.n_freqs < 1:
            raise UserError(f"search space needs at least one frequency, got {self.n_freqs}")
        if not (math.isfinite(self.lambda_max) and self.lambda_max >= self.lambda_min):
            raise UserError(f"lambda_max = {self.lambda_max} must be >= lambda_min = {self.lambda_min}")
        if self.lambda_min < 1:
            raise UserError(f"lambda_min = {self.lambda_min} must be >= 1 (λ < 1 compresses positions)")
        if not (0 < self.step <= 1):
            raise UserError(f"grid step must be in (0, 1], got {self.step}")
        if not self.n_hats or any(int(n) != n or n < 0 for n in self.n_hats):
            raise UserError(f"n_hat choices must be non-negative integers, got {list(self.n_hats)}")
        object.__setattr__(self, "n_hats", tuple(sorted({int(n) for n in self.n_hats})))

    @classmethod
    def for_target(
        cls,
        n_freqs: int,
        s: float,
        ratio: float = 1.25,
        lambda_max: float | None = None,
        **kw,
    ) -> SearchSpace:
        """λmax = ratio·s (paper: 1.25·s) unless given explicitly."""
        lmax = lambda_max if lambda_max else ratio * max(s, 1.0)
        return cls(n_freqs=n_freqs, lambda_max=lmax, **kw)

    # -- grid arithmetic: integer grid indices make equality exact ----------
    def _grid_max(self) -> float:
        steps = math.floor((self.lambda_max - self.lambda_min) / self.step + _EPS)
        return self.lambda_min + steps * self.step

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Round to the nearest grid point, clipped into the grid's range."""
        k = np.round((np.asarray(x, dtype=np.float64) - self.lambda_min) / self.step)
        k = np.clip(k, 0, round((self._grid_max() - self.lambda_min) / self.step))
        return np.round(self.lambda_min + k * self.step, 10)

    def on_grid(self, x: float) -> bool:
        k = (x - self.lambda_min) / self.step
        return abs(k - round(k)) < 1e-6

    # -- membership and repair -------------------------------------------------
    def violations(self, f: RescaleFactors, grid: bool = True) -> list[str]:
        """Every reason f is not in the space, each naming the index and value."""
        out = []
        if len(f.lambdas) != self.n_freqs:
            return [f"expected {self.n_freqs} factors, got {len(f.lambdas)}"]
        for i, x in enumerate(f.lambdas):
            if x < self.lambda_min - _EPS or x > self.lambda_max + _EPS:
                out.append(f"λ[{i}] = {x} is outside [{self.lambda_min}, {self.lambda_max}]")
            elif grid and not self.on_grid(x):
                out.append(f"λ[{i}] = {x} is not on the {self.step} grid")
            if i and x < f.lambdas[i - 1] - _EPS:
                out.append(f"λ[{i}] = {x} is below λ[{i - 1}] = {f.lambdas[i - 1]} (must not decrease)")
        if f.n_hat not in self.n_hats:
            out.append(f"n_hat = {f.n_hat} is not one of {list(self.n_hats)}")
        return out

    def contains(self, f: RescaleFactors, grid: bool = True) -> bool:
        return not self.violations(f, grid)

    def validate(self, f: RescaleFactors, grid: bool = True) -> RescaleFactors:
        bad = self.violations(f, grid)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"factors not in the search space: {bad[0]}{more}")
        return f

    def repair(self, f: RescaleFactors) -> RescaleFactors:
        """Snap to grid, clip into bounds, make non-decreasing (running max),
        and move n̂ to the nearest allowed choice. Idempotent."""
        lam = self.snap(np.maximum.accumulate(np.asarray(f.lambdas, dtype=np.float64)))
        n_hat = min(self.n_hats, key=lambda n: (abs(n - f.n_hat), n))
        return RescaleFactors(tuple(lam.tolist()), n_hat=n_hat, mscale=self.mscale)

    def clip(self, f: RescaleFactors) -> RescaleFactors:
        """Bounds and monotonicity only, no grid: keeps an exact seed exact when
        it already lies inside the space."""
        lam = np.clip(np.maximum.accumulate(np.asarray(f.lambdas, dtype=np.float64)),
                      self.lambda_min, self.lambda_max)
        n_hat = f.n_hat if f.n_hat in self.n_hats else min(self.n_hats)
        return RescaleFactors(tuple(lam.tolist()), n_hat=n_hat, mscale=self.mscale, meta=f.meta)

    def key(self, f: RescaleFactors) -> tuple[int, ...]:
        """Exact identity on the grid: integer grid indices plus n̂."""
        k = np.round((np.asarray(f.lambdas) - self.lambda_min) / self.step).astype(np.int64)
        return (*k.tolist(), f.n_hat)
