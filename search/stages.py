"""Stages: one search per target length, long ones ascending, then short ones.

Each long stage's initial population starts with the exact factors of the
configured methods (PI/NTK/YaRN/dynamic NTK) for its length and the previous
stage's best (progressive extension, paper section 3.3). Short stages (L <= L0) start from λ = 1.

LongRoPE2's options act per stage: ``space.critical_dim`` ("auto" resolves from
the model's geometry) and ``space.mscale = "search"``, which searches the long
stages' mscale from the su value; short stages keep mscale 1 (transformers applies
one attention factor, the long one, at every length).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longrope.spaces import (
    RescaleFactors,
    RopeGeometry,
    SearchSpace,
    UserError,
    method,
    mscale_su,
    resolve_mscale,
)

if TYPE_CHECKING:
    from .schema import RunConfig


@dataclass(frozen=True)
class Stage:
    kind: str  # long | short
    length: int
    space: SearchSpace
    budget: int
    index: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.length}"


def critical_dim(cfg: RunConfig, g: RopeGeometry) -> int | None:
    """The config's critical dimension for this model: None (off), or a pair index below d/2."""
    c = cfg.space.critical_dim
    if c == "off":
        return None
    n = g.n_freqs
    if c == "auto":
        c = g.critical_dim()
        if c >= n:
            raise UserError(f'space.critical_dim = "auto" gives pair {c}, but the model has only {n} '
                            f"rotary frequencies: every one completes a period inside L0 = "
                            f"{g.original_length}; nothing is left to search")
        return c
    if c >= n:
        raise UserError(f"space.critical_dim = {c} is not below the model's {n} rotary frequencies "
                        f"(d/2; pairs 0..{n - 1})")
    return c


def stage_mscale(cfg: RunConfig, kind: str, s: float, L0: int) -> dict:
    """The stage's mscale keywords for SearchSpace: a constant from the policy, or (searched,
    long stages) the su value as the start of the grid [mscale_min, mscale_max]."""
    sp = cfg.space
    if sp.mscale != "search":
        return {"mscale": resolve_mscale(sp.mscale, s, L0)}
    if kind == "short":
        return {"mscale": 1.0}
    return {"mscale": mscale_su(s, L0), "mscale_grid": (sp.mscale_min, sp.mscale_max, sp.mscale_step)}


def make_stages(cfg: RunConfig, g: RopeGeometry) -> list[Stage]:
    sp = cfg.space
    c = critical_dim(cfg, g)
    for t in sp.targets:
        if t <= g.original_length:
            raise UserError(f"space.targets: {t} is not above the model's trained length L0 = "
                            f"{g.original_length}; long targets must exceed L0 (use space.short)")
    for t in sp.short:
        if t > g.original_length:
            raise UserError(f"space.short: {t} exceeds the model's trained length L0 = {g.original_length}")
    n_hats = (0,) if sp.deployable else tuple(sp.n_hat)
    out = []
    for kind, lengths in (("long", sp.targets), ("short", sp.short)):
        fixed = "lambda_max" if kind == "long" else "short_lambda_max"  # the stage's fixed λmax key
        for length in lengths:
            s = g.scale(length)
            try:
                space = SearchSpace.for_target(
                    g.n_freqs, s, ratio=sp.lambda_max_ratio,
                    lambda_max=getattr(sp, fixed) or None,  # 0: ratio·s (short stages: ratio·1)
                    step=sp.step, n_hats=n_hats, critical_dim=c,
                    search_below=c is not None and sp.below_critical == "search",
                    **stage_mscale(cfg, kind, s, g.original_length),
                )
            except UserError as e:  # the bounds leave no searched λ: λmax below s with a critical_dim
                key = f"space.{fixed}" if getattr(sp, fixed) else "space.lambda_max_ratio"
                raise UserError(f"{key} at {kind}-{length} (s = {s:g}): {e}") from None
            if kind == "long" and sp.lambda_max and sp.lambda_max < s:
                print(f"note: space.lambda_max = {sp.lambda_max:g} is below s = {s:g} at {kind}-{length}: "
                      "every λ stays below PI's, and the seeds are clipped to it", file=sys.stderr)
            if space.one_point:  # its budget would score the same candidate over and over
                raise UserError(f"{kind}-{length}: the space holds one candidate (λ {space.lambda_min:g} to "
                                f"λmax = {space.lambda_max:g}, n̂ in {list(space.n_hats)}): nothing to "
                                f"search; raise space.lambda_max_ratio (or {fixed}), or drop the stage")
            out.append(Stage(kind, length, space, cfg.budget(), len(out)))
    return out


def initial_factors(cfg: RunConfig, stage: Stage, g: RopeGeometry,
                    previous: RescaleFactors | None) -> list[RescaleFactors]:
    """The exact factors that start a stage's population (mscale set to the stage's policy, or
    to the su value snapped onto the grid when it is searched; n̂ = 0): the previous stage's
    best first, then search.methods, then with a critical dimension LongRoPE2's anchored seeds."""
    if stage.kind == "short":
        return [method("none", g, stage.length).replace(mscale=stage.space.mscale)]
    out = [previous.replace(mscale=stage.space.mscale)] if previous is not None else []
    for name in cfg.search.methods:
        if name.endswith(".json"):  # a user's factors: must lie in the space (n̂ included)
            f = RescaleFactors.load(name)
            try:  # its own mscale is replaced; off the grid it stays exact like the methods' seeds (an
                # earlier run's best is often one of them: a λ of 4/3 from YaRN)
                stage.space.validate(f.replace(mscale=stage.space.mscale), grid=False)
            except UserError as e:
                raise UserError(f"factors file {name} in search.methods, at {stage.name}: {e}") from None
            out.append(f.replace(mscale=stage.space.mscale))
        else:
            out.append(method(name, g, stage.length).replace(mscale=stage.space.mscale))
    return out + stage.space.anchored_seeds()  # a critical dimension's own (PI/NTK/YaRN clip to one)
