import json

import numpy as np
import pytest
import transformers

from longrope.objectives.data import Split, load_corpus, tokenize
from longrope.objectives.models import load_model
from longrope.objectives.specs import ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.spaces import UserError, method


def test_split_is_deterministic_and_disjoint():
    a, b = Split.make(50, 3), Split.make(50, 3)
    assert a == b and not set(a.search) & set(a.heldout)
    assert sorted(a.search + a.heldout) == list(range(50))
    assert Split.make(50, 4) != a


def test_take_reports_counts_and_longest():
    toks = [np.arange(n) for n in (10, 50, 60, 70)]
    sp = Split((0, 1, 2), (3,))
    assert [len(d) for d in sp.take("search", toks, 50, 2)] == [50, 50]
    with pytest.raises(UserError, match="only 1 of the 3 search documents reach 55 tokens.*longest has 60"):
        sp.take("search", toks, 55, 3)


def test_token_cache_hit_is_identical(tiny_model_dir, text_corpus_dir, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    corpus = load_corpus(str(text_corpus_dir))
    first = tokenize(corpus, tok, tmp_path)
    assert list(tmp_path.glob("tokens/*.npz"))
    again = tokenize(corpus, tok, tmp_path)
    assert len(first) == 12 and all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert all(x[0] == tok.bos_token_id for x in first)


def test_corpus_sources(tmp_path, text_corpus_dir):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": f"text {i}"}) for i in range(3)))
    assert len(load_corpus(str(tmp_path / "d.jsonl"), text_column="body").texts) == 3
    with pytest.raises(UserError, match="has no column 'text'; columns: body"):
        load_corpus(str(tmp_path / "d.jsonl"))
    (tmp_path / "lines.txt").write_text("one\ntwo\n\nthree\n")
    assert load_corpus(str(tmp_path / "lines.txt"), per_line=True).texts == ("one", "two", "three")
    sotu = load_corpus("builtin:sotu")
    assert len(sotu.texts) == 79 and all(int(i[:4]) % 3 == 0 for i in sotu.ids)
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(str(tmp_path / "nope"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="no non-empty documents"):
        load_corpus(str(tmp_path / "empty.txt"))


def test_model_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no rotary position embedding"):
        load_model(str(tmp_path))
    (tmp_path / "x.gguf").write_bytes(b"not a gguf")
    with pytest.raises(UserError, match="cannot read the GGUF file"):
        load_model(str(tmp_path / "x.gguf"))


def test_evaluator_scores_and_explains_too_few_docs(tiny_model_dir, text_corpus_dir):
    ev = Evaluator(ObjectiveSpec.of(str(tiny_model_dir), str(text_corpus_dir),
                                 search_docs=2, heldout_docs=2))
    g = ev.geometry
    assert (g.original_length, g.n_freqs) == (32, 8)
    a = ev.evaluate(method("none", g, 128), 128)
    b = ev.evaluate(method("pi", g, 128), 128)
    assert a.ok and b.ok and a.ppl != b.ppl and a.tokens == 2 * 128
    assert ev.evaluate(method("none", g, 128), 128).ppl == a.ppl  # switching back is exact
    with pytest.raises(UserError, match="reach 10000000 tokens"):
        ev.evaluate(method("none", g, 128), 10_000_000)


def test_jsonl_rows_without_text_are_counted_not_dropped_silently(tmp_path, capsys):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"text": "kept"}\n{"body": "no text"}\n{"text": "also kept"}\n')
    corpus = load_corpus(str(p))
    assert corpus.texts == ("kept", "also kept")
    assert "1 of 3 rows have no text 'text'; skipped" in capsys.readouterr().err
    (tmp_path / "none.jsonl").write_text('{"text": null}\n{"text": 3}\n')
    with pytest.raises(UserError, match="none of its 2 rows has a text 'text'"):
        load_corpus(str(tmp_path / "none.jsonl"))


def test_token_cache_writers_use_their_own_temp_files(tmp_path, tiny_model_dir, monkeypatch):
    """Two workers warming one cold cache: each writes its own temp file, then renames."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir))
    corpus = load_corpus("builtin:sotu")
    names = []
    real_savez = np.savez

    def spy(file, **arrays):
        names.append(str(file))
        real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", spy)
    first = tokenize(corpus, tok, tmp_path)
    (cache,) = (tmp_path / "tokens").glob("*.npz")
    cache.unlink()
    tokenize(corpus, tok, tmp_path)
    assert len(names) == 2 and names[0] != names[1]  # not one shared KEY.tmp.npz
    assert [t.tolist() for t in tokenize(corpus, tok, tmp_path)] == [t.tolist() for t in first]
    assert not list((tmp_path / "tokens").glob("*.tmp*"))


def test_loading_an_export_is_quiet_about_vllms_keys_but_not_others(tiny_model_dir, tmp_path):
    """Our exports write vLLM's long_mscale/short_mscale on purpose: transformers' "Unrecognized
    keys" line for them is dropped; any other unknown rope key is still reported."""
    import logging

    from longrope.objectives.models import read_config

    class Lines(logging.Handler):  # on the logger transformers' rope validation writes to
        def emit(self, record):
            seen.append(record.getMessage())

    base = json.loads((tiny_model_dir / "config.json").read_text())
    n = base["hidden_size"] // base["num_attention_heads"] // 2
    rope = {"rope_type": "longrope", "type": "longrope", "long_factor": [2.0] * n, "short_factor": [1.0] * n,
            "factor": 4.0, "original_max_position_embeddings": 32, "long_mscale": 1.1, "short_mscale": 1.0}
    logger, handler = logging.getLogger("transformers.modeling_rope_utils"), Lines()
    logger.addHandler(handler)
    try:
        for extra, loud in (({}, False), ({"bogus_key": 1}, True)):
            folder, seen = tmp_path / f"loud-{loud}", []
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps({**base, "max_position_embeddings": 128,
                                                            "rope_scaling": {**rope, **extra}}))
            read_config(folder, None)
            assert any("Unrecognized keys" in m for m in seen) == loud, seen  # kept when bogus_key is named
    finally:
        logger.removeHandler(handler)


