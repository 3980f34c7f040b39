"""The architecture table: every admitted row scores exactly what transformers scores,
and everything else is refused in one line before any weights load."""

import json

import pytest
import torch
import transformers

from hf_configs import ARCHS, tiny_config
from longrope.objectives.models import load_model
from longrope.objectives.perplexity import document_nll
from longrope.objectives.rotary import find_rotary
from longrope.spaces import ARCHITECTURES, RopeGeometry, UserError, architecture, architecture_of


def build(arch, state=None, **kw):
    # initializer_range 0.2 (not 0.02): logits far from uniform, so the post-processing matters
    torch.manual_seed(0)
    cfg = tiny_config(arch, **{"initializer_range": 0.2, **kw})
    m = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    if state is not None:
        m.load_state_dict(state)
    return m


def hf_loss(model, ids):
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 128, (1, 80), generator=torch.Generator().manual_seed(3))


def test_every_admitted_row_has_a_tiny_config_and_back():
    assert set(ARCHS) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("chunk", [7, 4096])
def test_document_nll_equals_transformers_loss(arch, chunk, ids):
    m = build(arch)
    mean, _ = document_nll(m, ids[0].numpy(), chunk=chunk)
    assert mean == pytest.approx(hf_loss(m, ids), abs=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_rotary_is_where_the_table_says(arch):
    m = build(arch)
    parent, name = find_rotary(m)
    row = ARCHITECTURES[arch]
    assert parent is getattr(m, row.decoder) and name == row.rotary
    assert RopeGeometry.from_config(m.config).model_type == arch


@pytest.mark.parametrize(("arch", "key"), [("granite", "logits_scaling"), ("cohere", "logit_scale")])
def test_logit_post_processing_changes_the_score(arch, key, ids):
    scaled = build(arch)
    plain = build(arch, state=scaled.state_dict(), **{key: 1.0})
    a, _ = document_nll(scaled, ids[0].numpy())
    b, _ = document_nll(plain, ids[0].numpy())
    assert abs(a - b) > 0.1
    assert b == pytest.approx(hf_loss(plain, ids), abs=1e-5)


def one_line_error(config):
    with pytest.raises(UserError) as e:
        RopeGeometry.from_config(config)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_gpt2_is_refused_for_having_no_rope():
    cfg = {**transformers.GPT2Config().to_dict(), "architectures": ["GPT2LMHeadModel"]}
    assert "GPT2LMHeadModel (gpt2) has no rotary position embedding" in one_line_error(cfg)


def test_alibi_falcon_is_refused_for_having_no_rope():
    msg = one_line_error({**transformers.FalconConfig(alibi=True).to_dict()})
    assert "ALiBi" in msg and "falcon" in msg


def test_unknown_type_lists_the_admitted_ones():
    cfg = {"model_type": "olmo2", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e4,
           "max_position_embeddings": 64}
    msg = one_line_error(cfg)
    assert "olmo2 is not a supported architecture" in msg
    assert ", ".join(sorted(ARCHITECTURES)) in msg


def test_per_layer_type_rope_is_refused():
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64}
    per_layer = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                 "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    msg = one_line_error({**base, "rope_parameters": per_layer})
    assert "differs per layer (full_attention, sliding_attention)" in msg
    # transformers' own Gemma 3 config, in whichever form this version writes it
    msg = one_line_error(transformers.Gemma3TextConfig(num_hidden_layers=2))
    assert "differs per layer" in msg and "gemma3_text" in msg


def test_any_admitted_type_flagged_alibi_or_with_per_layer_rope_keys_is_refused():
    """Flags a config of an admitted type may carry: run as RoPE with one patch, they would
    search factors that change nothing or are wrong for some layers."""
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64}
    assert "uses ALiBi" in one_line_error({**base, "position_embedding_type": "alibi"})
    assert "differs per layer (no_rope_layers)" in one_line_error({**base, "no_rope_layers": [1, 0]})


