import json

import pytest
import transformers

from hf_configs import tiny_config
from longrope.spaces import RopeGeometry, UserError


def test_reads_each_arch_and_partial_rotary():
    g = RopeGeometry.from_config(tiny_config("llama", L0=64, theta=5e5))
    assert (g.rotary_dim, g.base, g.original_length) == (16, 5e5, 64)
    g = RopeGeometry.from_config(tiny_config("phi3"))
    assert g.rotary_dim == 8 and g.n_freqs == 4  # head_dim 16 × 0.5


def test_sliding_window_is_not_l0():
    g = RopeGeometry.from_config(tiny_config("mistral", L0=64))
    assert g.original_length == 64  # window is 48


def test_original_max_position_top_level_or_in_rope_dict():
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "max_position_embeddings": 32768}
    v457 = {**base, "rope_theta": 1e4, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "longrope", "long_factor": [1] * 8, "short_factor": [1] * 8}}
    v5 = {**base, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4,
                                      "original_max_position_embeddings": 4096}}
    for d in (v457, v5):
        g = RopeGeometry.from_config(d)
        assert (g.original_length, g.base, g.rotary_dim) == (4096, 1e4, 16)
    assert RopeGeometry.from_config({**base, "rope_theta": 1e4}).original_length == 32768


def test_gpt2_has_no_rope():
    with pytest.raises(UserError, match="GPT2LMHeadModel.*no rotary"):
        RopeGeometry.from_config({**transformers.GPT2Config().to_dict(),
                                  "architectures": ["GPT2LMHeadModel"]})


def test_from_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RopeGeometry.from_pretrained(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        RopeGeometry.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("qwen2").to_dict()))
    assert RopeGeometry.from_pretrained(tmp_path).n_freqs == 8
