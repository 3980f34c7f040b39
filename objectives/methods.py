"""Methods as factors: a closed-form method named in spaces.METHODS, a factors JSON file,
or ``native`` (the model exactly as its own config defines it, transformers' rotary untouched).

A factors file in the HF form (a config.json, an export, Phi-3's three-key
``rope_scaling``) is applied as the deployed model applies it: the short set
for sequences up to L0, the long set beyond, with the attention factor
transformers derives when the file gives none (spaces.hf_attention_factor).
"""

from __future__ import annotations

from pathlib import Path

from longrope.spaces import (
    METHODS,
    DeployedFactors,
    RescaleFactors,
    RopeGeometry,
    UserError,
    check_usable,
    load_factors,
    method,
)

NATIVE = "native"  # scores the unpatched model: its own rotary, its own rope_scaling


def is_file_method(name: str) -> bool:
    return name.endswith(".json") or Path(name).is_file()


def known_methods() -> str:
    return f"{', '.join(METHODS)}, {NATIVE}, or a factors .json file"


def check_method(name: str) -> None:
    """Fail before any model loads: an unknown name, or a bad factors file."""
    if is_file_method(name):
        load_factors_file(name)
    elif name not in METHODS and name != NATIVE:
        raise UserError(f"unknown method {name!r}; use one of {known_methods()}")


def load_factors_file(name: str) -> RescaleFactors | DeployedFactors:
    loaded = load_factors(name)
    check_usable(loaded, name)  # the check `apply` makes too
    return loaded


def method_factors(name: str, geometry: RopeGeometry, length: int) -> RescaleFactors | None:
    """The factors `name` scores `length` tokens with; None for ``native``."""
    if name == NATIVE:
        return None
    if is_file_method(name):
        loaded = load_factors_file(name)
        f = loaded.at(length) if isinstance(loaded, DeployedFactors) else loaded
        if len(f.lambdas) != geometry.n_freqs:
            raise UserError(f"{name}: {len(f.lambdas)} factors but the model has {geometry.n_freqs} "
                            "frequencies")
        return f
    check_method(name)
    return method(name, geometry, length)
