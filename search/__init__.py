"""How candidates are proposed: evolutionary operators, the LongRoPE Optuna
sampler, the ask/dispatch/tell driver with its backends, stages, and the CLI.

The Python entry point (what `longrope search` / `apply` do, from code)::

    from longrope.search import RescaleFactors, apply_factors, load_config, run_search

    run_search(load_config("run.toml"), "runs/x")          # search, or resume=True
    rot = apply_factors(model, RescaleFactors.load("runs/x/export/longrope-32768.json"))

Names load on first use, so ``import longrope.search`` stays light (no torch, no Ray).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> module that defines it (relative to longrope)
_LAZY = {
    "run_search": "search.driver",
    "load_config": "search.config",
    "RunConfig": "search.schema",
    "apply_factors": "objectives.rotary",
    "RescaleFactors": "spaces",
    "UserError": "spaces",
}
_RENAMED = {"load_config": "load"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'longrope.search' has no attribute {name!r}")
    return getattr(import_module(f"longrope.{_LAZY[name]}"), _RENAMED.get(name, name))
