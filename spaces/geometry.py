"""RoPE geometry of a model, read from its config without loading weights.

Both config forms are understood: transformers 4.4x-4.57 keep ``rope_theta``
and ``rope_scaling`` at the top level; 5.x keeps them in ``rope_parameters``.
The original (pre-training) length L0 is ``original_max_position_embeddings``
(top level or inside the rope dict), else ``max_position_embeddings``; never
``sliding_window`` (the official LongRoPE code reads that for Mistral, which is
wrong: the window is an attention span, not the trained length). Which model
types are admitted, and their default θ, is the table in architectures.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import architecture_of
from .errors import UserError


@dataclass(frozen=True)
class RopeGeometry:
    """What the rescale factors act on.

    rotary_dim: number of rotated dimensions per head (head_dim times
        partial_rotary_factor); there are rotary_dim / 2 frequencies.
    base: θ, the RoPE base.
    original_length: L0, the context length the model was trained at.
    """

    rotary_dim: int
    base: float
    original_length: int
    model_type: str = "unknown"

    def __post_init__(self) -> None:
        if self.rotary_dim < 4 or self.rotary_dim % 2:  # NTK's base change divides by d - 2
            raise UserError(f"rotary dimension must be an even number >= 4, got {self.rotary_dim}")
        if not self.base > 1:
            raise UserError(f"RoPE base θ must be > 1, got {self.base}")
        if self.original_length < 2:  # ln L0 divides in mscale_su
            raise UserError(f"original length L0 must be >= 2, got {self.original_length}")

    @property
    def n_freqs(self) -> int:
        """d/2: one rescale factor per rotary frequency."""
        return self.rotary_dim // 2

    def inv_freq(self) -> np.ndarray:
        """θ_i = base^(-2i/d), float64, index 0 = highest frequency (RoFormer eq. 15)."""
        return 1.0 / self.base ** (np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim)

    def scale(self, target_length: int) -> float:
        """s = L / L0."""
        return target_length / self.original_length

    def critical_dim(self) -> int:
        """LongRoPE2's theoretical critical dimension as a 0-based rotary pair index (Shang et al.
        2025, arXiv 2502.20082: d_tcd = 2⌈(d/2)·log_θ(L0 / 2π)⌉ dimensions):

            c = ⌈x⌉ − 1,   x = (d/2)·log_θ(L0 / 2π).

        Pair i turns with period 2π·θ^(2i/d), which fits inside L0 exactly when i <= x; so (for
        a non-integer x) c is the last pair that completes a full period within the trained
        length, and pairs above it never saw one. By hand: Llama-2 7B (d 128, θ 10^4, L0 4096)
        x = 45.03, c = 45; LLaMA3-8B (θ 5·10^5, L0 8192) x = 34.98, c = 34. Never below 0."""
        x = self.n_freqs * math.log(self.original_length / (2 * math.pi)) / math.log(self.base)
        return max(math.ceil(x) - 1, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotary_dim": self.rotary_dim,
            "base": self.base,
            "original_length": self.original_length,
            "model_type": self.model_type,
        }

    @classmethod
    def from_config(cls, config: Any) -> RopeGeometry:
        """From a transformers config object or a plain config.json dict."""
        arch = architecture_of(config)  # refuses no RoPE, per-layer rope, unadmitted types
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        model_type = arch.model_type
        name = (get("architectures") or [model_type])[0]
        rope = get("rope_parameters") or get("rope_scaling") or {}
        if not isinstance(rope, dict):
            rope = {}
        theta = rope.get("rope_theta", get("rope_theta"))
        if theta is None:
            if get("num_attention_heads") is None:
                raise UserError(f"{name} ({model_type}): config has no attention heads or RoPE base")
            if arch.default_theta is None:
                raise UserError(
                    f"{name} ({model_type}) declares no rope_theta and has no default one in "
                    "spaces/architectures.py; add rope_theta to its config.json"
                )
            theta = arch.default_theta
        heads = get("num_attention_heads")
        l0 = get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        l0 = l0 or get("max_position_embeddings")
        try:  # transformers keeps what config.json says: "rope_theta": "abc", "hidden_size": null
            head_dim = (get("head_dim") or arch.default_head_dim  # Qwen3's class default, not hidden / heads
                        or (get("hidden_size") // heads if heads else None))
            partial = rope.get("partial_rotary_factor", get("partial_rotary_factor", 1.0)) or 1.0
            rotary_dim = int(head_dim * partial) if head_dim else None
            base, original = float(theta), (int(l0) if l0 else None)
        except (TypeError, ValueError) as e:  # (a UserError is a ValueError: none is raised in here)
            raise UserError(f"{name} ({model_type}): its config's rope_theta, head sizes and lengths must be "
                            f"numbers ({e})") from None
        if not head_dim:
            raise UserError(f"{name} ({model_type}): cannot tell the head dimension from its config")
        if not original:
            raise UserError(f"{name} ({model_type}): config has no max_position_embeddings")
        return cls(rotary_dim=rotary_dim, base=base, original_length=original, model_type=model_type)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> RopeGeometry:
        """From a model folder's config.json, without loading weights."""
        path = Path(folder)
        if not path.exists():
            raise UserError(f"model path {path} does not exist")
        cfg = path / "config.json" if path.is_dir() else path
        if not cfg.is_file():
            raise UserError(f"{path} has no config.json: not a Hugging Face model folder")
        try:
            data = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {cfg}: {e}") from None
        return cls.from_config(data)


def own_scaling(config: Any) -> str | None:
    """The rope scaling a model's config already applies (``llama3`` for Llama-3.1, ``yarn``,
    an applied ``longrope``), or None for plain RoPE. Candidates are scored against plain θ at
    L0 (objectives/rotary.py), so factors searched for such a model replace that scaling."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    rope = get("rope_parameters") or get("rope_scaling") or {}
    kind = (rope.get("rope_type") or rope.get("type")) if isinstance(rope, dict) else None
    return None if kind in (None, "default") else str(kind)
