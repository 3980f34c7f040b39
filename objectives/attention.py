"""Switching a model's attention: S2-Attn (training), ALiBi and LM-Infinite (scoring) are
implementations registered in transformers' AttentionInterface; a model runs one when every
config its modules hold names it (a decoder and its head may each keep a config).
"""

from __future__ import annotations

from typing import Any


def model_configs(model: Any) -> list[Any]:
    """Every distinct PretrainedConfig a model's modules hold."""
    from transformers import PretrainedConfig

    found = {id(c): c for m in model.modules()
             if isinstance(c := getattr(m, "config", None), PretrainedConfig)}
    return list(found.values())


def set_attention(model: Any, name: str) -> str:
    """Run every attention layer through the registered implementation `name`; returns the
    previous one (to switch back)."""
    before = model.config._attn_implementation
    for c in model_configs(model):
        c._attn_implementation = name
    return before
