"""The run configuration: one TOML file, seven sections, defaults from the paper.

The sections' shape lives in schema.py (``[model]``, ``[data]``,
``[objective]`` and ``[finetune]`` are the objective's own specs, objectives/specs.py); this
module reads, checks and writes it.

Each field's comment says what it means and which values it takes; its
annotation says its type, choices (`Literal`) and bounds (`Annotated[int,
Ge(1)]`), which pydantic checks strictly, section by section (objectives/fields.py,
which the specs' own `validate` uses too). Unknown keys are
rejected naming the key and the section, wrong types with the expected type,
impossible values with the reason; all as `UserError` (one line, exit 2).
What the types cannot say (values that depend on each other) `validate`
checks after. `example.toml` next to this file is the annotated form; `dumps`
writes TOML with tomli-w.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from longrope.objectives.fields import read
from longrope.objectives.pruning import PRUNERS
from longrope.spaces import METHODS, MSCALE_POLICIES, UserError, read_text

from .proposers import SAMPLERS
from .schema import RunConfig, SearchConfig, SpaceConfig, WorkersConfig

__all__ = ["RunConfig", "SearchConfig", "SpaceConfig", "WorkersConfig", "defining_diff", "dumps",
           "from_dict", "load", "validate"]


# Keys that define the search: a resumed run refuses a change to any of them.
# Budget (iterations, max_evals, patience) and workers may change. search.storage is not
# among these: a run's trials live in its storage, and another one would start it over.
NOT_DEFINING = {
    "search.iterations", "search.max_evals", "search.patience", "search.min_improvement",
    "model.device", "model.dtype", "model.threads", "model.nll", "data.cache_dir",
}  # model.dtype: what it resolves to is checked per stage instead (search/stagecheck.py)

# Choices whose one source is a registry (the sampler and pruner names); the others are
# `Literal` types in the schema.
_CHOICES = {
    "search.sampler": SAMPLERS,
    "search.pruner": PRUNERS,
}

# What a key of two types takes, for its type error (every other key names its own type).
_EXPECT = {"space.critical_dim": '"off", "auto" or a pair index', "space.mscale": "a policy name or a number"}


def _section(name: str, cls: type, table: dict[str, Any]) -> Any:
    """One section's dataclass from its table, its types and bounds checked (objectives/fields.py)."""
    return read(name, cls, table, _EXPECT)


def _early_abort(on: Any) -> str:
    if not isinstance(on, bool):
        raise UserError(f"search.early_abort (now search.pruner) must be true or false, got {on!r}")
    return "exact" if on else "none"


# Keys renamed since a run's config.toml may have been frozen: (section, old) -> new, or
# (new, how the old value reads in the new key).
RENAMED = {("search", "seeds"): "methods",
           ("search", "early_abort"): ("pruner", _early_abort)}


# Defaults changed since a run's config.toml may have been frozen: a copy written before the key
# existed reads the value its run used, not today's default, so a resume does what the run did.
FROZEN_DEFAULTS = {("finetune", "short_mix"): 0.0,  # 0.5 since session 9 (the short_mix bench)
                   ("model", "nll"): "eager",  # auto (compiled on GPU) since session 19
                   ("search", "pruner_startup"): 3}  # 2 since session 15 (fixed at 3 before the key)


def frozen(data: dict[str, Any]) -> dict[str, Any]:
    """A run's stored config (Run.config()) as the run used it: renamed keys under their current
    names, and keys its version did not write at that version's default."""
    out = _current_names(data)
    for (section, key), value in FROZEN_DEFAULTS.items():
        table = out.setdefault(section, {})
        if isinstance(table, dict):
            out[section] = {key: value, **table}
    return out


def _current_names(data: dict[str, Any]) -> dict[str, Any]:
    """A parsed config with renamed keys under their current names, so older runs resume. A
    table with both names of one key is refused (which one to keep is not ours to guess)."""
    out = {}
    for section, table in data.items():
        if isinstance(table, dict):
            renamed = {}
            for old, value in table.items():
                key, renamed[key] = _renamed(section, old, value)
                if key != old and key in table:
                    raise UserError(f"[{section}] has both {old} (its old name) and {key}; keep {key}")
            table = renamed
        out[section] = table
    return out


