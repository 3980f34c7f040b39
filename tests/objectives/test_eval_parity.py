"""`eval` scores what transformers runs: a factors file on the plain model equals the
model whose config carries those factors, scored as configured (`native`), at lengths
on both sides of L0 (short factors up to L0, long beyond, transformers' attention factor)."""

import json
import shutil

import numpy as np
import pytest
import transformers

from longrope.objectives.evaluate import run_eval
from longrope.objectives.specs import ObjectiveSpec
from longrope.runs.export import apply_to_folder
from longrope.spaces import DeployedFactors, RopeGeometry, hf_attention_factor, load_factors, mscale_su

L0, L = 32, 128
LENGTHS = [24, 32, 48, 128]  # two at or below L0 (short factors), two above (long)


def model_dir(arch, tiny_model_dir, folder):
    """A tiny random Llama or Phi3 with the tiny Llama's tokenizer; weights drawn wide
    (initializer_range 0.15) so that positions visibly change the scores."""
    import torch

    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L0, rope_theta=10000.0,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
              tie_word_embeddings=False, initializer_range=0.15)
    if arch == "phi3":
        cfg, cls = transformers.Phi3Config(original_max_position_embeddings=L0, **kw), transformers.Phi3ForCausalLM
    else:
        cfg, cls = transformers.LlamaConfig(**kw), transformers.LlamaForCausalLM
    torch.manual_seed(1)
    cls(cfg).save_pretrained(folder)
    return folder


def published_phi3_form(n):
    """Phi-3.5-mini's shape: a config.json patch with the three-key rope_scaling and no
    attention_factor (transformers derives it from max / original max positions)."""
    short = np.round(np.linspace(1.0, 1.3, n) ** 2, 4).tolist()
    long = np.round(1.0 + (np.linspace(0, 1, n) ** 3) * 5.0, 4).tolist()
    return {"max_position_embeddings": L, "original_max_position_embeddings": L0,
            "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": short}}


def our_export_form(n, attention_factor):
    """What `longrope export` writes (factor, attention_factor, both places for L0, n̂ = 0)."""
    long = np.round(np.linspace(1.0, 4.8, n), 2).tolist()
    short = np.round(np.linspace(1.0, 1.2, n), 2).tolist()
    return {"max_position_embeddings": L, "original_max_position_embeddings": L0,
            "rope_scaling": {"rope_type": "longrope", "type": "longrope", "long_factor": long,
                             "short_factor": short, "factor": L / L0, "original_max_position_embeddings": L0,
                             "attention_factor": attention_factor},
            "longrope_search": {"n_hat": 0, "target_length": L, "short_n_hat": 0}}


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    return {a: model_dir(a, tiny_model_dir, tmp_path_factory.mktemp("m") / a) for a in ("llama", "phi3")}


@pytest.mark.parametrize("arch", ["llama", "phi3"])
@pytest.mark.parametrize("form", ["published_phi3", "export"])
def test_factors_file_on_plain_equals_native_on_scaled(arch, form, models, text_corpus_dir, tmp_path):
    plain = models[arch]
    n = RopeGeometry.from_pretrained(plain).n_freqs
    # Phi3Config (transformers 4.57) cannot carry an attention factor, so `apply` writes Phi-3's
    # three-key form there and transformers derives su: an export with the default su mscale
    # round-trips exactly (and a different one warns, tests/runs/test_export.py); Llama carries any.
    searched = mscale_su(L / L0, L0) if arch == "phi3" else 1.23
    patch = published_phi3_form(n) if form == "published_phi3" else our_export_form(n, searched)
    file = tmp_path / "factors.json"
    file.write_text(json.dumps(patch))
    scaled = apply_to_folder(file, plain, tmp_path / "scaled")

    def ppl(model, method):
        spec = ObjectiveSpec.of(str(model), str(text_corpus_dir), attention="eager", search_docs=2,
                                heldout_docs=2)
        res = run_eval(spec, LENGTHS, [method], "heldout", progress=False)[method]
        return np.array([res[n].ppl for n in LENGTHS])

    via_file, native = ppl(plain, str(file)), ppl(scaled, "native")
    np.testing.assert_allclose(via_file, native, rtol=1e-4)
    # and the short/long switch matters here: the long factors alone score L0 differently
    long_only = tmp_path / "long.json"
    long_only.write_text(json.dumps({"lambdas": patch["rope_scaling"]["long_factor"],
                                     "mscale": load_factors(file).long.mscale}))
    assert abs(ppl(plain, str(long_only))[1] / native[1] - 1) > 1e-3


