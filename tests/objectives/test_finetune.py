"""The fine-tune (objectives/finetune.py): what trains, what it trains on, the merge, and a
resume from its checkpoint that ends where an uninterrupted fine-tune does."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longrope.objectives import finetune as ft_mod
from longrope.objectives.data import Split, load_corpus, tokenize
from longrope.objectives.finetune import finetune, prepare, training_docs, windows
from longrope.objectives.models import load_model
from longrope.objectives.specs import FinetuneSpec, ObjectiveSpec
from longrope.spaces import RescaleFactors, UserError

FACTORS = RescaleFactors((1.0, 1.1, 1.3, 1.6, 2.0, 2.4, 3.0, 4.0), n_hat=2, mscale=1.05)


def _model(tiny_model_dir):
    return load_model(str(tiny_model_dir)).model


def test_trainable_parameters_are_lora_embeddings_and_norms(tiny_model_dir):
    model = prepare(_model(tiny_model_dir), FinetuneSpec(), FACTORS)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    # 2 layers x q, k, v, o x (A, B)
    assert len(lora) == 16 and all(any(f".{t}." in n for t in ("q_proj", "k_proj", "v_proj", "o_proj"))
                                   for n in lora)
    rest = names - lora
    assert rest == {n for n in rest if n.endswith("embed_tokens.weight") or "norm" in n.split(".")[-2]}
    assert sum("layernorm" in n for n in rest) == 4 and sum(n.endswith("model.norm.weight") for n in rest) == 1
    assert sum(n.endswith("embed_tokens.weight") for n in rest) == 1
    frozen = prepare(_model(tiny_model_dir), FinetuneSpec(train_embeddings_norms=False,
                                                          lora_targets=["q_proj", "v_proj"]), FACTORS)
    only = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert len(only) == 8 and all(".lora_" in n and ("q_proj" in n or "v_proj" in n) for n in only)


def test_unknown_lora_target_is_a_user_error(tiny_model_dir):
    with pytest.raises(UserError, match=r"finetune.lora_targets = \['qkv_proj'\]"):
        prepare(_model(tiny_model_dir), FinetuneSpec(lora_targets=["qkv_proj"]), FACTORS)


def test_merged_logits_equal_the_lora_model(tiny_model_dir):
    model = prepare(_model(tiny_model_dir), FinetuneSpec(), FACTORS)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:  # B starts at zero: make the adapters do something
                p.normal_(0, 0.05)
    ids = torch.arange(40)[None] + 3
    lora_logits = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert (lora_logits - _model(tiny_model_dir)(input_ids=ids).logits).abs().max() > 1e-3
    assert torch.allclose(merged(input_ids=ids).logits, lora_logits, atol=1e-5, rtol=0)


def test_training_windows_come_from_the_search_pool_only(tiny_model_dir, text_corpus_dir):
    spec = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir))
    tok = load_model(str(tiny_model_dir)).tokenizer
    docs = training_docs(spec, tok, 64)
    tokens = tokenize(load_corpus(str(text_corpus_dir)), tok)
    split = Split.make(len(tokens), 0)
    heldout = {tokens[i].tobytes() for i in split.heldout}
    assert docs and not any(d.tobytes() in heldout for d in docs)
    assert len(docs) == sum(len(tokens[i]) >= 64 for i in split.search)
    a, b = windows(docs, 64, 3, seed=0, step=5), windows(docs, 64, 3, seed=0, step=5)
    assert a.shape == (3, 64) and np.array_equal(a, b)
    assert not np.array_equal(a, windows(docs, 64, 3, seed=0, step=6))
    for row in a:  # each a contiguous slice of a search document
        assert any(row.tobytes() in d.tobytes() for d in docs)


# bfloat16: float32 masters in the checkpoint; dropout: its masks drawn again alike in a resumed step
@pytest.mark.parametrize("dtype, dropout", [("float32", 0.0), ("bfloat16", 0.0), ("float32", 0.1)])
def test_resume_from_checkpoint_equals_uninterrupted(tiny_model_dir, text_corpus_dir, tmp_path, monkeypatch, dtype,
                                                     dropout):
    if dropout:
        import shutil

        shutil.copytree(tiny_model_dir, tmp_path / "model")
        config = json.loads((tmp_path / "model" / "config.json").read_text())
        (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "attention_dropout": dropout}))
        tiny_model_dir = tmp_path / "model"
    spec = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), dtype=dtype)
    ft = FinetuneSpec(steps=6, lr=1e-2, warmup=2, checkpoint_every=2, batch_tokens=128, s2_group=16)
    ref = finetune(spec, ft, FACTORS, 64, tmp_path / "ref", tmp_path / "ref-model", progress=False)
    write = ft_mod._write_json

    def dies_at_step_5(path, data):
        write(path, data)
        if data.get("step") == 5:
            raise KeyboardInterrupt  # after step 5, the last checkpoint at 4

    monkeypatch.setattr(ft_mod, "_write_json", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        finetune(spec, ft, FACTORS, 64, tmp_path / "cut", tmp_path / "cut-model", progress=False)
    monkeypatch.setattr(ft_mod, "_write_json", write)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 4
    got = finetune(spec, ft, FACTORS, 64, tmp_path / "cut", tmp_path / "cut-model", progress=False)
    assert got["losses"] == ref["losses"] and len(got["losses"]) == 6
    a, b = load_file(tmp_path / "ref-model" / "model.safetensors"), load_file(tmp_path / "cut-model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in base)  # it trained
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["step"] == 6
    other = FinetuneSpec(**{**ft.__dict__, "lr": 2e-2})
    with pytest.raises(UserError, match="belongs to another fine-tune"):
        finetune(spec, other, FACTORS, 64, tmp_path / "cut", tmp_path / "x", progress=False)


def test_a_checkpoint_on_a_model_inside_the_run_folder_survives_the_folder_moving(tiny_model_dir,
                                                                                  text_corpus_dir, tmp_path):
    """finetune.after = [L1, L2]: ft-L2 trains RUN/models/ft-L1. Killed, then resumed after the run
    folder moved (or from a host that mounts the shared file system elsewhere), ft-L2's checkpoint
    is still its own: the model's path counts relative to the run folder (`home`)."""
    import shutil

    spec_at = lambda run: ObjectiveSpec.of(str(run / "models" / "ft-32"), str(text_corpus_dir))  # noqa: E731
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_dir, a / "models" / "ft-32")
    ft = FinetuneSpec(steps=2, checkpoint_every=2, batch_tokens=128, s2_attn=False)
    ref = finetune(spec_at(a), ft, FACTORS, 64, a / "ft-64", a / "m", progress=False, home=a)
    a.rename(b)
    again = finetune(spec_at(b), ft, FACTORS, 64, b / "ft-64", b / "m", progress=False, home=b)
    assert again["losses"] == ref["losses"] and again["fingerprint"] == ref["fingerprint"]
    with pytest.raises(UserError, match="belongs to another fine-tune"):  # outside `home`: its path counts
        finetune(spec_at(b), ft, FACTORS, 64, b / "ft-64", b / "m", progress=False, home=b / "elsewhere")


