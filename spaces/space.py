"""The set of candidates one stage may propose.

For target length L with s = L / L0 (LongRoPE section 3.2): λ_i on a grid of
``step`` inside [1, λmax] with λmax = 1.25·s by default, non-decreasing in i
(low frequencies stretch at least as much as high ones), and n̂ from a small
set. Short stages (L <= L0) use λmax = ratio·1 (s is taken as at least 1).

Two LongRoPE2 options (Shang et al. 2025, arXiv 2502.20082) narrow or widen it:

- a critical dimension c: only the pairs i >= c are genes, each >= s; the pairs
  below c are not searched but follow NTK scaling anchored at c,
  λ_i = λ_c^(i/c) (`below_critical`); or, with search_below, the pairs below c
  are genes too (LongRoPE's free λ in [1, λ_c]) and only the floor λ >= s from c
  on is LongRoPE2's;
- a searched mscale: the attention scale is one more gene, on its own grid.

Off (the defaults), every pair is a gene and mscale is the stage's constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .factors import RescaleFactors

N_HAT_PAPER = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
_EPS = 1e-9


def below_critical(lambda_c: float, c: int) -> np.ndarray:
    """The λ of the pairs below the critical dimension c: NTK scaling anchored at pair c,

        λ_i = λ_c^(i/c),   0 <= i < c,

    so λ_0 = 1 and λ rises geometrically to λ_c, never above it (λ_c >= 1). It is the
    NTK-aware base change θ' = θ·λ_c^(d/(2c)) (then θ'_i = θ_i / λ_c^(i/c)) chosen so that pair
    c lands on its searched value; NTK's own λ_i = s^(2i/(d-2)) is this curve for any c. The
    LLaMA3-8B factors LongRoPE2 released (nnscaler examples/longrope2) follow it to 10 digits
    below their first searched pair (tests/spaces/test_critical.py)."""
    return float(lambda_c) ** (np.arange(c, dtype=np.float64) / c) if c else np.empty(0)


@dataclass(frozen=True)
class SearchSpace:
    """Bounds, grid, monotonicity and n̂ choices for n_freqs factors.

    critical_dim: None (every pair is a gene) or c: only λ_c..λ_{n-1} are genes, each >=
        searched_min (s), and λ_i = λ_c^(i/c) below c.
    search_below: with a critical dimension, the pairs below c are genes as well (in
        [lambda_min, λ_c] by monotonicity); only the floor searched_min from c on remains.
    mscale: the stage's attention scale, or with mscale_grid = (lo, hi, step) the start value
        of the searched one (snapped onto that grid).
    """

    n_freqs: int
    lambda_max: float
    step: float = 0.01
    n_hats: tuple[int, ...] = N_HAT_PAPER
    mscale: float = 1.0
    lambda_min: float = 1.0
    critical_dim: int | None = None
    searched_min: float | None = None  # lower bound of the genes from critical_dim on; None: lambda_min
    mscale_grid: tuple[float, float, float] | None = None  # (lo, hi, step): mscale searched
    search_below: bool = False  # critical_dim: the pairs below c are searched, not NTK-ruled

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
        c = self.critical_dim
        if c is not None and (int(c) != c or not 0 <= c < self.n_freqs):
            raise UserError(f"critical dimension {c} is not a pair index in 0..{self.n_freqs - 1}")
        if self.searched_min is not None and not self.lambda_min <= self.searched_min:
            raise UserError(f"searched λ minimum {self.searched_min} is below lambda_min = {self.lambda_min}")
        if self.search_below and c is None:
            raise UserError("searching the pairs below the critical dimension needs a critical dimension")
        if self._k_lo() > self._k_hi():
            lo = self.lambda_min if self.searched_min is None else self.searched_min
            raise UserError(f"no λ on the {self.step} grid lies in [{lo}, {self.lambda_max}] "
                            "(with a critical dimension the searched λ are >= s: raise λmax)")
        if self.mscale_grid is not None:
            lo, hi, st = (float(x) for x in self.mscale_grid)
            if not (0 < lo <= hi and st > 0):
                raise UserError(f"mscale grid needs 0 < min <= max and step > 0, got {lo}, {hi}, {st}")
            object.__setattr__(self, "mscale_grid", (lo, hi, st))
            object.__setattr__(self, "mscale", self.snap_mscale(self.mscale))

    @classmethod
    def for_target(
        cls,
        n_freqs: int,
        s: float,
        ratio: float = 1.25,
        lambda_max: float | None = None,
        critical_dim: int | None = None,
        **kw,
    ) -> SearchSpace:
        """λmax = ratio·s (paper: 1.25·s) unless given explicitly; with a critical dimension
        the searched λ are >= s (LongRoPE2), s taken as at least 1."""
        lmax = lambda_max if lambda_max else ratio * max(s, 1.0)
        if critical_dim is not None:
            kw.setdefault("searched_min", max(s, 1.0))
        return cls(n_freqs=n_freqs, lambda_max=lmax, critical_dim=critical_dim, **kw)

    # -- genes: the searched part of λ ---------------------------------------------
    @property
    def first_searched(self) -> int:
        """Index of the first searched λ: the critical dimension, or 0 (also with search_below)."""
        return 0 if self.search_below else (self.critical_dim or 0)

    @property
    def gene_min(self) -> float:
        """Lower bound of the first searched λ: s with a critical dimension (unless the pairs below
        it are searched too), else lambda_min."""
        return self.lambda_min if self.searched_min is None or self.search_below else self.searched_min

    @property
    def gene_lows(self) -> np.ndarray:
        """Lower bound of each searched λ: gene_min, and with search_below s from c on (the
        LongRoPE2 floor). Non-decreasing, so clipping keeps the genes monotone."""
        lows = np.full(self.n_freqs - self.first_searched, self.gene_min, dtype=np.float64)
        if self.search_below and self.searched_min is not None:
            lows[self.critical_dim:] = self.searched_min
        return lows

    @property
    def searches_mscale(self) -> bool:
        return self.mscale_grid is not None

    @property
    def one_point(self) -> bool:
        """Whether the space holds a single candidate: every λ at its one grid point, one n̂, mscale
        fixed (Optuna fills single-valued parameters without asking the sampler)."""
        lo, hi, st = self.mscale_grid or (1.0, 1.0, 1.0)
        fixed_mscale = math.floor((hi - lo) / st + _EPS) == 0  # one point on the mscale grid
        return bool(np.all(self._k_lows() == self._k_hi())) and len(self.n_hats) == 1 and fixed_mscale

    def genes(self, f: RescaleFactors) -> np.ndarray:
        """The searched λ of f (from the critical dimension on), float64."""
        return np.asarray(f.lambdas[self.first_searched:], dtype=np.float64)

    def expand(self, genes) -> np.ndarray:
        """The full λ vector from the searched genes: `below_critical` fills the pairs below c."""
        genes = np.asarray(genes, dtype=np.float64)
        c = self.first_searched
        return np.concatenate([below_critical(genes[0], c), genes]) if c else genes.copy()

    def snap_mscale(self, x: float) -> float:
        """The nearest point of the mscale grid, clipped into its range."""
        lo, hi, st = self.mscale_grid
        k = min(max(round((float(x) - lo) / st), 0), math.floor((hi - lo) / st + _EPS))
        return round(lo + k * st, 10)

    @property
    def lambda_top(self) -> float:
        """The highest λ a candidate takes: λmax's grid point, which may lie an ulp above a
        computed λmax (1.2 · 3 = 3.5999999999999996, its grid point 3.6)."""
        return max(self.lambda_max, round(self._grid_max(), 10))

    # -- grid arithmetic: integer grid indices make equality exact ----------
    def _grid_max(self) -> float:
        steps = math.floor((self.lambda_max - self.lambda_min) / self.step + _EPS)
        return self.lambda_min + steps * self.step

    def _k_lo(self) -> int:
        """Grid index of the lowest λ allowed from the critical dimension on: the first grid
        point >= searched_min (0 without one)."""
        if self.searched_min is None:
            return 0
        return math.ceil((self.searched_min - self.lambda_min) / self.step - 1e-6)

    def _k_lows(self) -> np.ndarray:
        """Grid index of each searched λ's lower bound (see gene_lows)."""
        k = np.full(self.n_freqs - self.first_searched, self._k_lo(), dtype=np.int64)
        if self.search_below:
            k[: self.critical_dim] = 0
        return k

    def _k_hi(self) -> int:
        return round((self._grid_max() - self.lambda_min) / self.step)

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Round the genes to the nearest grid point, each clipped into its range."""
        k = np.round((np.asarray(x, dtype=np.float64) - self.lambda_min) / self.step)
        k = np.clip(k, self._k_lows(), self._k_hi())
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
        c, lows = self.first_searched, self.gene_lows
        fixed = below_critical(f.lambdas[c], c)
        for i, x in enumerate(f.lambdas):
            lo = lows[i - c] if i >= c else None
            if i < c:
                if abs(x - fixed[i]) > 1e-9 * fixed[i]:
                    out.append(f"λ[{i}] = {x} is not λ[{c}]^({i}/{c}) = {fixed[i]} (below the critical "
                               f"dimension {c})")
            elif x < lo - _EPS or x > self.lambda_max + _EPS:
                out.append(f"λ[{i}] = {x} is outside [{lo}, {self.lambda_max}]")
            elif grid and not self.on_grid(x):
                out.append(f"λ[{i}] = {x} is not on the {self.step} grid")
            if i and x < f.lambdas[i - 1] - _EPS:
                out.append(f"λ[{i}] = {x} is below λ[{i - 1}] = {f.lambdas[i - 1]} (must not decrease)")
        if f.n_hat not in self.n_hats:
            out.append(f"n_hat = {f.n_hat} is not one of {list(self.n_hats)}")
        if self.searches_mscale:
            m, (mlo, mhi, _) = f.mscale, self.mscale_grid
            if m < mlo - _EPS or m > mhi + _EPS:
                out.append(f"mscale = {m} is outside [{mlo}, {mhi}]")
            elif grid and abs(self.snap_mscale(m) - m) > 1e-9:
                out.append(f"mscale = {m} is not on the {self.mscale_grid[2]} grid")
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
        """Snap the genes to the grid, clip them into bounds, make them non-decreasing (running
        max), recompute the pairs below the critical dimension, move n̂ to the nearest allowed
        choice and a searched mscale onto its grid (else set the stage's). Idempotent."""
        lam = self.expand(self.snap(np.maximum.accumulate(self.genes(f))))
        n_hat = min(self.n_hats, key=lambda n: (abs(n - f.n_hat), n))
        mscale = self.snap_mscale(f.mscale) if self.searches_mscale else self.mscale
        return RescaleFactors(tuple(lam.tolist()), n_hat=n_hat, mscale=mscale)

    def anchored_seeds(self, n: int = 8) -> list[RescaleFactors]:
        """LongRoPE2's starting points for a critical-dimension space (its genetic_base): λ_c from
        s upward, rising 0.1 a pair above c, NTK-ruled below c; here λ_c spread over [s, λmax]
        (the paper's bound, not its code's 1 + s). PI, NTK and YaRN lie below s from c on, so
        the floor clips all three onto one candidate: without these, generation 0 held two seeds."""
        c, lo = self.critical_dim, self.gene_min
        if c is None or self.search_below:
            return []
        rise = 0.1 * np.arange(self.n_freqs - c)
        genes = [np.minimum(lam + rise, self.lambda_max) for lam in np.linspace(lo, self.lambda_max, n)]
        return [self.repair(RescaleFactors(tuple(self.expand(x).tolist()), n_hat=0, mscale=self.mscale))
                for x in genes]  # repair: on the grid

    def clip(self, f: RescaleFactors) -> RescaleFactors:
        """Bounds, monotonicity and the critical-dimension rule only, no grid: keeps an exact
        seed exact when it already lies inside the space."""
        lam = self.expand(np.clip(np.maximum.accumulate(self.genes(f)), self.gene_lows, self.lambda_max))
        n_hat = f.n_hat if f.n_hat in self.n_hats else min(self.n_hats)
        mscale = min(max(f.mscale, self.mscale_grid[0]), self.mscale_grid[1]) if self.searches_mscale \
            else self.mscale
        return RescaleFactors(tuple(lam.tolist()), n_hat=n_hat, mscale=mscale, meta=f.meta)

    def key(self, f: RescaleFactors) -> tuple[int, ...]:
        """Exact identity on the grid: integer grid indices of the genes, n̂, and the mscale
        grid index when mscale is searched."""
        k = np.round((self.genes(f) - self.lambda_min) / self.step).astype(np.int64)
        if self.searches_mscale:
            return (*k.tolist(), f.n_hat, round((f.mscale - self.mscale_grid[0]) / self.mscale_grid[2]))
        return (*k.tolist(), f.n_hat)
