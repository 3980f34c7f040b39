"""The scorer's head NLL compiled (torch.compile, headnll.py) equals the eager one to float32
rounding, really compiles, and a compile that fails warns once and scores eagerly; `auto` is
compiled on CUDA only; the run config's `model.nll` is checked and does not define a search."""

import numpy as np
import pytest
import torch
import transformers

from longrope.objectives import headnll
from longrope.objectives.perplexity import token_nll
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.search import config
from longrope.spaces import method


@pytest.fixture
def model(tiny_model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def fresh(monkeypatch):
    """A process that has compiled nothing and seen no failure."""
    torch._dynamo.reset()  # dynamo caches compiled code on head_nll itself
    monkeypatch.setattr(headnll, "_compiled", None)
    monkeypatch.setattr(headnll, "failures", {})


def ids(model, n, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, n)


def test_compiled_equals_eager_and_really_compiles(model, fresh):
    from torch._dynamo.utils import counters

    doc = ids(model, 300)
    headnll.set_kind(model, "eager")
    ref = token_nll(model, doc, chunk=64)  # chunks of 64 and a last one of 43
    headnll.set_kind(model, "compiled")
    graphs = counters["stats"]["unique_graphs"]
    got = token_nll(model, doc, chunk=64)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo traced it: not an eager run in disguise
    assert getattr(model, headnll.ATTR) == "compiled" and not headnll.failures
    assert got.shape == ref.shape == (299,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # a batch of two documents (another size again) still agrees row by row
    two = np.stack([doc[:200], ids(model, 200, seed=1)])
    headnll.set_kind(model, "eager")
    ref2 = token_nll(model, two, chunk=64)
    headnll.set_kind(model, "compiled")
    torch.testing.assert_close(token_nll(model, two, chunk=64), ref2, rtol=1e-5, atol=1e-5)


def test_an_evaluator_compiles_at_load_not_in_its_first_evaluation(fresh):
    from torch._dynamo.utils import counters

    spec = dict(search_docs=2, heldout_docs=0, threads=2)
    eager = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu", nll="eager", **spec))
    before = counters["stats"]["unique_graphs"]
    ev = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu", nll="compiled", **spec))
    loaded = counters["stats"]["unique_graphs"]
    assert loaded == before + 2  # a full chunk, then the dynamic length
    f = method("yarn", ev.geometry, 300)
    got = ev.evaluate(f, 300)  # one chunk of 299 positions: a size not seen yet
    assert counters["stats"]["unique_graphs"] == loaded  # nothing compiled while scoring
    assert got.ok and got.ppl == pytest.approx(eager.evaluate(f, 300).ppl, rel=1e-5)
    assert getattr(ev.loaded.model, headnll.ATTR) == "compiled" and not headnll.failures


def test_a_failed_compile_warns_once_and_scores_eagerly(model, fresh, monkeypatch, capsys):
    tries = []

    def no_compiler(fn):
        def run(*a):
            tries.append(a[0].shape)
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")
        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    doc = ids(model, 150)
    headnll.set_kind(model, "eager")
    ref = token_nll(model, doc, chunk=64)
    headnll.set_kind(model, "compiled")
    assert torch.equal(token_nll(model, doc, chunk=64), ref)  # eager, bit for bit
    assert getattr(model, headnll.ATTR) == "eager"
    headnll.set_kind(model, "compiled")  # asked again (another model, a later load): no second try
    assert torch.equal(token_nll(model, doc, chunk=64), ref)
    assert len(tries) == 1  # the first chunk of the first document, never again in this process
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile of the scorer's head failed on cpu") == 1
    assert "(RuntimeError: InvalidCxxCompiler: No working C++ compiler found);" in err and "more lines" not in err
    assert headnll.failures == {"cpu": "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"}


def test_out_of_memory_is_not_a_compile_failure(model, fresh, monkeypatch):
    def oom(fn):
        def run(*a):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return run

    monkeypatch.setattr(torch, "compile", oom)
    headnll.set_kind(model, "compiled")
    with pytest.raises(torch.cuda.OutOfMemoryError):  # batch_nll halves the batch on it
        token_nll(model, ids(model, 100))
    assert getattr(model, headnll.ATTR) == "compiled" and not headnll.failures


@pytest.mark.parametrize("oom", [torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                 RuntimeError("CUDA error: out of memory")])  # CUDA's own, outside torch's allocator
def test_out_of_memory_while_compiling_is_not_a_compile_failure(model, fresh, monkeypatch, oom):
    """Inductor runs kernels while it compiles; Dynamo re-raises their error wrapped, as it does
    any backend's, in BackendCompilerFailed (raised `from None`, the error held as inner_exception)."""
    from torch._dynamo.exc import BackendCompilerFailed

    def compile_oom(fn):
        def run(*a):
            try:
                raise oom
            except RuntimeError as e:
                raise BackendCompilerFailed(compile_oom, e, None) from None
        return run

    monkeypatch.setattr(torch, "compile", compile_oom)
    headnll.set_kind(model, "compiled")
    with pytest.raises(type(oom)) as raised:  # the error itself, for batch_nll to halve the batch on
        token_nll(model, ids(model, 100))
    assert raised.value is oom
    assert getattr(model, headnll.ATTR) == "compiled" and not headnll.failures  # compiled next time


def test_auto_is_compiled_on_cuda_only(model):
    assert headnll.resolve("auto", "cuda:1") == "compiled" and headnll.resolve("auto", "cpu") == "eager"
    assert headnll.resolve("eager", "cuda") == "eager" and headnll.resolve("compiled", "cpu") == "compiled"
    assert headnll.set_kind(model, "auto") == "eager"  # this model is on the CPU
    with pytest.raises(ValueError, match="'fast'"):
        headnll.set_kind(model, "fast")


def test_the_config_key_is_checked_and_does_not_define_the_search():
    with pytest.raises(Exception, match="model.nll"):
        config.from_dict({"model": {"nll": "fast"}})
    old = config.from_dict({}).to_dict()
    new = {**old, "model": {**old["model"], "nll": "compiled"}}
    assert config.defining_diff(old, new) == []
    # a run frozen before the key existed resumes as it scored: eagerly
    del old["model"]["nll"]
    assert config.from_dict(config.frozen(old)).model.nll == "eager"
    assert config.from_dict({}).model.nll == "auto"


def test_the_heads_bias_is_part_of_the_score():
    """Latent: no admitted architecture has an lm_head bias today; a future one (or a fine-tuned
    head) would be scored without it."""
    import torch

    from longrope.objectives.headnll import head_nll

    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(5, 8, generator=g), torch.randn(11, 8, generator=g)
    b, t = torch.randn(11, generator=g), torch.tensor([0, 3, 10, 2, 7])
    want = -torch.log_softmax(h @ w.T + b, -1).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(head_nll(h, t, w, b, 1.0, 1.0), want)
