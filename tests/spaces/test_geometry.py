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


def test_a_config_json_without_head_dim_takes_its_class_default():
    """Qwen3Config's head_dim defaults to 128 whatever hidden_size / heads is; the dict path took
    1024 / 16 = 64 where transformers builds 64 frequencies."""
    d = {"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16, "rope_theta": 1e6,
         "max_position_embeddings": 32768}
    built = transformers.Qwen3Config(**{k: v for k, v in d.items() if k != "model_type"})
    assert RopeGeometry.from_config(d).rotary_dim == RopeGeometry.from_config(built).rotary_dim == 128
    llama = {**d, "model_type": "llama"}  # Llama's default is hidden / heads
    assert RopeGeometry.from_config(llama).rotary_dim == transformers.LlamaConfig(hidden_size=1024,
                                                                                  num_attention_heads=16).head_dim


def test_geometry_and_factor_files_refuse_what_would_divide_by_zero():
    """NTK's base change divides by d - 2 and mscale_su by ln L0: a rotary dimension of 2 and an
    L0 of 1 crashed (ZeroDivisionError); L0 = 0.5 was read as 0 and turned the L0 checks off."""
    from longrope.spaces import DeployedFactors

    with pytest.raises(UserError, match="even number >= 4"):
        RopeGeometry(2, 1e4, 4096)
    with pytest.raises(UserError, match="L0 must be >= 2"):
        RopeGeometry(16, 1e4, 1)
    patch = {"rope_scaling": {"rope_type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8},
             "max_position_embeddings": 8192}
    for bad in (1, 0.5, -4096):
        with pytest.raises(UserError, match="original_max_position_embeddings must be an integer >= 2"):
            DeployedFactors.from_hf({**patch, "original_max_position_embeddings": bad})
    both = {**patch, "rope_parameters": patch["rope_scaling"], "rope_scaling": None,
            "original_max_position_embeddings": 4096}  # an explicit null beside rope_parameters
    assert DeployedFactors.from_hf(both).long.lambdas == (1.0,) * 8


@pytest.mark.parametrize("key, value", [("rope_theta", "abc"), ("hidden_size", None),
                                        ("max_position_embeddings", "64k")])
def test_a_config_with_a_value_that_is_no_number_is_one_line(key, value):
    d = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e4,
         "max_position_embeddings": 4096, key: value}
    with pytest.raises(UserError, match="must be numbers"):
        RopeGeometry.from_config(d)


def test_a_config_without_heads_or_length_says_which():
    """The numbers check wrapped these UserErrors (a ValueError) into "must be numbers"."""
    d = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 0, "rope_theta": 1e4,
         "max_position_embeddings": 4096}
    for bad, said in ((d, "cannot tell the head dimension from its config"),
                      ({**d, "num_attention_heads": 4, "max_position_embeddings": None},
                       "config has no max_position_embeddings")):
        with pytest.raises(UserError) as e:
            RopeGeometry.from_config(bad)
        assert str(e.value) == f"llama (llama): {said}"


def test_critical_dim_is_never_negative_and_partial_rotary_is_read_from_rope_parameters():
    from longrope.spaces import RopeGeometry

    assert RopeGeometry(rotary_dim=8, base=10000.0, original_length=4).critical_dim() == 0  # L0 < 2π
    g = RopeGeometry.from_config({"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 4,
                                  "max_position_embeddings": 4096,
                                  "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                      "partial_rotary_factor": 0.5}})
    assert g.rotary_dim == 8  # 5.x keeps it there: twice the frequencies otherwise