def _renamed(section: str, key: str, value: Any) -> tuple[str, Any]:
    new = RENAMED.get((section, key), key)
    return (new[0], new[1](value)) if isinstance(new, tuple) else (new, value)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Typed, validated config from a parsed TOML table."""
    data = _current_names(data)
    cfg = RunConfig()
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    for name, table in data.items():
        if name not in sections:
            raise UserError(f"unknown section [{name}]; sections are {', '.join(sections)}")
        if not isinstance(table, dict):
            raise UserError(f"[{name}] must be a table")
        setattr(cfg, name, _section(name, type(getattr(cfg, name)), table))
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """What the types cannot say (choices from registries, values that depend on each other), each
    with its own message; `from_dict` has checked the types and bounds."""
    for where, allowed in _CHOICES.items():
        sec, key = where.split(".")
        v = getattr(getattr(cfg, sec), key)
        if v not in allowed:
            raise UserError(f"{where} = {v!r}; choose one of {', '.join(sorted(allowed))}")
    cfg.model.validate("model")
    cfg.data.validate("data")
    cfg.objective.validate("objective")
    cfg.finetune.validate("finetune", cfg.space.targets)
    sp, se = cfg.space, cfg.search
    if not sp.targets:
        raise UserError("space.targets is empty: a search needs a long target length (short factors "
                        "are exported beside a long set, which is what a model applies beyond L0)")
    if any(t <= 0 for t in sp.targets + sp.short):
        raise UserError("space.targets and space.short must be positive lengths")
    for key in ("targets", "short"):
        lengths = getattr(sp, key)
        if lengths != sorted(set(lengths)):
            raise UserError(f"space.{key} must be ascending without repeats, got {lengths}")
    for key, bound in (("lambda_max", sp.lambda_max), ("short_lambda_max", sp.short_lambda_max)):
        if bound and bound < 1:
            raise UserError(f"space.{key} = {bound} must be >= 1 (λ < 1 compresses positions)")
    if not sp.n_hat or any(n < 0 for n in sp.n_hat):
        raise UserError(f"space.n_hat must be non-empty, non-negative integers, got {sp.n_hat}")
    if min(sp.n_hat) >= sp.targets[0]:
        raise UserError(f"space.n_hat = {sp.n_hat}: none is below the target {sp.targets[0]}; the first n̂ "
                        "positions keep their original encoding, every candidate there is plain RoPE")
    if isinstance(sp.mscale, str) and sp.mscale not in (*MSCALE_POLICIES, "search"):
        raise UserError(f"space.mscale = {sp.mscale!r}; use {', '.join(MSCALE_POLICIES)}, search or a number")
    if not isinstance(sp.mscale, str) and sp.mscale <= 0:
        raise UserError(f"space.mscale = {sp.mscale} must be positive")
    if sp.mscale_min > sp.mscale_max:
        raise UserError(f"space.mscale_min = {sp.mscale_min} exceeds space.mscale_max = {sp.mscale_max}")
    if sp.mscale == "search" and sp.mscale_step > sp.mscale_max - sp.mscale_min:  # a span of 0 too
        raise UserError(f"space.mscale_step = {sp.mscale_step} exceeds the grid's span {sp.mscale_min} to "
                        f"{sp.mscale_max}: the searched mscale would have one value")
    if isinstance(sp.critical_dim, str) and sp.critical_dim not in ("off", "auto"):
        raise UserError(f'space.critical_dim = {sp.critical_dim!r}; use "off", "auto" or a pair index >= 0')
    if isinstance(sp.critical_dim, int) and sp.critical_dim < 0:
        raise UserError(f'space.critical_dim = {sp.critical_dim} must be >= 0 (a rotary pair index), '
                        '"auto" or "off"')
    if sp.below_critical == "search" and sp.critical_dim == "off":
        raise UserError('space.below_critical = "search" needs space.critical_dim ("auto" or a pair '
                        'index): without one every pair is searched already')
    if se.mutants + se.crossovers < 1:
        raise UserError("search.mutants and search.crossovers are both 0: no children")
    if se.parents > se.population:
        raise UserError(f"search.parents = {se.parents} exceeds search.population = {se.population}")
    for name in se.methods:
        if name not in METHODS and not name.endswith(".json"):
            raise UserError(f"search.methods: unknown method {name!r}; use {', '.join(METHODS)} "
                            "or a .json file")
    if se.storage:
        _check_storage_url(se.storage)
    g = cfg.workers.num_gpus
    if g > 1:  # a replica (or a fine-tune) loads its model whole onto its first GPU: no device_map
        raise UserError(f"workers.num_gpus = {g:g}: a replica runs on one GPU or a share of one (it "
                        "loads its model onto its first GPU, so more would sit idle); set it to 1 (for "
                        "a run, in its config.toml: [workers] may change in a run); a model too big "
                        "for one GPU is not supported yet")


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
    if p.is_dir():
        inside = " (a run directory: config.toml inside)" if (p / "config.toml").is_file() else ""
        raise UserError(f"config file {p} is a folder" + inside)
    if not p.exists():  # a pipe (<(...)) is read as a file
        raise UserError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(read_text(p, "config file").removeprefix("\ufeff"))  # a BOM some editors write
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p} is not valid TOML: {e}") from None
    try:
        return anchor_paths(from_dict(data))
    except UserError as e:
        raise UserError(f"{p}: {e}") from None


def anchor_paths(cfg: RunConfig, base: Path | None = None) -> RunConfig:
    """`cfg` with its relative local paths made absolute against `base` (default: the working
    directory), in place. A config file is read in one directory, but its frozen copy is read by
    resume, status, report and the workers in others, where a relative path names another folder
    of the same name, or a new empty sqlite file (a resume that silently starts over). Names that
    are not local (builtin:..., a hub dataset id, a method) stay as they are."""
    base = Path.cwd() if base is None else Path(base)

    def local(path: str, must_exist: bool = True) -> str:
        if not path or path.startswith(("builtin:", "synthetic")):  # "synthetic[:noise]": the test objective
            return path
        p = Path(path).expanduser()
        p = p if p.is_absolute() else base / p
        return str(p) if p.exists() or not must_exist else path

    cfg.model.path, cfg.model.tokenizer = local(cfg.model.path), local(cfg.model.tokenizer)
    cfg.data.path = local(cfg.data.path)  # one that does not exist here is a hub dataset id
    cfg.data.cache_dir = local(cfg.data.cache_dir, must_exist=False)  # made on first use
    cfg.search.methods = [local(m) if m.endswith(".json") else m for m in cfg.search.methods]
    cfg.search.storage = _anchor_sqlite(cfg.search.storage, base)
    return cfg


def _anchor_sqlite(url: str, base: Path) -> str:
    """A sqlite URL's relative file (sqlite:///x.db) made absolute; any other URL as it is."""
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite"):
        return url
    u = make_url(url)
    db = u.database
    if not db or db == ":memory:" or db.startswith("file:") or Path(db).expanduser().is_absolute():
        return url
    return u.set(database=str(base / db)).render_as_string(hide_password=False)


def dumps(cfg: RunConfig) -> str:
    """TOML text of a resolved config (every key written, so the frozen copy is complete)."""
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())


def defining_diff(old: dict[str, Any], new: dict[str, Any], every: bool = False) -> list[str]:
    """Search-defining keys whose values differ, as 'section.key: old -> new' (`every`: all keys,
    the budget and the workers too)."""
    old = frozen(old)
    defaults = RunConfig().to_dict()  # other keys added since the run was frozen: their default
    old = {sec: {**defaults[sec], **(old.get(sec) or {})} for sec in defaults}
    out = []
    for section in new:
        for key, value in new[section].items():
            where = f"{section}.{key}"
            if not every and (section == "workers" or where in NOT_DEFINING):
                continue
            before = old.get(section, {}).get(key)
            if before != value:
                out.append(f"{where}: {before!r} -> {value!r}")
    return out
