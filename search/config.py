"""The run configuration: one TOML file, seven sections, defaults from the paper.

The sections' shape lives in schema.py (``[model]``, ``[data]``,
``[objective]`` and ``[finetune]`` are the objective's own specs, objectives/specs.py); this
module reads, checks and writes it.

Each field's comment says what it means and which values it takes. Unknown
keys are rejected naming the key and the section, wrong types with the
expected type, impossible values with the reason; all as `UserError` (one
line, exit 2). `example.toml` next to this file is the annotated form.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

from longrope.objectives.pruning import PRUNERS
from longrope.spaces import METHODS, MSCALE_POLICIES, UserError, read_text

from .proposers import SAMPLERS
from .schema import RunConfig, SearchConfig, SpaceConfig, WorkersConfig

__all__ = ["RunConfig", "SearchConfig", "SpaceConfig", "WorkersConfig", "defining_diff", "dumps",
           "from_dict", "load", "validate"]


# Keys that define the search: a resumed run refuses a change to any of them.
# Budget (iterations, max_evals, patience) and workers may change.
NOT_DEFINING = {
    "search.iterations", "search.max_evals", "search.patience", "search.min_improvement",
    "model.device", "model.threads", "data.cache_dir", "search.storage",
}

_CHOICES = {
    "search.sampler": set(SAMPLERS),
    "search.pruner": set(PRUNERS),
    "workers.backend": {"inprocess", "ray"},
}


def _check_type(where: str, value: Any, default: Any, hint: str) -> Any:
    if hint == "str | int":  # critical_dim: a word or a pair index
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise UserError(f'{where} must be "off", "auto" or a pair index, got {value!r}')
        return value
    if "float" in hint and "str" in hint:  # mscale: a policy name or a number
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise UserError(f"{where} must be a policy name or a number, got {value!r}")
        if not isinstance(value, str) and not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # TOML admits nan and inf; no key means them
            raise UserError(f"{where} must be a finite number, got {value!r}")
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        inner = int if "int" in hint else str
        ok = isinstance(value, list) and all(
            isinstance(v, inner) and not isinstance(v, bool) for v in value
        )
    else:
        ok = True
    if not ok:
        expect = type(default).__name__
        if isinstance(default, list):
            expect = f"list of {'int' if 'int' in hint else 'str'}"
        raise UserError(f"{where} must be {expect}, got {value!r}")
    return value


# Keys renamed since a run's config.toml may have been frozen: (section, old) -> new, or
# (new, how the old value reads in the new key).
RENAMED = {("search", "seeds"): "methods",
           ("search", "early_abort"): ("pruner", lambda on: "exact" if on else "none")}


def _current_names(data: dict[str, Any]) -> dict[str, Any]:
    """A parsed config with renamed keys under their current names, so older runs resume."""
    out = {}
    for section, table in data.items():
        if isinstance(table, dict):
            table = dict(_renamed(section, k, v) for k, v in table.items())
        out[section] = table
    return out


def _renamed(section: str, key: str, value: Any) -> tuple[str, Any]:
    new = RENAMED.get((section, key), key)
    return (new[0], new[1](value)) if isinstance(new, tuple) else (new, value)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Typed, validated config from a parsed TOML table."""
    data = _current_names(data)
    cfg = RunConfig()
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name, table in data.items():
        if name not in sections:
            raise UserError(f"unknown section [{name}]; sections are {', '.join(sections)}")
        if not isinstance(table, dict):
            raise UserError(f"[{name}] must be a table")
        section = getattr(cfg, name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        for key, value in table.items():
            if key not in fields:
                raise UserError(f"unknown key '{key}' in [{name}]; known: {', '.join(fields)}")
            where = f"{name}.{key}"
            hint = str(fields[key].type)
            setattr(section, key, _check_type(where, value, getattr(section, key), hint))
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Impossible values, each with its own message."""
    for where, allowed in _CHOICES.items():
        sec, key = where.split(".")
        v = getattr(getattr(cfg, sec), key)
        if v not in allowed:
            raise UserError(f"{where} = {v!r}; choose one of {', '.join(sorted(allowed))}")
    cfg.model.validate("model")
    cfg.data.validate("data")
    cfg.objective.validate("objective")
    cfg.finetune.validate("finetune", cfg.space.targets)
    sp, se, wk = cfg.space, cfg.search, cfg.workers
    if not sp.targets and not sp.short:
        raise UserError("space.targets and space.short are both empty: nothing to search")
    if any(t <= 0 for t in sp.targets + sp.short):
        raise UserError("space.targets and space.short must be positive lengths")
    for key in ("targets", "short"):
        lengths = getattr(sp, key)
        if lengths != sorted(set(lengths)):
            raise UserError(f"space.{key} must be ascending without repeats, got {lengths}")
    if sp.lambda_max_ratio < 1:
        raise UserError(f"space.lambda_max_ratio = {sp.lambda_max_ratio} must be >= 1")
    if sp.lambda_max and sp.lambda_max < 1:
        raise UserError(f"space.lambda_max = {sp.lambda_max} must be >= 1 (λ < 1 compresses positions)")
    if not 0 < sp.step <= 1:
        raise UserError(f"space.step = {sp.step} must be in (0, 1]")
    if not sp.n_hat or any(n < 0 for n in sp.n_hat):
        raise UserError(f"space.n_hat must be non-empty, non-negative integers, got {sp.n_hat}")
    if isinstance(sp.mscale, str) and sp.mscale not in (*MSCALE_POLICIES, "search"):
        raise UserError(f"space.mscale = {sp.mscale!r}; use {', '.join(MSCALE_POLICIES)}, search or a number")
    if not isinstance(sp.mscale, str) and sp.mscale <= 0:
        raise UserError(f"space.mscale = {sp.mscale} must be positive")
    if sp.mscale_min <= 0:
        raise UserError(f"space.mscale_min = {sp.mscale_min} must be positive")
    if sp.mscale_min > sp.mscale_max:
        raise UserError(f"space.mscale_min = {sp.mscale_min} exceeds space.mscale_max = {sp.mscale_max}")
    if sp.mscale_step <= 0:
        raise UserError(f"space.mscale_step = {sp.mscale_step} must be positive")
    if isinstance(sp.critical_dim, str) and sp.critical_dim not in ("off", "auto"):
        raise UserError(f'space.critical_dim = {sp.critical_dim!r}; use "off", "auto" or a pair index >= 0')
    if isinstance(sp.critical_dim, int) and sp.critical_dim < 0:
        raise UserError(f'space.critical_dim = {sp.critical_dim} must be >= 0 (a rotary pair index), '
                        '"auto" or "off"')
    for key in ("population", "parents", "iterations"):
        if getattr(se, key) < (1 if key != "iterations" else 0):
            raise UserError(f"search.{key} = {getattr(se, key)} must be positive")
    if se.mutants < 0 or se.crossovers < 0 or se.mutants + se.crossovers < 1:
        raise UserError("search.mutants and search.crossovers must be >= 0 with at least one child")
    if se.parents > se.population:
        raise UserError(f"search.parents = {se.parents} exceeds search.population = {se.population}")
    if se.max_evals < 0:
        raise UserError(f"search.max_evals = {se.max_evals} must be >= 0 (0 = the full budget)")
    for key in ("mutation_prob", "crossover_prob"):
        if not 0 <= getattr(se, key) <= 1:
            raise UserError(f"search.{key} = {getattr(se, key)} must be in [0, 1]")
    for name in se.methods:
        if name not in METHODS and not name.endswith(".json"):
            raise UserError(f"search.methods: unknown method {name!r}; use {', '.join(METHODS)} "
                            "or a .json file")
    if se.sigma <= 0:
        raise UserError(f"search.sigma = {se.sigma} must be positive")
    if se.patience < 0:
        raise UserError(f"search.patience = {se.patience} must be >= 0")
    if se.min_improvement < 0:
        raise UserError(f"search.min_improvement = {se.min_improvement} must be >= 0")
    if not 0 < se.pruner_p < 1:
        raise UserError(f"search.pruner_p = {se.pruner_p} must be in (0, 1)")
    if se.storage:
        _check_storage_url(se.storage)
    if wk.count < 1:
        raise UserError(f"workers.count = {wk.count} must be >= 1")
    if wk.num_gpus < 0 or wk.num_cpus < 0:
        raise UserError("workers.num_gpus and workers.num_cpus must be >= 0")
    if wk.batch_docs < 1:
        raise UserError(f"workers.batch_docs = {wk.batch_docs} must be >= 1 (documents per forward)")


def _check_storage_url(url: str) -> None:
    """An RDB URL whose database driver SQLAlchemy knows, checked without connecting."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise UserError(f"search.storage = {url!r} is not a database URL this machine can open "
                        f"({type(e).__name__}: {str(e).splitlines()[0]}); leave it empty for the journal "
                        "or use e.g. sqlite:///runs.db") from None
    except ImportError as e:  # a known dialect whose driver is not installed
        raise UserError(f"search.storage = {url!r} needs a database driver that is not installed: "
                        f"{e}") from None


def load(path: str | Path) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(read_text(p, "config file"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p} is not valid TOML: {e}") from None
    try:
        return from_dict(data)
    except UserError as e:
        raise UserError(f"{p}: {e}") from None


def dumps(cfg: RunConfig) -> str:
    """TOML text of a resolved config (every key written, so the frozen copy is complete)."""
    lines = []
    for section, table in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def defining_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Search-defining keys whose values differ, as 'section.key: old -> new'."""
    old = _current_names(old)
    defaults = RunConfig().to_dict()  # a key added since the run was frozen reads as its default
    old = {sec: {**defaults[sec], **(old.get(sec) or {})} for sec in defaults}
    out = []
    for section in new:
        for key, value in new[section].items():
            where = f"{section}.{key}"
            if section == "workers" or where in NOT_DEFINING:
                continue
            before = old.get(section, {}).get(key)
            if before != value:
                out.append(f"{where}: {before!r} -> {value!r}")
    return out
