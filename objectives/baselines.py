"""Baselines as factors: a seed name from spaces, or any factors JSON file."""

from __future__ import annotations

from pathlib import Path

from longrope.spaces import SEEDS, RescaleFactors, RopeGeometry, UserError, seed


def method_factors(method: str, geometry: RopeGeometry, length: int) -> RescaleFactors:
    """`none`, `pi`, `ntk`, `yarn`, `dynamic_ntk`, `llama3`, or a path to a .json."""
    if method.endswith(".json") or Path(method).is_file():
        f = RescaleFactors.load(method)
        if len(f.lambdas) != geometry.n_freqs:
            raise UserError(
                f"{method}: {len(f.lambdas)} factors but the model has {geometry.n_freqs} frequencies"
            )
        return f
    if method not in SEEDS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(SEEDS)} or a factors .json file")
    return seed(method, geometry, length)