def test_passkey_mix_turns_windows_into_samples_and_leaves_mix_0_alone(text_corpus_dir):
    from longrope.objectives.finetune import training_batch
    from longrope.objectives.needle import QUESTION, NeedleBuilder

    spec = ObjectiveSpec.of("builtin:tiny-sotu", str(text_corpus_dir))  # its tokenizer has digit tokens
    tok = load_model("builtin:tiny-sotu").tokenizer
    docs, builder = training_docs(spec, tok, 96), NeedleBuilder(tok)
    plain, none = training_batch(docs, 96, 4, 0, 7)
    assert np.array_equal(plain, windows(docs, 96, 4, 0, 7)) and not none.any()
    ids, answer = training_batch(docs, 96, 4, 0, 7, builder, mix=1.0)
    assert ids.shape == answer.shape == (4, 96)
    for row, ans in zip(ids, answer, strict=True):
        text = tok.decode(row[~ans])
        key = tok.decode(row[ans]).split()
        assert text.endswith(QUESTION) and f"The pass key is {' '.join(key)}." in text
        assert ans.sum() == len(builder.answer_ids("".join(key))) and ans[-1]
    half, which = training_batch(docs, 96, 16, 0, 7, builder, mix=0.5)
    assert 0 < which.any(1).sum() < 16
    assert np.array_equal(half, training_batch(docs, 96, 16, 0, 7, builder, mix=0.5)[0])


