"""Tiny transformers configs of each supported architecture, for parity tests."""

from __future__ import annotations

import transformers

from longrope.objectives.selfcheck import set_rope

# name -> (config class, extra kwargs), one per row of longrope.spaces.ARCHITECTURES.
# Phi3 uses partial rotary (0.5) to cover rotary_dim < head_dim; Mistral keeps a
# sliding window that must not be read as L0; Granite and Cohere post-process
# their logits with non-1 factors (1 would hide a missing post-processing).
ARCHS = {
    "llama": (transformers.LlamaConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),
    "mistral": (transformers.MistralConfig, {"sliding_window": 48, "head_dim": 16}),  # 4.57 defaults None
    "phi3": (transformers.Phi3Config, {"partial_rotary_factor": 0.5}),
    "granite": (transformers.GraniteConfig, {"logits_scaling": 8.0}),  # logits / 8
    "cohere": (transformers.CohereConfig, {"logit_scale": 0.25}),  # logits * 0.25, interleaved rotary
    "qwen3": (transformers.Qwen3Config, {"head_dim": 16}),
    "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2,
                                             "head_dim": 16}),  # 4.57 and 5.x default head_dim None
}


def tiny_config(arch: str, L0: int = 64, theta: float = 10000.0, rope_scaling=None, **kw):
    cls, extra = ARCHS[arch]
    args = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=L0,
        rope_theta=theta,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    args.update(extra)
    if arch == "phi3":  # Phi3 keeps its pre-training length at the top level
        args["original_max_position_embeddings"] = L0
    args.update(kw)
    cfg = cls(**args)
    cfg._attn_implementation = "eager"
    if rope_scaling is not None:
        set_rope(cfg, rope_scaling)
    return cfg


