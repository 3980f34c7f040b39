"""Stages: one search per target length, long ones ascending, then short ones.

Each long stage is seeded with the exact PI/NTK/YaRN/dynamic-NTK factors for
its length and with the previous stage's best (progressive extension, paper
section 3.3). Short stages (L <= L0) start from λ = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from longrope.spaces import RescaleFactors, RopeGeometry, SearchSpace, UserError, resolve_mscale, seed

if TYPE_CHECKING:
    from .config import RunConfig


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


def stage_seeds(cfg: RunConfig, stage: Stage, g: RopeGeometry,
                previous: RescaleFactors | None) -> list[RescaleFactors]:
    """Exact seeds (mscale set to the stage's policy, n̂ = 0), previous best first."""
    if stage.kind == "short":
        return [seed("none", g, stage.length).replace(mscale=stage.space.mscale)]
    out = [previous.replace(mscale=stage.space.mscale)] if previous is not None else []
    for name in cfg.search.seeds:
        if name.endswith(".json"):  # a user's factors: must lie in the space (n̂ included)
            f = RescaleFactors.load(name)
            try:
                stage.space.validate(f)
            except UserError as e:
                raise UserError(f"seed file {name} at {stage.name}: {e}") from None
            out.append(f.replace(mscale=stage.space.mscale))
        else:
            out.append(seed(name, g, stage.length).replace(mscale=stage.space.mscale))
    return out
