"""Needle samples: where the key is, what is scored, and the reference script's bugs avoided."""

import json
import math

import numpy as np
import pytest
import torch
import transformers

from longrope.objectives.data import load_corpus, tokenize
from longrope.objectives.needle import NeedleBuilder, answer_scores, depths, make_samples
from longrope.spaces import UserError


@pytest.fixture(scope="module")
def tok():
    from importlib.resources import files

    return transformers.AutoTokenizer.from_pretrained(str(files("longrope.objectives") / "builtin/tiny-sotu"))


@pytest.fixture(scope="module")
def docs(tok):
    ids = tokenize(load_corpus("builtin:sotu"), tok)
    return [d for d in ids if len(d) >= 1024][:4]


def test_sample_layout(tok, docs):
    b = NeedleBuilder(tok)
    s = b.build(docs[0], 512, 0.5, "41193", doc=0)
    assert len(s.ids) == 512
    assert s.ids.count(tok.bos_token_id) == 1 and s.ids[0] == tok.bos_token_id  # BOS once, in front
    assert list(s.answer) == b.answer_ids("41193") and s.answer_at == 512 - len(s.answer)  # answer last, whole
    text = tok.decode(s.ids[s.needle_at:s.needle_at + len(b.needle_ids("41193"))])
    assert text == " The pass key is 4 1 1 9 3. Remember it. 4 1 1 9 3 is the pass key."
    assert tok.decode(s.ids[s.answer_at - len(b.question):s.answer_at]) == " What is the pass key? The pass key is"
    assert s.ids[s.needle_at - 1] in b.sentence_ends()  # the needle follows a sentence end


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_depth_is_where_it_claims(tok, docs, depth):
    b = NeedleBuilder(tok)
    s = b.build(docs[1], 1024, depth, "12345")
    room = 1024 - 1 - len(b.needle_ids("12345")) - len(b.question) - len(b.answer_ids("12345"))
    filler = list(docs[1][1:room + 1])
    cuts = [0] + [j + 1 for j, t in enumerate(filler) if t in b.sentence_ends()] + [room]
    nearest = min(abs(c - depth * room) for c in cuts)
    assert abs((s.needle_at - 1) - depth * room) == pytest.approx(nearest, abs=0.5)


@pytest.mark.parametrize("depth", [0.25, 0.5, 0.75])
def test_text_without_sentence_ends_takes_the_needle_at_its_depth(tok, docs, depth):
    """Cuts only at 0 and the end (a transcript without . ! ?): every depth below 0.5 went to the
    start and every one above to the end, while the tables named the depth asked for."""
    b = NeedleBuilder(tok)
    plain = np.array([t for t in docs[2] if t not in b.sentence_ends()])
    s = b.build(plain, 2048, depth, "12345")
    room = 2048 - 1 - len(b.needle_ids("12345")) - len(b.question) - len(b.answer_ids("12345"))
    assert s.needle_at - 1 == round(depth * room)