@pytest.mark.parametrize("chunk", [1024, 7])  # one chunk; several, the last one short
def test_step_loss_adds_the_answer_tokens_loss(tiny_model_dir, chunk):
    """The loss and its gradients equal transformers' `labels=` loss (plus the answer tokens' mean
    loss) however the positions are chunked: only `chunk` positions' logits exist at once."""
    from longrope.objectives.finetune import step_loss

    model = prepare(_model(tiny_model_dir), FinetuneSpec(), FACTORS)  # the peft model a fine-tune trains
    ids = (torch.arange(2 * 40).view(2, 40) % 50) + 3
    answer = torch.zeros(2, 40, dtype=torch.bool)
    lm = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(step_loss(model, ids, answer, chunk), lm, rtol=1e-6, atol=1e-6)
    answer[1, 35:] = True
    logits = model(input_ids=ids).logits
    ans = torch.nn.functional.cross_entropy(logits[1, 34:39], ids[1, 35:40])
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad(lm + ans, params)
    got = step_loss(model, ids, answer, chunk)
    torch.testing.assert_close(got, lm + ans, rtol=1e-6, atol=1e-6)
    for g, w in zip(torch.autograd.grad(got, params), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_passkey_mix_reaches_the_training_steps(text_corpus_dir, tmp_path):
    spec = ObjectiveSpec.of("builtin:tiny-sotu", str(text_corpus_dir))
    factors = RescaleFactors.uniform(1.0, 32)
    runs = {mix: finetune(spec, FinetuneSpec(steps=2, batch_tokens=512, s2_attn=False, passkey_mix=mix),
                          factors, 128, tmp_path / f"w{mix}", tmp_path / f"m{mix}", progress=False)
            for mix in (0.0, 1.0)}
    # the same draws, the windows made samples (a repeated needle, the answer's loss added): a
    # mix the training ignored would give the same losses, the trajectory being deterministic
    assert runs[1.0]["losses"] != runs[0.0]["losses"]
    assert runs[0.0]["losses"] == finetune(spec, FinetuneSpec(steps=2, batch_tokens=512, s2_attn=False), factors,
                                           128, tmp_path / "again", tmp_path / "m-again",
                                           progress=False)["losses"]


def test_short_mix_draws_steps_from_its_own_stream():
    from longrope.objectives.finetune import is_short_step

    kinds = [is_short_step(0, k, 0.3) for k in range(400)]
    assert 0.22 < sum(kinds) / 400 < 0.38 and kinds == [is_short_step(0, k, 0.3) for k in range(400)]
    assert not any(is_short_step(0, k, 0.0) for k in range(400)) and all(is_short_step(0, k, 1.0) for k in range(9))


@pytest.mark.parametrize("batch_tokens, long_windows", [(512, 2), (0, 1)])
def test_short_steps_train_at_l0_with_the_original_rotary_and_full_attention(batch_tokens, long_windows,
                                                                             text_corpus_dir, tmp_path):
    """Seed 0 with short_mix 0.5 draws step 0 short and step 1 long. At a learning rate too small to
    move the weights, each step's loss is the untrained model's on that step's windows: at L0 with
    the original rotary (θ, λ = 1) and full attention, then at L with the factors and S2-Attn (switched back).
    A short step holds L/L0 times the long step's windows, as many tokens: with batch_tokens = 0
    (one window of L) it held one window of L0."""
    from longrope.objectives.attention import set_attention
    from longrope.objectives.finetune import is_short_step, training_batch
    from longrope.objectives.rotary import apply_factors
    from longrope.objectives.s2attn import register

    assert [is_short_step(0, k, 0.5) for k in (0, 1)] == [True, False]
    spec = ObjectiveSpec.of("builtin:tiny-sotu", str(text_corpus_dir))
    factors = RescaleFactors.uniform(4.0, 32)
    ft = FinetuneSpec(steps=2, batch_tokens=batch_tokens, s2_group=32, short_mix=0.5, lr=1e-12, warmup=0)
    rec = finetune(spec, ft, factors, 256, tmp_path / "w", tmp_path / "m", progress=False)
    assert rec["short_steps"] == 1
    loaded = load_model("builtin:tiny-sotu")
    docs = training_docs(spec, loaded.tokenizer, 256)
    with torch.no_grad():
        short = torch.from_numpy(training_batch(docs, 128, 2 * long_windows, 0, 0)[0])
        want_short = loaded.model(input_ids=short, labels=short).loss.item()
        apply_factors(loaded.model, factors)
        set_attention(loaded.model, register(32))
        long = torch.from_numpy(training_batch(docs, 256, long_windows, 0, 1)[0])
        want_long = loaded.model(input_ids=long, labels=long).loss.item()
    assert rec["losses"] == pytest.approx([want_short, want_long], rel=1e-5)
    assert abs(want_short - want_long) > 0.01  # the two kinds of step are told apart


def test_short_steps_of_a_second_finetune_run_plain_theta_not_the_first_ones_scaling(
        text_corpus_dir, tmp_path):
    """finetune.after = [L1, L2]: the second fine-tune trains ft-L1's folder, whose config carries
    L1's longrope factors and attention factor. Its short steps run the original rotary (θ, no
    scale), as the first fine-tune's did, not ft-L1's own rotary at L0 (short factors times L1's
    attention factor). At a learning rate too small to move the weights, the short step's loss is
    the plain model's."""
    from longrope.objectives.finetune import training_batch
    from longrope.objectives.models import resolve
    from longrope.runs.export import apply_to_folder

    plain, n = resolve("builtin:tiny-sotu")[0], 32
    patch = {"max_position_embeddings": 256, "original_max_position_embeddings": 128,
             "rope_scaling": {"rope_type": "longrope", "type": "longrope", "factor": 2.0,
                              "original_max_position_embeddings": 128, "attention_factor": 1.2,
                              "long_factor": [1.0 + i / 16 for i in range(n)], "short_factor": [1.0] * n}}
    (tmp_path / "ft1.json").write_text(json.dumps(patch))
    ft1 = apply_to_folder(tmp_path / "ft1.json", plain, tmp_path / "ft-256", copy=True, quiet=True)
    spec = ObjectiveSpec.of(str(ft1), str(text_corpus_dir))
    ft = FinetuneSpec(steps=1, batch_tokens=256, short_mix=1.0, lr=1e-12, warmup=0, s2_attn=False)
    rec = finetune(spec, ft, RescaleFactors.uniform(4.0, n), 512, tmp_path / "w", tmp_path / "m", progress=False)
    loaded = load_model(str(plain))  # the same weights with plain θ
    ids = torch.from_numpy(training_batch(training_docs(spec, loaded.tokenizer, 512), 128, 2, 0, 0)[0])
    with torch.no_grad():
        want = loaded.model(input_ids=ids, labels=ids).loss.item()
        own = load_model(str(ft1)).model(input_ids=ids, labels=ids).loss.item()
    assert rec["short_steps"] == 1 and rec["losses"] == pytest.approx([want], rel=1e-5)
    assert abs(own - want) > 0.01  # ft-L1's own rotary at L0 is another one


def test_norms_train_in_bfloat16_through_float32_master_weights(tiny_model_dir, text_corpus_dir, tmp_path):
    """On a GPU the model loads in bfloat16: an Adam step of ~lr on a norm weight near 1 is below
    half its bfloat16 spacing (2^-8), so stepping the bfloat16 weights themselves rounds every
    update away and the norms never train. They are stepped as float32 masters and copied back:
    four steps of 1e-3 add up past the spacing. (CPU runs bfloat16 too, which is how this runs here.)"""
    spec = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), dtype="bfloat16")
    ft = FinetuneSpec(steps=4, lr=1e-3, warmup=0, batch_tokens=128, s2_attn=False)
    finetune(spec, ft, FACTORS, 64, tmp_path / "w", tmp_path / "m", progress=False)
    tuned, base = load_file(tmp_path / "m" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    norms = [k for k in base if "norm" in k]
    assert norms and all(tuned[k].dtype == torch.bfloat16 for k in norms)
    moved = [k for k in norms if not torch.equal(tuned[k], base[k].to(torch.bfloat16))]
    assert len(moved) == len(norms), f"norms that did not train: {sorted(set(norms) - set(moved))}"


def test_lora_targets_that_name_no_linear_layer_are_refused_before_the_search(tiny_model_dir, tmp_path):
    """peft refuses only a list that matches nothing: on Phi-3's fused qkv_proj the default list
    would adapt o_proj alone, silently. Each name must be a linear layer of the model."""
    from hf_configs import tiny_config
    from longrope.objectives.finetune import check_targets

    check_targets(ObjectiveSpec.of(str(tiny_model_dir)), FinetuneSpec())  # Llama: q, k, v, o all there
    tiny_config("phi3").save_pretrained(tmp_path / "phi3")
    phi3 = ObjectiveSpec.of(str(tmp_path / "phi3"))
    with pytest.raises(UserError, match=r"lora_targets: q_proj, k_proj, v_proj name no linear layer of .* "
                                        r"\(phi3\); its linear layers: .*o_proj, qkv_proj"):
        check_targets(phi3, FinetuneSpec())
    check_targets(phi3, FinetuneSpec(lora_targets=["qkv_proj", "o_proj"]))
    # a head tied to the input embeddings (tiny-sotu, SmolLM2): its merged adapter changed them too,
    # and the saved model was not the one trained
    with pytest.raises(UserError, match="lm_head shares its weight with the input embeddings"):
        check_targets(ObjectiveSpec.of(str(tiny_model_dir)), FinetuneSpec(lora_targets=["q_proj", "lm_head"]))
    untied = json.loads((tiny_model_dir / "config.json").read_text())
    (tmp_path / "untied").mkdir()
    (tmp_path / "untied" / "config.json").write_text(json.dumps({**untied, "tie_word_embeddings": False}))
    check_targets(ObjectiveSpec.of(str(tmp_path / "untied")), FinetuneSpec(lora_targets=["q_proj", "lm_head"]))


def test_the_warm_up_is_linear_from_its_first_step_and_s2_attn_needs_two_groups(tiny_model_dir, text_corpus_dir,
                                                                               tmp_path, monkeypatch):
    """LongLoRA's schedule: step k (from 0) trains at lr·min(1, (k+1)/warmup), so step 0 is not at
    lr 0; and S2-attn over one group (group = length) is full attention: not registered."""
    spec = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir))
    seen, registered = [], []
    step = torch.optim.AdamW.step

    def recording(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    monkeypatch.setattr("longrope.objectives.s2attn.register", lambda group: registered.append(group))
    ft = FinetuneSpec(steps=3, warmup=2, lr=1e-3, batch_tokens=64, s2_attn=True, short_mix=0.0)
    monkeypatch.setattr(FinetuneSpec, "group", lambda self, length: length)
    finetune(spec, ft, FACTORS, 64, tmp_path / "w", tmp_path / "m", progress=False)
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3])
    assert registered == []


