"""Baselines as factors: a seed name from spaces, or any factors JSON file."""

from __future__ import annotations

from pathlib import Path

from longrope.spaces import SEEDS, RescaleFactors, RopeGeometry, UserError, seed


def is_file_method(method: str) -> bool:
    return method.endswith(".json") or Path(method).is_file()


def check_method(method: str) -> None:
    """Fail before any model loads: an unknown name, or a bad factors file."""
    if is_file_method(method):
        load_factors_file(method)
    elif method not in SEEDS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(SEEDS)} or a factors .json file")


def load_factors_file(method: str) -> RescaleFactors:
    f = RescaleFactors.load(method)
    for i in range(1, len(f.lambdas)):
        if f.lambdas[i] < f.lambdas[i - 1]:
            raise UserError(f"{method}: λ[{i}] = {f.lambdas[i]} is below λ[{i - 1}] = {f.lambdas[i - 1]}; "
                            "rescale factors must not decrease from high to low frequency")
    return f


def method_factors(method: str, geometry: RopeGeometry, length: int) -> RescaleFactors:
    """`none`, `pi`, `ntk`, `yarn`, `dynamic_ntk`, `llama3`, or a path to a .json."""
    if is_file_method(method):
        f = load_factors_file(method)
        if len(f.lambdas) != geometry.n_freqs:
            raise UserError(
                f"{method}: {len(f.lambdas)} factors but the model has {geometry.n_freqs} frequencies"
            )
        return f
    if method not in SEEDS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(SEEDS)} or a factors .json file")
    return seed(method, geometry, length)