def test_keys_use_single_token_digits_and_samples_are_deterministic(tok, docs):
    b = NeedleBuilder(tok)
    assert "0" not in b.digits and len(b.digits) >= 4  # ' 0' is two tokens in this BPE
    a = make_samples(b, docs, 512, 6, seed=3)
    assert a == make_samples(NeedleBuilder(tok), docs, 512, 6, seed=3)
    assert [s.key for s in a] != [s.key for s in make_samples(b, docs, 512, 6, seed=4)]
    assert [s.depth for s in a] == depths(6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert [s.doc for s in a] == [0, 1, 2, 3, 0, 1]
    assert all(len(b.answer_ids(s.key)) == len(s.key) for s in a)  # one token per digit
    # the search pool's keys are (seed, length, k)'s, as runs recorded them; the held-out pool's
    # are their own: a held-out score is not taken on the keys the search chose factors on
    assert [s.key for s in a] == [b.key(np.random.default_rng([3, 512, k])) for k in range(6)]
    held = make_samples(b, docs, 512, 6, seed=3, pool="heldout")
    assert [s.depth for s in held] == [s.depth for s in a] and [s.doc for s in held] == [s.doc for s in a]
    assert not {(s.depth, s.key) for s in held} & {(s.depth, s.key) for s in a}
    with pytest.raises(ValueError, match="pool must be"):
        make_samples(b, docs, 512, 6, seed=3, pool="held-out")


@pytest.fixture(scope="module")
def split_digits_tok():
    """A byte-level BPE that splits off every digit, as SmolLM2's and Llama-3's do: ' 4' is two
    tokens (the space, then the digit) and no single-token digit exists."""
    from tiny_models import sotu_texts
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(sotu_texts(3), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>")


def test_a_tokenizer_that_splits_off_digits_gets_keys_of_space_digit_pairs(split_digits_tok, docs, tok):
    t = split_digits_tok
    assert all(len(t(f" {d}", add_special_tokens=False)["input_ids"]) == 2 for d in "0123456789")
    b = NeedleBuilder(t)
    assert b.digits == list("0123456789")
    assert b.answer_ids("4107") == sum((t(f" {d}", add_special_tokens=False)["input_ids"] for d in "4107"), [])
    doc = t(tok.decode(docs[0][1:]), add_special_tokens=False)["input_ids"]
    s = b.build(doc, 256, 0.5, "41093")
    assert len(s.ids) == 256 and len(s.answer) == 10 and t.decode(list(s.answer)) == " 4 1 0 9 3"
    text = t.decode(s.ids[s.needle_at:s.needle_at + len(b.needle_ids("41093"))])
    assert text == " The pass key is 4 1 0 9 3. Remember it. 4 1 0 9 3 is the pass key."


def test_a_digit_that_merges_with_its_neighbour_is_left_out():
    """A BPE with no pre-tokenizer that learnt ' 1' + ' 2' -> ' 1 2': key 12 would be one token, not
    the needle's digits one by one, so 1 is left out (2 composes with every digit after it)."""
    from tokenizers import Tokenizer, models

    digits = list("0123456789")
    pieces = ["<s>", " ", *digits, *(f" {d}" for d in digits), " 1 2"]
    merges = [(" ", d) for d in digits] + [(" 1", " 2")]
    t = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<s>"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>")
    assert len(fast(" 1 2", add_special_tokens=False)["input_ids"]) == 1
    b = NeedleBuilder(fast)
    assert b.digits == [d for d in digits if d != "1"]
    assert all(len(b.answer_ids(k)) == 5 for k in ("20934", "22222", "98765"))


def test_too_short_is_a_clear_error(tok, docs):
    with pytest.raises(UserError, match="needs more than"):
        NeedleBuilder(tok).build(docs[0], 30, 0.5, "12345")


def test_only_the_answer_is_scored(tok, docs):
    from importlib.resources import files

    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(files("longrope.objectives") / "builtin/tiny-sotu"), dtype=torch.float32).eval()
    s = NeedleBuilder(tok).build(docs[2], 256, 0.3, "73519")
    nll, exact = answer_scores(m, s)
    with torch.no_grad():
        logits = m(torch.tensor([s.ids])).logits[0].float()
    target = torch.tensor(s.answer)
    pred = logits[s.answer_at - 1:-1]
    ref = torch.nn.functional.cross_entropy(pred, target).item()
    assert nll == pytest.approx(ref, abs=1e-4)
    assert exact == bool((pred.argmax(-1) == target).all())
    whole = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(s.ids[1:])).item()
    assert abs(whole - nll) > 1e-3  # not the plain perplexity of the sample