@pytest.mark.parametrize("fault, message", [
    ("nan", r"the fine-tune at 64 diverged: its loss is nan at step 3 \(the checkpoint of step 2 is kept\)"),
    ("oom", r"out of GPU memory in fine-tune step 3 at 64 tokens \(the checkpoint of step 2 is kept\): try "
            r"\[finetune\] batch_tokens = 64"),
    ("cuda-oom", r"out of GPU memory in fine-tune step 3 at 64 tokens \(the checkpoint of step 2 is kept\)"),
    ("grad", r"the fine-tune at 64 diverged: its gradients are not finite at step 3 \(the checkpoint of step 2 "
             r"is kept\)"),
])
def test_a_loss_that_diverges_or_runs_out_of_memory_stops_in_one_line(tiny_model_dir, text_corpus_dir, tmp_path,
                                                                       monkeypatch, fault, message):
    """A NaN loss, stepped, put NaN in every weight: merged, saved, and every later stage's candidates
    failed; so did a finite loss with NaN gradients; out of GPU memory was a traceback. Now one line each, the last checkpoint (finite) kept,
    no model written."""
    spec = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir))
    ft = FinetuneSpec(steps=6, lr=1e-2, warmup=2, checkpoint_every=2, batch_tokens=128, s2_group=16)
    real, calls = ft_mod.step_loss, []

    def faulty(model, ids, answer):
        calls.append(1)
        if len(calls) < 3:
            return real(model, ids, answer)
        if fault == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if fault == "cuda-oom":  # CUDA's own, outside torch's allocator
            raise RuntimeError("CUDA error: out of memory")
        if fault == "grad":  # a finite loss whose gradient is not: d/dw sqrt(0 · w) = NaN
            weight = next(p for p in model.parameters() if p.requires_grad)
            return real(model, ids, answer) + torch.sqrt(weight.sum() * 0)
        return real(model, ids, answer) * float("nan")

    monkeypatch.setattr(ft_mod, "step_loss", faulty)
    with pytest.raises(UserError, match=message):
        finetune(spec, ft, FACTORS, 64, tmp_path / "w", tmp_path / "m", progress=False)
    kept = torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=True)
    assert kept["step"] == 2 and all(torch.isfinite(t).all() for t in kept["params"].values())
    assert not (tmp_path / "m").exists()