def test_a_mixtral_config_without_its_theta_has_the_config_class_default():
    """MixtralConfig's θ is 1e6 (10000 for Llama): a config.json that leaves it out means that."""
    base = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64}
    assert RopeGeometry.from_config({**base, "model_type": "mixtral"}).base == 1e6
    assert RopeGeometry.from_config({**base, "model_type": "llama"}).base == 1e4


def test_lookup_by_type():
    assert architecture("granite").logits_divided_by == "logits_scaling"
    assert architecture("cohere").logits_multiplied_by == "logit_scale"
    assert architecture("phi3").export_form == "phi3"
    assert architecture_of(tiny_config("cohere")).rotary_layout == "interleaved"
    with pytest.raises(UserError, match="^bloom has no rotary"):
        architecture("bloom")


def test_load_model_refuses_an_unadmitted_type_before_loading_weights(tmp_path):
    cfg = transformers.Olmo2Config(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2,
                                   architectures=["Olmo2ForCausalLM"])
    cfg.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not weights")  # loading them would fail differently
    with pytest.raises(UserError, match=r"^Olmo2ForCausalLM \(olmo2\) is not a supported architecture; supported"):
        load_model(str(tmp_path))


def test_a_qwen2_with_its_sliding_window_on_scores_the_whole_context(tmp_path, tiny_model_dir):
    """use_sliding_window = true makes Qwen2Config mark layers sliding_attention in layer_types;
    with the window switched off (every score uses full attention) each forward then raised
    "Could not find a sliding_window argument". layer_types and the flag are switched off too, in
    the loaded model and in `apply`'s folder (whose deployment would raise alike)."""
    import shutil

    from longrope.runs.export import apply_to_folder

    cfg = tiny_config("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=0)
    assert "sliding_attention" in cfg.layer_types
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "qwen2")
    for f in tiny_model_dir.glob("tokenizer*"):
        shutil.copy(f, tmp_path / "qwen2")
    loaded = load_model(str(tmp_path / "qwen2"), attention="eager")
    ids = torch.arange(40)[None] + 3
    with torch.no_grad():
        full = loaded.model(input_ids=ids).logits  # 40 tokens, past the 16-token window
    assert full.shape == (1, 40, 128)
    patch = {"max_position_embeddings": 128, "original_max_position_embeddings": 64,
             "rope_scaling": {"rope_type": "longrope", "type": "longrope", "factor": 2.0,
                              "original_max_position_embeddings": 64, "long_factor": [2.0] * 8,
                              "short_factor": [1.0] * 8}}
    (tmp_path / "f.json").write_text(json.dumps(patch))
    out = apply_to_folder(tmp_path / "f.json", tmp_path / "qwen2", tmp_path / "applied", quiet=True)
    deployed = transformers.AutoConfig.from_pretrained(out)
    assert not deployed.use_sliding_window and "sliding_attention" not in (deployed.layer_types or [])


def test_a_mistral_with_a_sliding_window_is_scored_over_its_whole_context(tmp_path, tiny_model_dir):
    """Mistral's sliding_window (no use_sliding_window flag, no layer_types) would score a long
    document through a window of it: the loaded model has none, and scores as a model without."""
    import shutil

    for name, window in (("windowed", 8), ("full", None)):
        torch.manual_seed(0)
        transformers.MistralForCausalLM(tiny_config("mistral", sliding_window=window)).save_pretrained(tmp_path / name)
        for f in tiny_model_dir.glob("tokenizer*"):
            shutil.copy(f, tmp_path / name)
    windowed, full = (load_model(str(tmp_path / n), attention="eager") for n in ("windowed", "full"))
    assert windowed.model.config.sliding_window is None
    ids = torch.arange(32)[None] + 3  # four times the window
    with torch.no_grad():
        torch.testing.assert_close(windowed.model(input_ids=ids).logits, full.model(input_ids=ids).logits,
                                   rtol=0, atol=0)
