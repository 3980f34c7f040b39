"""Methods as factors: a closed-form method named in spaces.METHODS, a factors JSON file,
or ``native`` (the model exactly as its own config defines it, transformers' rotary untouched);
and one method that is not factors: ``lm_infinite[:global=G,local=W]`` (objectives.lm_infinite),
the model as trained with LM-Infinite's Λ-shaped attention, an eval-only method.

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
    check_trained_length,
    check_usable,
    load_factors,
    method,
)

from .lm_infinite import LMInfinite, is_lm_infinite, parse, resolve

NATIVE = "native"  # scores the unpatched model: its own rotary, its own rope_scaling


def is_file_method(name: str) -> bool:
    return name.endswith(".json") or Path(name).is_file()


def known_methods() -> str:
    return f"{', '.join(METHODS)}, {NATIVE}, lm_infinite[:global=G,local=W], or a factors .json file"


def split_methods(text: str) -> list[str]:
    """A comma-separated method list, where a ``key=value`` item continues the parameterised
    method before it: "none,lm_infinite:global=4,local=128,yarn" is three methods."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        head = part.partition("=")[0]
        if out and ":" in out[-1] and "=" in part and head.isidentifier():
            out[-1] += "," + part
        else:
            out.append(part)
    return list(dict.fromkeys(out))  # a method named twice is scored once (its column is one)


def check_method(name: str) -> None:
    """Fail before any model loads: an unknown name, a bad parameter, or a bad factors file."""
    if is_lm_infinite(name):
        parse(name)
    elif is_file_method(name):
        load_factors_file(name)
    elif name not in METHODS and name != NATIVE:
        raise UserError(f"unknown method {name!r}; use one of {known_methods()}")


def load_factors_file(name: str) -> RescaleFactors | DeployedFactors:
    loaded = load_factors(name)
    check_usable(loaded, name)  # the check `apply` makes too
    return loaded


def deployed_n_hat(name: str) -> int | None:
    """The largest n̂ > 0 of an export file's factors (None: not a file, or n̂ = 0): what eval
    applies and a deployed model does not."""
    if not is_file_method(name):
        return None
    loaded = load_factors_file(name)
    sets = [loaded.long, loaded.short] if isinstance(loaded, DeployedFactors) else [loaded]
    return max((f.n_hat for f in sets if f is not None and f.n_hat), default=None)


def method_factors(name: str, geometry: RopeGeometry, length: int) -> RescaleFactors | LMInfinite | None:
    """The factors `name` scores `length` tokens with; None for ``native``; an LMInfinite
    setting (λ = 1 underneath) for ``lm_infinite``, which `Evaluator.evaluate` takes too."""
    if name == NATIVE:
        return None
    if is_lm_infinite(name):
        return resolve(name, geometry)
    if is_file_method(name):
        loaded = load_factors_file(name)
        f = loaded.at(length) if isinstance(loaded, DeployedFactors) else loaded
        if len(f.lambdas) != geometry.n_freqs:
            raise UserError(f"{name}: {len(f.lambdas)} factors but the model has {geometry.n_freqs} "
                            "frequencies")
        if isinstance(loaded, DeployedFactors):  # same count, another model (apply refuses it too)
            check_trained_length(loaded, geometry.original_length, geometry.base, name)
        return f
    check_method(name)
    return method(name, geometry, length)
