"""Numerics whatever the model dtype: the rotary tables stay float32 when the model is cast,
and a bf16 model ranks candidates like float32 (the check `longrope check` reports)."""

import torch
import transformers

from longrope.objectives.rotary import patch_model
from longrope.spaces import RescaleFactors


def test_rotary_tables_stay_float32_when_the_model_is_cast(tiny_model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rot = patch_model(m)
    rot.set_factors(RescaleFactors((1.0, 1.1, 1.3, 1.6, 1.9, 2.2, 2.6, 3.07), n_hat=2))
    before = {n: b.clone() for n, b in rot.named_buffers(recurse=False)}
    m.to(torch.bfloat16)
    assert next(m.parameters()).dtype == torch.bfloat16  # the weights did move
    for name, b in rot.named_buffers(recurse=False):
        assert b.dtype == torch.float32 and torch.equal(b, before[name]), name
    ids = torch.arange(64)[None] % m.config.vocab_size
    cos, sin = rot(torch.zeros(1, dtype=torch.bfloat16), ids)
    assert cos.dtype == torch.bfloat16  # computed in float32, handed over in the model's dtype
    ref = (ids[..., None].float() * before["inv_freq"]).cos()
    assert torch.allclose(cos[..., :8].float(), ref, atol=1e-2)
    set_again = rot.set_factors(RescaleFactors.uniform(2.0, 8))  # a switch still works after the cast
    assert set_again is None and rot.lambdas.dtype == torch.float32 and float(rot.lambdas[0]) == 2.0


def test_a_model_cast_before_it_is_patched_keeps_float32_theta(tiny_model_dir):
    """Cast, then patched: transformers 5's inv_freq buffers were cast with the weights, and the
    patch built every candidate from θ rounded to bf16 (0.4% off: at 32k tokens the low pairs'
    angles are noise). The order of cast and patch must not matter."""
    from longrope.objectives.rotary import base_inv_freq

    first = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    patched_first = patch_model(first)
    cast = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(torch.bfloat16)
    patched_after = patch_model(cast)
    assert patched_after.original_inv_freq.dtype == torch.float32
    assert torch.equal(patched_after.original_inv_freq, patched_first.original_inv_freq)
    assert torch.equal(patched_after.original_inv_freq, base_inv_freq(patched_after.geometry))


def test_log_softmax_runs_in_float32_for_a_bf16_model(tiny_model_dir):
    from longrope.objectives.perplexity import token_nll

    m = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, m.config.vocab_size, (80,), generator=torch.Generator().manual_seed(3))
    nll = token_nll(m, ids.numpy())
    with torch.no_grad():
        logits = m(ids[None]).logits[0, :-1]  # bf16, as the head returns them
    in_fp32 = torch.nn.functional.cross_entropy(logits.float(), ids[1:], reduction="none")
    in_bf16 = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none").float()
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, in_fp32, rtol=0, atol=1e-5)
    assert (nll - in_bf16).abs().max() > 1e-3  # the bf16 log-softmax is measurably different
