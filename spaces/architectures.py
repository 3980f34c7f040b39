"""The one table of model architectures the engine admits, keyed by transformers ``model_type``.

To add an architecture, add one row to ``ARCHITECTURES`` here (and a tiny
config in tests/hf_configs.py, whose parity tests then cover it). Nothing else
names a model type: geometry reads the default θ here, the rotary patch finds
the rotary module and its cos/sin layout here, perplexity finds the decoder,
the LM head and the logit post-processing here, and export picks its form
here. Admit a row only once its parity tests pass (perplexity equals
transformers' own loss, the patch equals transformers' rope types).

Pure data: no torch, nothing else of ours but the error type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Architecture:
    """Where a transformers ``*ForCausalLM`` keeps what we touch, and what it does to its logits.

    decoder: attribute of the causal-LM holding the decoder stack (returns last_hidden_state).
    rotary: attribute of the decoder holding the one rotary module shared by all layers.
    rotary_layout: how cos/sin repeat the d/2 frequencies: "half" = cat(f, f) with
        rotate_half (Llama); "interleaved" = repeat_interleave(f, 2) (Cohere).
    head: attribute of the causal-LM holding the LM head (hidden -> vocab logits).
    logits_divided_by: config attribute the logits are divided by (Granite: logits_scaling).
    logits_multiplied_by: config attribute the logits are multiplied by (Cohere: logit_scale).
    export_form: "hf" (the full rope_scaling dict) or "phi3" (the three-key form Phi3Config takes).
    default_theta: θ transformers assumes when a config.json declares no rope_theta (None: refuse).
    default_head_dim: the head dimension its config class assumes when config.json has no head_dim
        (Qwen3's 128 whatever hidden_size / heads is; None: hidden_size / heads, as Llama's).
    """

    model_type: str
    decoder: str = "model"
    rotary: str = "rotary_emb"
    rotary_layout: str = "half"
    head: str = "lm_head"
    logits_divided_by: str | None = None
    logits_multiplied_by: str | None = None
    export_form: str = "hf"
    default_theta: float | None = None
    default_head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.rotary_layout not in ("half", "interleaved"):
            raise ValueError(f"{self.model_type}: rotary_layout must be 'half' or 'interleaved'")
        if self.export_form not in ("hf", "phi3"):
            raise ValueError(f"{self.model_type}: export_form must be 'hf' or 'phi3'")


def _table(*rows: Architecture) -> dict[str, Architecture]:
    return {r.model_type: r for r in rows}


# One row per admitted model_type; each has a tiny config in tests/hf_configs.py.
# Not admitted yet: gemma2 (its final_logit_softcapping would be one more field, but
# transformers 5.x refuses SDPA for it, and in 4.57 and 5.x its alternating sliding
# layers crash once models.py sets sliding_window = None); gemma3 and any other
# model whose rotary differs per layer (architecture_of refuses those).
ARCHITECTURES: dict[str, Architecture] = _table(
    Architecture("llama", default_theta=10000.0),
    Architecture("mistral", default_theta=10000.0),
    Architecture("qwen2", default_theta=10000.0),
    Architecture("phi3", export_form="phi3", default_theta=10000.0),
    Architecture("granite", logits_divided_by="logits_scaling", default_theta=10000.0),
    # Cohere's config default θ differs between transformers 4.57 (10000) and 5.x (500000).
    Architecture("cohere", rotary_layout="interleaved", logits_multiplied_by="logit_scale"),
    Architecture("qwen3", default_theta=10000.0, default_head_dim=128),  # Qwen3Config(head_dim=128)
    Architecture("mixtral", default_theta=1e6),  # its config class's default θ, in 4.57 and 5.x
)

# Position encodings that are not rotary (learned, ALiBi, relative bias): a clear
# error beats a search that silently changes nothing. Falcon has RoPE unless its config
# sets alibi, which architecture_of checks for any type.
NO_ROPE = frozenset({
    "gpt2", "gpt_bigcode", "bloom", "mpt", "opt", "bert", "roberta", "distilbert", "t5", "mt5",
    "bart", "xglm", "jais",
})

# Config keys that give some layers a different rotary (or none): one patch for all layers
# would be wrong for them.
_PER_LAYER_ROPE_KEYS = ("rope_local_base_freq", "local_rope_theta", "no_rope_layers",
                        "no_rope_layer_interval")


def architecture(model_type: str, name: str | None = None) -> Architecture:
    """The row for ``model_type``; a one-line UserError for a model without RoPE or not admitted.

    name: what to call the model in the message (its class name), default the type.
    """
    label = _label(model_type, name)
    if model_type in NO_ROPE:
        raise UserError(f"{label} has no rotary position embedding; LongRoPE needs RoPE")
    row = ARCHITECTURES.get(model_type)
    if row is None:
        raise UserError(
            f"{label} is not a supported architecture; supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))} (adding one is a row in longrope/spaces/architectures.py)"
        )
    return row


def architecture_of(config: Any) -> Architecture:
    """The row for a transformers config object or a config.json dict, refusing in one line a
    model without RoPE (by type or ALiBi flag), a rotary that differs per layer, or a type the
    table does not admit."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    model_type = str(get("model_type", None) or "unknown")
    name = (get("architectures", None) or [model_type])[0]
    label = _label(model_type, name)
    if get("alibi", None) or get("position_embedding_type", None) == "alibi":
        raise UserError(f"{label} uses ALiBi, no rotary position embedding; LongRoPE needs RoPE")
    rope = get("rope_parameters", None) or get("rope_scaling", None) or {}
    per_layer = [k for k, v in rope.items() if isinstance(v, dict)] if isinstance(rope, dict) else []
    per_layer += [k for k in _PER_LAYER_ROPE_KEYS if get(k, None) is not None]
    if per_layer:
        raise UserError(
            f"{label} has a rotary that differs per layer ({', '.join(per_layer)}); "
            "one set of rescale factors for all layers would be wrong, so it is not supported"
        )
    return architecture(model_type, name)


ALIBI_KEY = "position_encoding"  # config key of this project's ALiBi twins (objectives/alibi.py)


def is_alibi(config: Any) -> bool:
    """True for a config (object or config.json dict) marked as this project's ALiBi twin: a
    Llama body loaded without rotary (objectives/alibi.py). Models that are ALiBi by their own
    type or flag are refused by `architecture_of` instead."""
    value = config.get(ALIBI_KEY) if isinstance(config, dict) else getattr(config, ALIBI_KEY, None)
    return value == "alibi"


def _label(model_type: str, name: str | None) -> str:
    """How a message names the model: "LlamaForCausalLM (llama)", or the type alone."""
    return f"{name} ({model_type})" if name and name != model_type else str(model_type)
