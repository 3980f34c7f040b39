"""Rescale factors: the value the search proposes and the export writes.

A candidate is λ (one stretch per rotary frequency, index 0 = highest
frequency), n̂ (leading positions that keep the original encoding) and mscale
(the attention scaling multiplied into cos/sin for positions >= n̂). The
rescaled inverse frequency is θ_i / λ_i (LongRoPE eq. 4: f'(x)_i uses
x / (λ_i β^i)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError, need_file, read_text
from .geometry import RopeGeometry

N_HAT_MAX = 2**31 - 1  # n̂ is compared with int64 position ids: a larger one overflowed in the rotary


@dataclass(frozen=True)
class RescaleFactors:
    """A frozen, hashable candidate. Equality is exact (the search dedups on it)."""

    lambdas: tuple[float, ...]
    n_hat: int = 0
    mscale: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        lambdas = tuple(float(x) for x in self.lambdas)
        object.__setattr__(self, "lambdas", lambdas)
        if not lambdas:
            raise UserError("rescale factors need at least one λ")
        for i, x in enumerate(lambdas):
            if not math.isfinite(x) or x <= 0:
                raise UserError(f"λ[{i}] = {x} is not a positive finite number")
        if int(self.n_hat) != self.n_hat or not 0 <= self.n_hat <= N_HAT_MAX:
            raise UserError(f"n_hat must be an integer from 0 to {N_HAT_MAX}, got {self.n_hat}")
        object.__setattr__(self, "n_hat", int(self.n_hat))
        if not (math.isfinite(self.mscale) and self.mscale > 0):
            raise UserError(f"mscale must be a positive finite number, got {self.mscale}")
        object.__setattr__(self, "mscale", float(self.mscale))

    @classmethod
    def uniform(cls, value: float, n: int, n_hat: int = 0, mscale: float = 1.0) -> RescaleFactors:
        return cls(lambdas=(float(value),) * n, n_hat=n_hat, mscale=mscale)

    def inv_freq(self, geometry: RopeGeometry) -> np.ndarray:
        """The candidate's inverse frequencies θ_i / λ_i (float64)."""
        if len(self.lambdas) != geometry.n_freqs:
            raise UserError(
                f"factors have {len(self.lambdas)} values but the model has "
                f"{geometry.n_freqs} rotary frequencies (rotary dim {geometry.rotary_dim})"
            )
        return geometry.inv_freq() / np.asarray(self.lambdas, dtype=np.float64)

    def replace(self, **kw: Any) -> RescaleFactors:
        d = {"lambdas": self.lambdas, "n_hat": self.n_hat, "mscale": self.mscale, "meta": self.meta}
        d.update(kw)
        return RescaleFactors(**d)

    # JSON: floats are written with repr precision, so the round trip is exact.
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lambdas": list(self.lambdas), "n_hat": self.n_hat, "mscale": self.mscale}
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RescaleFactors:
        """Our own form, or an HF config / export: its long factors, with the attention
        factor transformers would use (see `DeployedFactors` for the short ones)."""
        if not isinstance(d, dict):
            raise UserError("factors JSON must be an object")
        if "lambdas" in d:
            return cls(_numbers(d["lambdas"], "lambdas"), n_hat=_n_hat(d.get("n_hat", 0), "n_hat"),
                       mscale=_number(d.get("mscale", 1.0), "mscale"), meta=d.get("meta", {}))
        if any(k in d for k in ("rope_scaling", "rope_parameters", "long_factor")):
            return DeployedFactors.from_hf(d).long
        raise UserError("factors JSON needs 'lambdas' (or an HF 'rope_scaling' with 'long_factor')")

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> RescaleFactors:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise UserError(f"factors JSON is malformed: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> RescaleFactors:
        p = need_file(path, "factors file")
        try:
            return cls.from_json(read_text(p, "factors file"))
        except UserError as e:
            raise UserError(f"{p}: {e}") from None


def _number(x: Any, key: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise UserError(f"factors JSON: {key} must be a finite number, got {x!r}")
    return float(x)


def _numbers(xs: Any, key: str) -> tuple[float, ...]:
    if not isinstance(xs, list) or not xs:
        raise UserError(f"factors JSON: {key} must be a non-empty list of numbers")
    return tuple(_number(x, f"{key}[{i}]") for i, x in enumerate(xs))


def _n_hat(x: Any, key: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= N_HAT_MAX:
        raise UserError(f"factors JSON: {key} must be an integer from 0 to {N_HAT_MAX}, got {x!r}")
    return x


def original_length(rope: dict[str, Any], config: dict[str, Any]) -> int | None:
    """L0 as transformers' longrope reads it (4.57 and 5.x): the config's top-level
    ``original_max_position_embeddings``, else the rope dict's, else ``max_position_embeddings``
    (short factors up to it); None for a bare rope dict that names no length."""
    L0 = (config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
          or config.get("max_position_embeddings"))
    if not L0:
        return None
    L0 = _number(L0, "original_max_position_embeddings")
    if L0 != int(L0) or L0 < 2:  # ln L0 divides in mscale_su; 0.5 read as 0 turned the checks off
        raise UserError(f"original_max_position_embeddings must be an integer >= 2, got {L0:g}")
    return int(L0)


def hf_attention_factor(rope: dict[str, Any], config: dict[str, Any]) -> float:
    """The attention factor transformers' longrope applies (modeling_rope_utils, 4.57 and 5.x):
    the config's ``attention_factor`` when given, else sqrt(1 + ln s / ln L0) with
    s = ``factor``, or max_position_embeddings / original_max_position_embeddings when there
    is no ``factor`` (Phi-3's configs have none: 131072 / 4096 gives Phi-3.5's 1.19), and 1
    when s <= 1. The one place eval, apply and factors files derive it. (Where ``factor``
    disagrees with max_position_embeddings / L0, 4.57 takes the ratio and 5.x the factor, as
    here; the exports write the two consistent.)"""
    if rope.get("attention_factor") is not None:
        a = _number(rope["attention_factor"], "attention_factor")
        if a <= 0:
            raise UserError(f"factors JSON: attention_factor = {a} must be positive")
        return a
    L0 = original_length(rope, config)
    if not L0:
        return 1.0
    s = rope.get("factor")
    if s is None:
        L = config.get("max_position_embeddings")
        s = L / L0 if L else 1.0
    return mscale_su(_number(s, "factor"), int(L0))


@dataclass(frozen=True)
class DeployedFactors:
    """Factors as a deployed transformers model applies them: the short set for sequences
    up to L0 (``original_max_position_embeddings``), the long set beyond, both with the
    same attention factor. `at(length)` is what a model scoring `length` tokens uses."""

    long: RescaleFactors
    short: RescaleFactors | None = None
    original_length: int | None = None
    base: float | None = None  # the RoPE θ they were searched with; None where the file does not say

    def at(self, length: int) -> RescaleFactors:
        if self.short is not None and self.original_length and length <= self.original_length:
            return self.short
        return self.long

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> DeployedFactors:
        """From a config.json, an export (config patch) or a bare rope_scaling dict."""
        # or, not get's default: a config may hold "rope_scaling": null beside rope_parameters
        rope = d.get("rope_scaling") or d.get("rope_parameters") or (d if "long_factor" in d else None)
        if not isinstance(rope, dict):
            raise UserError(f"rope_scaling must be an object, got {type(rope).__name__}")
        if "long_factor" not in rope:
            raise UserError("rope_scaling has no long_factor (not LongRoPE factors); "
                            f"its keys: {', '.join(rope) or 'none'}")
        extra = d.get("longrope_search") or {}
        if not isinstance(extra, dict):
            raise UserError(f"longrope_search must be an object, got {type(extra).__name__}")
        top = d.get("max_position_embeddings")  # apply writes it into the model's config
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise UserError(f"max_position_embeddings must be a positive integer, got {top!r}")
        mscale = hf_attention_factor(rope, d)
        long = RescaleFactors(_numbers(rope["long_factor"], "long_factor"),
                              n_hat=_n_hat(extra.get("n_hat", 0), "n_hat"), mscale=mscale)
        short = None
        if rope.get("short_factor") is not None:
            short = RescaleFactors(_numbers(rope["short_factor"], "short_factor"),
                                   n_hat=_n_hat(extra.get("short_n_hat", 0), "short_n_hat"), mscale=mscale)
            if len(short.lambdas) != len(long.lambdas):
                raise UserError(f"short_factor has {len(short.lambdas)} values, long_factor "
                                f"{len(long.lambdas)}")
        base = d.get("rope_theta", rope.get("rope_theta"))  # an export's (a config.json's: 4.57's, 5.x's)
        base = float(base) if isinstance(base, (int, float)) and math.isfinite(base) and base > 0 else None
        L0 = original_length(rope, d)
        if top is not None and L0 and top < L0:
            raise UserError(f"max_position_embeddings = {top} is below the original length {L0}: the "
                            "factors stretch a window that is longer, not shorter")
        return cls(long, short, L0, base)


def check_trained_length(f: DeployedFactors, original_length: int | None, base: float | None, name: str,
                         model: str = "this model") -> None:
    """Factors stretch positions relative to the L0 they were searched at, and the frequencies of
    one θ: a file made for a model of another trained length (the same count of factors:
    tiny-sotu's and SmolLM2's) or θ is refused by eval, apply and the GGUF copy alike. A file or a
    model that does not say (no L0; an export written before exports carried θ) is taken as it is."""
    if f.original_length and original_length and f.original_length != original_length:
        raise UserError(f"{name} holds factors for a model trained at {f.original_length} tokens, but "
                        f"{model} was trained at {original_length}: search it for its own")
    if f.base and base and not math.isclose(f.base, base, rel_tol=1e-6):
        raise UserError(f"{name} holds factors searched with RoPE θ = {f.base:g}, but {model} has "
                        f"θ = {base:g}: they stretch other frequencies; search it for its own")


def check_usable(f: RescaleFactors | DeployedFactors, name: str) -> None:
    """What eval and apply both require of factors they did not search: every set
    non-decreasing from high to low frequency, and no λ below 1 (that compresses positions)."""
    sets = [f] if isinstance(f, RescaleFactors) else [x for x in (f.long, f.short) if x is not None]
    for s in sets:
        for i, x in enumerate(s.lambdas):
            if x < 1:
                raise UserError(f"{name}: λ[{i}] = {x} is below 1; rescale factors stretch positions, "
                                "never compress them")
            if i and x < s.lambdas[i - 1]:
                raise UserError(f"{name}: λ[{i}] = {x} is below λ[{i - 1}] = {s.lambdas[i - 1]}; "
                                "rescale factors must not decrease from high to low frequency")


def refuse_csv(p: Path) -> None:
    """`export --format csv` writes a table to read; what eval and apply take is the JSON."""
    if p.suffix.lower() == ".csv":
        raise UserError(f"{p} is a CSV export, a table to read; eval and apply take the .json export "
                        "(longrope export RUN)")


def load_factors(path: str | Path) -> RescaleFactors | DeployedFactors:
    """A factors file as the model it describes would apply it: our own form (one set at every
    length), or an HF config / export (short up to L0, long beyond)."""
    p = need_file(path, "factors file")
    refuse_csv(p)
    try:
        d = json.loads(read_text(p, "factors file"))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: factors JSON is malformed: {e}") from None
    try:
        if isinstance(d, dict) and "lambdas" not in d and any(
                k in d for k in ("rope_scaling", "rope_parameters", "long_factor")):
            return DeployedFactors.from_hf(d)
        return RescaleFactors.from_dict(d)
    except UserError as e:
        raise UserError(f"{p}: {e}") from None


# Attention-scaling policies: mscale as a function of s and L0.
def mscale_su(s: float, original_length: int) -> float:
    """sqrt(1 + ln s / ln L0): LongRoPE / Phi-3 ("su"), HF longrope default; 1 for s <= 1."""
    return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(original_length))


def mscale_yarn(s: float, original_length: int) -> float:
    """0.1 ln s + 1 (YaRN eq. 22, HF get_mscale); 1 for s <= 1."""
    return 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0


MSCALE_POLICIES = {"su": mscale_su, "yarn": mscale_yarn, "none": lambda s, L0: 1.0}


def resolve_mscale(policy: str | float, s: float, original_length: int) -> float:
    """A policy name or a fixed positive float."""
    if isinstance(policy, int | float) and not isinstance(policy, bool):
        if not (math.isfinite(policy) and policy > 0):
            raise UserError(f"mscale must be a positive number or one of {sorted(MSCALE_POLICIES)}")
        return float(policy)
    if policy not in MSCALE_POLICIES:
        raise UserError(f"unknown mscale policy {policy!r}; use one of {sorted(MSCALE_POLICIES)} or a float")
    return MSCALE_POLICIES[policy](s, original_length)