def test_a_checkpoint_resumed_in_another_dtype_is_refused(tiny_model_dir, text_corpus_dir, tmp_path, monkeypatch):
    """A bf16 GPU's checkpoint resumed where model.dtype = "auto" trains in float32 (a V100, a CPU, a
    Ray retry on another GPU generation) went on silently in another dtype: a run unlike the
    uninterrupted one, where the search stages refuse a dtype change. One line now."""
    ft = FinetuneSpec(steps=4, lr=1e-2, warmup=2, checkpoint_every=2, batch_tokens=128, s2_group=16)
    write = ft_mod._write_json

    def dies_at_step_3(path, data):
        write(path, data)
        if data.get("step") == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft_mod, "_write_json", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        finetune(ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), dtype="float32"), ft, FACTORS, 64,
                 tmp_path / "w", tmp_path / "m", progress=False)
    monkeypatch.setattr(ft_mod, "_write_json", write)
    bf16 = ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir), dtype="bfloat16")
    with pytest.raises(UserError, match=r"checkpoint.pt trained in float32 up to step 2, and this machine trains "
                                        r"in bfloat16 \(model.dtype = 'bfloat16' here\): set \[model\] dtype"):
        finetune(bf16, ft, FACTORS, 64, tmp_path / "w", tmp_path / "m", progress=False)


def test_activation_checkpointing_is_switched_on_without_a_deprecation_warning(tiny_model_dir):
    """On a GPU the fine-tune recomputes activations in the backward pass. transformers 5.25
    renamed the switch and warned (FutureWarning) at gradient_checkpointing_enable on every
    fine-tune, until session 42; 4.57 has only that name. The LoRA model forwards it to the base."""
    import warnings

    model = prepare(_model(tiny_model_dir), FinetuneSpec(), FACTORS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ft_mod.checkpoint_activations(model)
        base = model.get_base_model()
        on = getattr(base, "is_activation_checkpointing", None)
        assert on if on is not None else base.is_gradient_checkpointing
