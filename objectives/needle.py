"""Needle samples: a pass key hidden in real text, the question at the end, the answer scored.

LongRoPE's pass-key test (appendix A.1) and LongRoPE2's needle-driven
perplexity (arXiv 2502.20082, section 3.3) on real documents. A sample of
exactly L tokens is::

    [BOS] text[:i]  NEEDLE(key)  text[i:room]  QUESTION  ANSWER(key)

where i is the requested depth · room snapped to the nearest sentence end, and
the answer tokens are the sample's last tokens. Only they are scored: the
needle NLL is their mean NLL, and the pass key is retrieved when each of them is
the model's greedy choice given what precedes it (one teacher-forced forward
equals greedy decoding for an exact match).

Three bugs of the LongRoPE2 reference script are avoided by construction, each
with a test: the label column it writes and the one it reads differ (silently
scoring plain perplexity), its truncation to L cuts the answer off, and it adds
BOS twice. Here every piece is tokenized without special tokens, BOS is added
once at the front, the sample is assembled at exactly L tokens, and what is
scored is the answer span this module returns, not a column looked up by name.

Keys are digits rendered one per word (" 4 1 9 ..."): a byte-level BPE merges runs
of digits (" 41190" -> " 4", "11", "90"), which a small model copies badly. Only
digits whose " d" encodes the same way beside any other digit are used, preferring
those that are one token; a tokenizer that splits off every digit (SmolLM2,
Llama-3: " 4" is the space, then the digit) gets keys of (space, digit) pairs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from longrope.spaces import UserError, architecture_of

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
KEY_DIGITS = 5
DIGITS = "0123456789"
SENTENCE_ENDS = (".", "!", "?", "。", "！", "？")  # a needle goes in after one of these, near its depth
SNAP_WINDOW = 256  # tokens (or 5% of the text, if more) to look for one before inserting at the depth


@dataclass(frozen=True)
class NeedleSample:
    """One sample: `ids` has exactly the target length; the answer is ids[answer_at:]."""

    doc: int  # index of the source document in the pool it came from
    depth: float  # requested depth in [0, 1]
    key: str  # the digits, e.g. "41193"
    ids: tuple[int, ...]
    needle_at: int  # token index where the needle starts (after a sentence end)
    answer_at: int

    @property
    def answer(self) -> tuple[int, ...]:
        return self.ids[self.answer_at:]

    def record(self) -> dict[str, Any]:
        """What a run stores to score the same samples after a resume: where and what, and a hash
        of the sample's token ids (an edited document or another tokenizer can leave the
        positions as they were)."""
        ids = hashlib.sha256(np.asarray(self.ids, dtype=np.int64).tobytes()).hexdigest()[:16]
        return {"doc": self.doc, "depth": self.depth, "key": self.key, "needle_at": self.needle_at,
                "answer_at": self.answer_at, "length": len(self.ids), "sha256": ids}


class NeedleBuilder:
    """Builds samples for one tokenizer (pieces tokenized once, without special tokens)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token_id
        self.digits = self._key_digits()
        if len(self.digits) < 4:
            raise UserError(f"the tokenizer encodes only {len(self.digits)} digits the same way beside any "
                            "other digit; a needle key needs at least 4")
        self.question = self._tok(QUESTION)
        self._ends: set[int] | None = None

    def _key_digits(self) -> list[str]:
        """Digits d whose " d" encodes as one fixed piece beside every digit (" d e" is " d" then
        " e"), so a key's tokens are its digits' one by one; the one-token ones if 4 are."""
        piece = {d: self._tok(f" {d}") for d in DIGITS}
        fixed = [d for d in DIGITS if all(self._tok(f" {d} {e}") == piece[d] + piece[e] for e in DIGITS)]
        single = [d for d in fixed if len(piece[d]) == 1]
        return single if len(single) >= 4 else fixed

    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def sentence_ends(self) -> set[int]:
        """Token ids whose text ends a sentence ('.', '!', '?' or their full-width forms, maybe
        before whitespace)."""
        if self._ends is None:
            vocab = self.tokenizer.get_vocab().values()
            self._ends = {i for i in vocab if self.tokenizer.decode([i]).rstrip().endswith(SENTENCE_ENDS)}
        return self._ends

    def key(self, rng: np.random.Generator) -> str:
        return "".join(rng.choice(self.digits, KEY_DIGITS))

    def needle_ids(self, key: str) -> list[int]:
        return self._tok(NEEDLE.format(key=" ".join(key)))

    def answer_ids(self, key: str) -> list[int]:
        return self._tok(" " + " ".join(key))

    def build(self, doc_ids: np.ndarray, length: int, depth: float, key: str, doc: int = 0) -> NeedleSample:
        """`doc_ids`: a document's token ids (a leading BOS is dropped), at least `length` long."""
        if not 0.0 <= depth <= 1.0:
            raise UserError(f"needle depth must be in [0, 1], got {depth}")
        filler = [int(t) for t in doc_ids]
        if self.bos is not None and filler and filler[0] == self.bos:
            filler = filler[1:]
        head = [self.bos] if self.bos is not None else []
        needle, answer = self.needle_ids(key), self.answer_ids(key)
        room = length - len(head) - len(needle) - len(self.question) - len(answer)
        if room < 1:
            raise UserError(f"a needle sample needs more than {length - room} tokens; got length {length}")
        if len(filler) < room:
            raise UserError(f"document {doc} has {len(filler)} tokens; a needle sample at {length} "
                            f"needs {room}")
        filler = filler[:room]
        i = self.snap(filler, round(depth * room))
        ids = head + filler[:i] + needle + filler[i:] + self.question + answer
        assert len(ids) == length
        return NeedleSample(doc, depth, key, tuple(ids), len(head) + i, length - len(answer))

    def snap(self, filler: list[int], target: int) -> int:
        """The insertion point nearest `target` that follows a sentence end (or is an end of
        the text); ties go to the earlier point. None within SNAP_WINDOW (text without sentence
        ends: a transcript, Chinese without 。 in its vocabulary): `target` itself, or every depth
        became 0 or 1. The window keeps builtin:sotu's samples (its widest gap: 217 tokens)."""
        ends = self.sentence_ends()
        cuts = [0] + [j + 1 for j, t in enumerate(filler) if t in ends] + [len(filler)]
        best = min(cuts, key=lambda c: (abs(c - target), c))
        return best if abs(best - target) <= max(SNAP_WINDOW, len(filler) // 20) else target


def depths(count: int) -> list[float]:
    """`count` depths evenly spread over [0, 1] (one sample at 0.5 when count = 1)."""
    return [0.5] if count == 1 else [k / (count - 1) for k in range(count)]


def make_samples(builder: NeedleBuilder, docs: list[np.ndarray], length: int, count: int,
                 seed: int, per_depth: int = 1, pool: str = "search") -> list[NeedleSample]:
    """`per_depth` samples at each of `count` evenly spread depths; sample k (depth-major) comes
    from document k mod len(docs) and its key from (seed, length, k), or (seed, length, k, 1)
    for the held-out pool: deterministic, whatever process builds them. The held-out keys are
    their own, so a held-out score is not taken on the keys a search chose its factors on (at
    the same depths they were)."""
    if pool not in ("search", "heldout"):
        raise ValueError(f"pool must be 'search' or 'heldout', got {pool!r}")
    out = []
    for j, depth in enumerate(depths(count)):
        for r in range(per_depth):
            k = j * per_depth + r
            rng = np.random.default_rng([seed, length, k] + ([1] if pool == "heldout" else []))
            d = k % len(docs)
            out.append(builder.build(docs[d], length, depth, builder.key(rng), doc=d))
    return out


def score_needle(model: Any, rotary: Any, factors: Any, samples: list[NeedleSample],
                 threshold: Any = None) -> Any:
    """A candidate's needle perplexity exp(mean answer NLL) over `samples`, with the exact early
    abort of document perplexity (answer NLLs are >= 0 too); extra["passkey"] is the fraction
    of samples whose key greedy decoding retrieves, extra["by_depth"] that fraction per depth and
    extra["ppl_by_depth"] the needle perplexity per depth."""
    from .perplexity import each, score_items

    out = score_items(rotary, factors, samples, len(samples[0].ids), threshold, "samples",
                      each(lambda s: (*answer_scores(model, s), len(s.ids))))
    if out.ok:
        exact = out.extra.pop("side")
        out.extra["passkey"] = sum(exact) / len(exact)
        by: dict[float, list[tuple[bool, float]]] = {}
        for s, e, nll in zip(samples, exact, out.doc_nll, strict=True):
            by.setdefault(s.depth, []).append((e, nll))
        out.extra["by_depth"] = {d: sum(e for e, _ in v) / len(v) for d, v in by.items()}
        out.extra["ppl_by_depth"] = {d: math.exp(sum(n for _, n in v) / len(v)) for d, v in by.items()}
    return out


def answer_scores(model: Any, sample: NeedleSample) -> tuple[float, bool]:
    """(mean NLL of the answer tokens, whether greedy decoding would produce the answer).

    One forward; the LM head runs only at the positions that predict the answer."""
    import torch

    from .headnll import logit_scales, nll_of, postprocess

    arch = architecture_of(model.config)
    decoder, head = getattr(model, arch.decoder), getattr(model, arch.head)
    device = next(model.parameters()).device
    x = torch.as_tensor(sample.ids, dtype=torch.long, device=device)[None]
    with torch.no_grad():
        hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[0]
        at = slice(sample.answer_at - 1, len(sample.ids) - 1)  # positions predicting the answer
        logits = postprocess(head(hidden[at]).float(), *logit_scales(arch, model.config))
        target = x[0, sample.answer_at:]
        nll = nll_of(logits, target)
        exact = bool((logits.argmax(-1) == target).all())
    value = float(nll.mean())
    return (value if math.isfinite(value) else math.inf), exact
