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

from .errors import UserError, read_text
from .geometry import RopeGeometry


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
        if int(self.n_hat) != self.n_hat or self.n_hat < 0:
            raise UserError(f"n_hat must be a non-negative integer, got {self.n_hat}")
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
        """Our own form, or an exported HF config (long_factor + attention_factor)."""
        if not isinstance(d, dict):
            raise UserError("factors JSON must be an object")
        if "lambdas" in d:
            lam, n_hat, mscale = d["lambdas"], d.get("n_hat", 0), d.get("mscale", 1.0)
        elif "rope_scaling" in d or "long_factor" in d:
            rope = d.get("rope_scaling", d)
            extra = d.get("longrope_search", {})
            lam = rope.get("long_factor")
            n_hat = extra.get("n_hat", 0)
            mscale = rope.get("attention_factor") or 1.0
        else:
            raise UserError("factors JSON needs 'lambdas' (or an exported 'rope_scaling.long_factor')")
        if not isinstance(lam, list) or not all(isinstance(x, int | float) for x in lam):
            raise UserError("factors JSON: 'lambdas' must be a list of numbers")
        return cls(lambdas=tuple(lam), n_hat=n_hat, mscale=float(mscale), meta=d.get("meta", {}))

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
        p = Path(path)
        if not p.is_file():
            raise UserError(f"factors file {p} does not exist")
        try:
            return cls.from_json(read_text(p, "factors file"))
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
