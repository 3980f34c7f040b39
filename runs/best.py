"""BestRecord: one stage's best factors and where they came from (best/<kind>-<L>.json).

The driver writes one whenever a stage's best changes; export reads them. The
JSON keys and their order are those of every run so far, so old runs export.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrope.spaces import RescaleFactors, UserError


@dataclass(frozen=True)
class BestRecord:
    kind: str  # long | short
    target_length: int  # L of the stage
    original_length: int  # the model's trained length L0
    lambdas: tuple[float, ...]  # one stretch per rotary frequency, index 0 = highest frequency
    n_hat: int  # leading positions that keep the original encoding
    mscale: float  # attention scaling for positions >= n_hat
    search_ppl: float  # perplexity on the search documents
    heldout_ppl: float | None  # on the held-out documents; None until scored (or none configured)
    evals: int  # complete + pruned evaluations of the stage when written
    trial: int  # the Optuna trial number in the stage's study (a resume's re-queued copies shift it)
    slot: tuple[int, int] | None  # (generation, child) of the evolution, its stable name; None for others
    config_hash: str  # sha256 prefix of the run's config.toml
    model: str
    data: str
    sampler: str  # longrope | cmaes | tpe | random
    seed: int
    rotary_dim: int
    base: float  # RoPE θ

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(float(x) for x in self.lambdas))
        if self.slot is not None:
            object.__setattr__(self, "slot", tuple(self.slot))

    @property
    def factors(self) -> RescaleFactors:
        return RescaleFactors(self.lambdas, n_hat=self.n_hat, mscale=self.mscale)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["lambdas"] = list(self.lambdas)
        d["slot"] = None if self.slot is None else list(self.slot)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> BestRecord:
        if not isinstance(d, dict):
            raise UserError("a best record must be a JSON object")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d]
        if missing:
            raise UserError(f"missing field{'s' * (len(missing) > 1)} {', '.join(missing)}")
        for name, check, what in _CHECKS:
            if not check(d[name]):
                raise UserError(f"field {name} must be {what}, got {d[name]!r:.60}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def load(cls, path: str | Path) -> BestRecord:
        """The record in `path`; a missing, truncated or malformed file is one line naming it."""
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise UserError(f"{p} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p} is not valid JSON (truncated?): {e}") from None
        try:
            return cls.from_dict(d)
        except UserError as e:
            raise UserError(f"{p}: {e}") from None


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _num(x: Any) -> bool:
    return _int(x) or isinstance(x, float)


_CHECKS = (
    ("kind", lambda x: x in ("long", "short"), "long or short"),
    ("target_length", _int, "an integer"),
    ("original_length", _int, "an integer"),
    ("lambdas", lambda x: isinstance(x, list) and bool(x) and all(map(_num, x)), "a list of numbers"),
    ("n_hat", _int, "an integer"),
    ("mscale", _num, "a number"),
    ("search_ppl", _num, "a number"),
    ("heldout_ppl", lambda x: x is None or _num(x), "a number or null"),
    ("evals", _int, "an integer"),
    ("trial", _int, "an integer"),
    ("slot", lambda x: x is None or (isinstance(x, list) and len(x) == 2 and all(map(_int, x))),
     "[generation, child] or null"),
    ("config_hash", lambda x: isinstance(x, str), "a string"),
    ("model", lambda x: isinstance(x, str), "a string"),
    ("data", lambda x: isinstance(x, str), "a string"),
    ("sampler", lambda x: isinstance(x, str), "a string"),
    ("seed", _int, "an integer"),
    ("rotary_dim", _int, "an integer"),
    ("base", _num, "a number"),
)