def test_eval_task_json_shapes(tmp_path, capsys):
    from longrope.search.cli import main

    base = ["eval", "--lengths", "128,256", "--methods", "none,yarn", "--samples", "1", "--json"]
    out = {}
    for task in ("ppl", "needle", "passkey"):
        assert main(base + ["--task", task]) == 0
        out[task] = json.loads(capsys.readouterr().out)
        assert set(out[task]) == {"none", "yarn"} and set(out[task]["none"]) == {"128", "256"}
    assert all(0 <= v <= 1 for r in out["passkey"].values() for v in r.values())
    assert all(v > 1 for r in out["needle"].values() for v in r.values())
    assert out["needle"] != out["ppl"]  # the answer tokens only, not the documents
    png = tmp_path / "heat.png"
    assert main(base + ["--task", "passkey", "--depths", "3", "--plot", str(png)]) == 0
    out_err = capsys.readouterr()
    by_depth = json.loads(out_err.out)
    assert set(by_depth["yarn"]["256"]) == {"0.0", "0.5", "1.0"} and png.stat().st_size > 1000
    assert f"wrote {png}" in out_err.err  # where the heatmap went
    assert main(base + ["--task", "needle", "--depths", "3"]) == 0  # needle: perplexity per depth
    needle = json.loads(capsys.readouterr().out)
    assert set(needle["yarn"]["256"]) == {"0.0", "0.5", "1.0"} and min(needle["yarn"]["256"].values()) > 1
    assert needle != by_depth  # before: the pass-key accuracies under the needle task's name
    assert main(base + ["--depths", "3"]) == 2  # depths go with needle/passkey
    assert "go with --task needle or passkey" in capsys.readouterr().err
    assert main(base + ["--task", "needle", "--plot", str(png)]) == 2  # the heatmap is accuracy's
    assert "--plot draws pass-key accuracy" in capsys.readouterr().err


def test_needle_score_aborts_exactly_like_perplexity(tok, docs):
    """The early abort's bound holds for answer NLLs too: a pruned candidate's bound is below its
    full score and a candidate under the threshold is never pruned."""
    from importlib.resources import files

    from longrope.objectives.needle import score_needle
    from longrope.objectives.rotary import patch_model
    from longrope.spaces import RopeGeometry, method

    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(files("longrope.objectives") / "builtin/tiny-sotu"), dtype=torch.float32).eval()
    g = RopeGeometry.from_config(m.config)
    rot = patch_model(m, g)
    samples = make_samples(NeedleBuilder(tok), docs, 256, 4, seed=0)
    full = score_needle(m, rot, method("none", g, 256), samples)
    assert full.ok and len(full.doc_nll) == 4 and set(full.extra["by_depth"]) == set(depths(4))
    per_depth = full.extra["ppl_by_depth"]  # one sample per depth: their geometric mean is the whole
    assert set(per_depth) == set(depths(4)) and len(set(per_depth.values())) == 4
    assert math.exp(sum(math.log(p) for p in per_depth.values()) / 4) == pytest.approx(full.ppl, rel=1e-9)
    cut = score_needle(m, rot, method("none", g, 256), samples, threshold=full.ppl ** 0.5)
    assert cut.status == "pruned" and cut.ppl <= full.ppl and len(cut.doc_nll) < 4
    assert score_needle(m, rot, method("none", g, 256), samples, threshold=full.ppl * 1.01).ok


