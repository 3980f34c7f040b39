"""A spec's fields checked against their annotations, with one-line messages.

A field's annotation carries its type, its choices (`Literal`) and its bounds
(`Annotated[int, Ge(1)]`). pydantic checks them, strictly, in one place: the run
config's reader (search/config.py) reads each TOML section through `read`, and a
spec built in code (the bench, `longrope eval`, tests) is checked through `check`
by its own `validate`, so the two can never disagree and no bound is written twice.
Errors become `UserError`s naming ``section.key`` and the value.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from longrope.spaces import UserError

# Strict: no str -> int, no bool as an int (an int may stand for a float); TOML admits nan and
# inf, but no key means them.
STRICT = {"extra": "forbid", "strict": True, "allow_inf_nan": False}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


@cache
def adapter(cls: type) -> Any:
    """A strict pydantic validator of one section's table: the dataclass's annotated fields as a
    TypedDict (pydantic's strict dataclass schema takes only instances, not tables)."""
    from pydantic import TypeAdapter
    from typing_extensions import TypedDict

    table = TypedDict(cls.__name__, get_type_hints(cls, include_extras=True), total=False)
    table.__pydantic_config__ = STRICT
    return TypeAdapter(table)


def read(section: str, cls: type, table: dict[str, Any], expect: dict[str, str] | None = None) -> Any:
    """The dataclass `cls` from a TOML table, its types, choices and bounds checked. `expect`:
    what a key of several types takes ('section.key' -> words), for its type error."""
    from pydantic import ValidationError

    try:
        return cls(**adapter(cls).validate_python(table))
    except ValidationError as e:
        errors = e.errors()
        key = errors[0]["loc"][0]
        mine = [x for x in errors if x["loc"][0] == key]
        raise UserError(one_line(section, cls, table, key, mine, expect or {})) from None


def check(spec: Any, where: str) -> None:
    """A dataclass instance built in code, checked as `read` checks its table."""
    read(where, type(spec), {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


def one_line(section: str, cls: type, table: dict[str, Any], key: str, errors: list[Any],
             expect: dict[str, str]) -> str:
    """A pydantic error (all of one key's: a union gives one per member) as one line naming the key."""
    where, value, kinds = f"{section}.{key}", table.get(key), {x["type"] for x in errors}
    if "extra_forbidden" in kinds:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        return f"unknown key '{key}' in [{section}]; known: {known}"
    if "finite_number" in kinds:
        return f"{where} must be a finite number, got {value!r}"
    hint = get_type_hints(cls, include_extras=True)[key]
    if "literal_error" in kinds:
        return f"{where} = {value!r}; choose one of {', '.join(get_args(hint))}"
    if kinds & _BOUND_ERRORS:
        shown = float(value) if get_args(hint)[0] is float else value  # as the config holds it
        return f"{where} = {shown!r} must be {bounds(hint)}"
    return f"{where} must be {expect.get(where) or type_name(hint)}, got {value!r}"


def bounds(hint: Any) -> str:
    """The range an ``Annotated[number, Ge/Gt/Interval]`` allows, as a message says it."""
    b = {k: getattr(m, k) for m in hint.__metadata__ for k in ("gt", "ge", "lt", "le")
         if getattr(m, k, None) is not None}
    lo, hi = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    if hi is None:
        return "positive" if b.get("gt") == 0 else f"{'>=' if 'ge' in b else '>'} {lo}"
    if lo is None:
        return f"{'<=' if 'le' in b else '<'} {hi}"
    return f"in {'[' if 'ge' in b else '('}{lo}, {hi}{']' if 'le' in b else ')'}"


def type_name(hint: Any) -> str:
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) is list:
        return f"list of {type_name(get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))