def test_attention_factor_is_derived_as_transformers_derives_it():
    rope = {"long_factor": [1.0], "short_factor": [1.0]}
    phi35 = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096}
    assert hf_attention_factor(rope, phi35) == pytest.approx(1.1902380714238083)  # Phi-3.5's 1.19
    assert hf_attention_factor({**rope, "attention_factor": 1.5}, phi35) == 1.5
    assert hf_attention_factor({**rope, "factor": 4.0, "original_max_position_embeddings": 64}, {}) == \
        mscale_su(4.0, 64)
    d = DeployedFactors.from_hf({**phi35, "rope_scaling": {"type": "longrope", "long_factor": [2.0, 3.0],
                                                           "short_factor": [1.0, 1.1]}})
    assert d.at(4096).lambdas == (1.0, 1.1) and d.at(4097).lambdas == (2.0, 3.0)
    assert d.at(10).mscale == d.at(10**5).mscale == pytest.approx(1.1902380714238083)


def test_eval_of_an_export_with_n_hat_says_a_deployed_model_ignores_it(tiny_model_dir, text_corpus_dir,
                                                                      tmp_path, capsys):
    """eval applies n̂ through the rotary patch; transformers, vLLM and llama.cpp do not: said."""
    n = RopeGeometry.from_config(json.loads((tiny_model_dir / "config.json").read_text())).n_freqs
    rope = {"rope_type": "longrope", "long_factor": [2.0] * n, "short_factor": [1.0] * n,
            "original_max_position_embeddings": L0, "attention_factor": 1.0}
    spec = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), heldout_docs=1)
    for n_hat, said in ((2, True), (0, False)):
        f = tmp_path / f"n{n_hat}.json"
        f.write_text(json.dumps({"rope_scaling": rope, "longrope_search": {"n_hat": n_hat}}))
        res = run_eval(spec, [48], [str(f)], "heldout", progress=False)
        assert np.isfinite(res[str(f)][48].ppl)
        err = capsys.readouterr().err
        assert ("n̂ = 2 is applied here" in err and "a deployed model scores as with n̂ = 0" in err) == said


@pytest.mark.parametrize("lengths", [
    {"max_position_embeddings": 4096},  # no original_max_position_embeddings anywhere: L0 = 4096
    {"max_position_embeddings": 32768, "original_max_position_embeddings": 4096,
     "rope": {"original_max_position_embeddings": 2048}},  # two that differ: the top level's
])
@pytest.mark.parametrize("factor", [None, 8.0])
def test_a_third_party_longrope_config_is_read_as_transformers_reads_its_l0(lengths, factor, tmp_path):
    """Which set (short up to L0) and which attention factor transformers' longrope applies to a
    config.json we did not write, at L0 and just past it: load_factors gives the same."""
    import torch
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if factor is None and "original_max_position_embeddings" not in lengths and transformers.__version__ < "5":
        pytest.skip("transformers 4.57's longrope raises on this config itself (no factor, no L0)")
    n = 8
    lengths = dict(lengths)
    rope = {"rope_type": "longrope", "type": "longrope", "long_factor": [4.0] * n, "short_factor": [1.0] * n,
            **lengths.pop("rope", {}), **({"factor": factor} if factor else {})}
    cfg = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e4,
           **lengths, "rope_scaling": rope}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    ours = load_factors(tmp_path / "config.json")
    assert ours.original_length == 4096
    for length in (4096, 4097):
        inv, attention = ROPE_INIT_FUNCTIONS["longrope"](hf, torch.device("cpu"), seq_len=length)
        plain = 1 / 1e4 ** (np.arange(0, 2 * n, 2) / (2 * n))  # head_dim 16: θ_i
        f = ours.at(length)
        np.testing.assert_allclose(f.lambdas, plain / inv.double().numpy(), rtol=1e-6)
        assert f.mscale == pytest.approx(attention, rel=1e-6)
