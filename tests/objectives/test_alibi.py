"""The ALiBi twin's machinery: the paper's slopes, the attention against scores written out by
hand, the identity rotary, and the one-line refusals of everything that needs a rotary."""

import json
import math
import shutil
import types

import numpy as np
import pytest
import torch

from longrope.objectives import alibi
from longrope.objectives.evaluate import run_eval
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.runs.export import apply_to_folder
from longrope.spaces import UserError


@pytest.mark.parametrize("n, expected", [
    (1, [2**-8]),
    (4, [2**-2, 2**-4, 2**-6, 2**-8]),
    (8, [2**-k for k in range(1, 9)]),
    # not a power of two: the 8 slopes of the 8-head rule, then every other one of the 16-head rule
    (12, [2**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]),
    (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),
])
def test_slopes_follow_the_paper(n, expected):
    np.testing.assert_allclose(alibi.slopes(n), expected, rtol=1e-12)


def test_bias_is_minus_slope_times_distance_and_causal():
    b = alibi.bias(5, [0.5, 0.25])
    assert b.shape == (2, 5, 5)
    assert b[0, 4, 1] == -0.5 * 3 and b[1, 3, 0] == -0.25 * 3 and b[0, 2, 2] == 0
    assert torch.isinf(b[1, 1, 2]) and b[1, 1, 2] < 0


def test_attention_equals_a_by_hand_softmax():
    """Grouped-query heads (4 query heads on 2 kv heads), scores written out pair by pair."""
    gen = torch.Generator().manual_seed(0)
    L, D = 7, 8
    q = torch.randn(1, 4, L, D, generator=gen)
    k, v = (torch.randn(1, 2, L, D, generator=gen) for _ in range(2))
    out, _ = alibi.attention(types.SimpleNamespace(training=False), q, k, v, None, scaling=D**-0.5)
    m = alibi.slopes(4)
    ref = torch.empty(1, L, 4, D)
    for h in range(4):
        for i in range(L):
            s = [float(q[0, h, i] @ k[0, h // 2, j]) * D**-0.5 - m[h] * (i - j) for j in range(i + 1)]
            w = torch.softmax(torch.tensor(s), 0)
            ref[0, i, h] = (w[:, None] * v[0, h // 2, : i + 1]).sum(0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def alibi_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random Llama marked as an ALiBi twin (the marker is all the loader needs)."""
    d = tmp_path_factory.mktemp("alibi") / "m"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "position_encoding": "alibi"}))
    return d


def test_loaded_twin_has_no_rotary_and_alibi_attention(alibi_dir, tiny_model_dir, text_corpus_dir):
    ev = Evaluator(ObjectiveSpec.of(str(alibi_dir), str(text_corpus_dir), search_docs=2, heldout_docs=2))
    assert ev.loaded.alibi and ev.loaded.model.config._attn_implementation == alibi.NAME
    cos, sin = ev.rotary.native(torch.zeros(1), torch.arange(40)[None])
    assert torch.equal(cos, torch.ones_like(cos)) and torch.equal(sin, torch.zeros_like(sin))
    twin = ev.evaluate(ev.method("none", 64), 64, pool="heldout")
    rope = Evaluator(ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), search_docs=2, heldout_docs=2))
    plain = rope.evaluate(rope.method("none", 64), 64, pool="heldout")
    assert twin.ok and math.isfinite(twin.ppl) and twin.ppl != plain.ppl  # the same weights, run as ALiBi


@pytest.mark.parametrize("method", ["pi", "yarn", "lm_infinite"])
def test_eval_refuses_rotary_methods_in_one_line(alibi_dir, text_corpus_dir, method):
    spec = ObjectiveSpec.of(str(alibi_dir), str(text_corpus_dir), search_docs=2, heldout_docs=2)
    with pytest.raises(UserError, match="ALiBi, not RoPE") as e:
        run_eval(spec, [64], ["none", method], "heldout", progress=False)
    assert "\n" not in str(e.value)


def test_search_and_apply_refuse_the_twin(alibi_dir, text_corpus_dir, tmp_path):
    ev = Evaluator(ObjectiveSpec.of(str(alibi_dir), str(text_corpus_dir), search_docs=2, heldout_docs=2))
    with pytest.raises(UserError, match="a factor search"):
        ev.check([64])
    export = tmp_path / "f.json"
    export.write_text(json.dumps({"rope_scaling": {"rope_type": "longrope", "factor": 2.0,
                                                   "original_max_position_embeddings": 32,
                                                   "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}}))
    with pytest.raises(UserError, match="ALiBi model"):
        apply_to_folder(export, alibi_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
