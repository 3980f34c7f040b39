"""Methods as factors: a closed-form method named in spaces.METHODS, or any factors JSON file."""

from __future__ import annotations

from pathlib import Path

from longrope.spaces import METHODS, RescaleFactors, RopeGeometry, UserError, method


def is_file_method(name: str) -> bool:
    return name.endswith(".json") or Path(name).is_file()


def check_method(name: str) -> None:
    """Fail before any model loads: an unknown name, or a bad factors file."""
    if is_file_method(name):
        load_factors_file(name)
    elif name not in METHODS:
        raise UserError(f"unknown method {name!r}; use one of {', '.join(METHODS)} or a factors .json file")


def load_factors_file(name: str) -> RescaleFactors:
    f = RescaleFactors.load(name)
    for i in range(1, len(f.lambdas)):
        if f.lambdas[i] < f.lambdas[i - 1]:
            raise UserError(f"{name}: λ[{i}] = {f.lambdas[i]} is below λ[{i - 1}] = {f.lambdas[i - 1]}; "
                            "rescale factors must not decrease from high to low frequency")
    return f


def method_factors(name: str, geometry: RopeGeometry, length: int) -> RescaleFactors:
    """`none`, `pi`, `ntk`, `yarn`, `dynamic_ntk`, `llama3`, or a path to a .json."""
    if is_file_method(name):
        f = load_factors_file(name)
        if len(f.lambdas) != geometry.n_freqs:
            raise UserError(f"{name}: {len(f.lambdas)} factors but the model has {geometry.n_freqs} "
                            "frequencies")
        return f
    check_method(name)
    return method(name, geometry, length)
