"""Stages: one search per target length, long ones ascending, then short ones.

Each long stage's initial population starts with the exact factors of the
configured methods (PI/NTK/YaRN/dynamic NTK) for its length and the previous
stage's best (progressive extension, paper section 3.3). Short stages (L <= L0) start from λ = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from longrope.spaces import RescaleFactors, RopeGeometry, SearchSpace, UserError, method, resolve_mscale

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


def make_stages(cfg: RunConfig, g: RopeGeometry) -> list[Stage]:
    sp = cfg.space
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
        for length in lengths:
            s = g.scale(length)
            space = SearchSpace.for_target(
                g.n_freqs, s, ratio=sp.lambda_max_ratio, lambda_max=sp.lambda_max or None,
                step=sp.step, n_hats=n_hats, mscale=resolve_mscale(sp.mscale, s, g.original_length),
            )
            out.append(Stage(kind, length, space, cfg.budget(), len(out)))
    return out


def initial_factors(cfg: RunConfig, stage: Stage, g: RopeGeometry,
                    previous: RescaleFactors | None) -> list[RescaleFactors]:
    """The exact factors that start a stage's population (mscale set to the stage's policy,
    n̂ = 0): the previous stage's best first, then search.methods."""
    if stage.kind == "short":
        return [method("none", g, stage.length).replace(mscale=stage.space.mscale)]
    out = [previous.replace(mscale=stage.space.mscale)] if previous is not None else []
    for name in cfg.search.methods:
        if name.endswith(".json"):  # a user's factors: must lie in the space (n̂ included)
            f = RescaleFactors.load(name)
            try:
                stage.space.validate(f)
            except UserError as e:
                raise UserError(f"factors file {name} in search.methods, at {stage.name}: {e}") from None
            out.append(f.replace(mscale=stage.space.mscale))
        else:
            out.append(method(name, g, stage.length).replace(mscale=stage.space.mscale))
    return out