def test_a_gguf_file_edited_in_place_converts_afresh(tmp_path, monkeypatch):
    """The dequantized folder is keyed by path, size and mtime: an edit of one metadata value
    keeps the size, and reused the old conversion (the old θ or L0) when only size was keyed."""
    import os

    from longrope.objectives.models import gguf_cache

    monkeypatch.setenv("LONGROPE_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF" + bytes(60))
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    first = gguf_cache(p)
    assert gguf_cache(p) == first  # the same file: the same folder
    p.write_bytes(b"GGUF" + bytes(59) + b"\x01")  # same size, new bytes
    os.utime(p, ns=(2_000_000_000, 2_000_000_000))
    assert gguf_cache(p) != first


def test_flash_attention_in_float32_is_refused_at_load(tiny_model_dir, monkeypatch):
    """dtype auto resolves to float32 on a CPU (and for "float32" anywhere): transformers only
    warns, and flash-attn raised at every forward; refused in one line before the weights load,
    as is a GPU older than Ampere (a V100, a T4)."""
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn"
                        else find(name, *a))
    with pytest.raises(UserError, match=r"runs in bfloat16 or float16, not float32 \(on cpu\)"):
        load_model(str(tiny_model_dir), "auto", "cpu", "flash_attention_2")
    # a GPU older than Ampere: transformers loads flash-attn 2 there, and every forward raised
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(UserError, match=r"needs an Ampere or newer GPU \(compute capability 8.0\+\); Tesla "
                                        r"V100-SXM2-16GB is 7.0: set attention = 'sdpa'"):
        load_model(str(tiny_model_dir), "float16", "cuda", "flash_attention_2")


def test_a_model_fingerprint_knows_a_copy_and_tells_other_weights_apart(tmp_path, tiny_model_dir):
    """What `resume --model NEW` takes a moved model by: a copy reads the same; a byte changed at
    a weight file's end (its last tensor), or config.json edited, reads otherwise."""
    import shutil

    from longrope.objectives.models import fingerprint

    shutil.copytree(tiny_model_dir, tmp_path / "copy")
    fp = fingerprint(str(tiny_model_dir))
    assert fp is not None and fingerprint(str(tmp_path / "copy")) == fp
    (weights,) = (tmp_path / "copy").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint(str(tmp_path / "copy")) != fp
    shutil.copytree(tiny_model_dir, tmp_path / "edited")
    cfg = tmp_path / "edited" / "config.json"
    cfg.write_text(cfg.read_text().replace('"rope_theta": 10000.0', '"rope_theta": 20000.0'))
    assert cfg.read_text() != (tiny_model_dir / "config.json").read_text()
    assert fingerprint(str(tmp_path / "edited")) != fp
    assert fingerprint("builtin:tiny-sotu") is None and fingerprint(str(tmp_path / "nowhere")) is None