def test_a_method_whose_every_evaluation_failed_is_said_in_the_depth_table_and_left_out_of_the_plot(tmp_path):
    """--depths printed a header with no rows and never the reason; --plot crashed in imshow([])."""
    from types import SimpleNamespace

    from longrope.objectives.evaluate import plot_depths, render

    ok = SimpleNamespace(ok=True, extra={"by_depth": {0.0: 1.0, 1.0: 0.5}, "passkey": 0.75}, reason="")
    bad = SimpleNamespace(ok=False, extra={}, reason="non-finite NLL")
    results = {"yarn": {256: ok, 512: ok}, "huge": {256: bad, 512: bad}}
    table = render(results, False, "passkey", by_depth=True)
    assert "| all | failed (non-finite NLL) | failed (non-finite NLL) |" in table
    # and the aggregate over the depths, what a search ranks by
    assert "| 1.00 | 0.50 | 0.50 |\n| all | 0.75 | 0.75 |" in render(results, False, "passkey", by_depth=True)
    needle = SimpleNamespace(ok=True, ppl=2.5, extra={"ppl_by_depth": {0.0: 3.0, 1.0: 2.0}}, reason="")
    assert "| all | 2.50 |" in render({"yarn": {256: needle}}, False, "needle", by_depth=True)
    plot_depths(results, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(UserError, match="every evaluation failed"):
        plot_depths({"huge": results["huge"]}, str(tmp_path / "q.png"))


def test_eval_json_has_the_shapes_its_help_names():
    """`eval --json`: {"method": {"length": value}}, value {"ppl", "tail"} with --tail, a depth table
    with --depths, null for a failed evaluation (what `longrope eval --help` promises)."""
    from types import SimpleNamespace

    from longrope.objectives.evaluate import as_json

    ok = SimpleNamespace(ok=True, ppl=2.5, extra={"tail_ppl": 3.0, "passkey": 0.5,
                                                   "by_depth": {0.0: 1.0, 1.0: 0.0}}, reason="")
    bad = SimpleNamespace(ok=False, extra={}, reason="non-finite NLL")
    results = {"yarn": {256: ok, 512: bad}}
    assert json.loads(as_json(results, False)) == {"yarn": {"256": 2.5, "512": None}}
    assert json.loads(as_json(results, True)) == {"yarn": {"256": {"ppl": 2.5, "tail": 3.0}, "512": None}}
    assert json.loads(as_json(results, False, "passkey")) == {"yarn": {"256": 0.5, "512": None}}
    assert json.loads(as_json(results, False, "passkey", by_depth=True)) == \
        {"yarn": {"256": {"0.0": 1.0, "1.0": 0.0}, "512": None}}


def test_a_special_tokens_text_in_a_document_is_text_and_bos_comes_once(tok, tmp_path):
    """A document that begins with the BOS text ('<s>') was [BOS, BOS, ...] for perplexity and its
    needle sample kept one of them past the front; a quoted '</s>' mid-document was an end of text."""
    from longrope.objectives.data import Corpus

    texts = ("<s> We meet again. " * 120, "Words. </s> More words, and <s> here. " * 60)
    corpus = Corpus("test:special", ("a", "b"), texts)
    for ids in (tokenize(corpus, tok), tokenize(corpus, tok, tmp_path), tokenize(corpus, tok, tmp_path)):
        for d in ids:
            assert d[0] == tok.bos_token_id and not set(d[1:].tolist()) & set(tok.all_special_ids)
    s = NeedleBuilder(tok).build(ids[0], 512, 0.5, "41193")
    assert s.ids.count(tok.bos_token_id) == 1 and s.ids[0] == tok.bos_token_id
    assert tok.decode(ids[1][1:40]).startswith("Words. </s> More words, and <s> here.")


def test_snap_ties_go_to_the_earlier_sentence_end_and_samples_cycle_through_the_documents():
    from types import SimpleNamespace

    b = NeedleBuilder.__new__(NeedleBuilder)
    b._ends = {9}
    assert b.snap([1, 9, 1, 9, 1, 1, 1, 1, 1, 1], 3) == 2  # cuts 0, 2, 4, 10: 2 and 4 tie, as documented
    builder = SimpleNamespace(key=lambda rng: "12345", build=lambda ids, length, depth, key, doc: doc)
    # per_depth 2 over 3 documents: document k mod 3 for sample k (all of one depth took one document)
    assert make_samples(builder, [[0], [1], [2]], 64, count=2, seed=0, per_depth=2) == [0, 1, 2, 0]
