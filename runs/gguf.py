"""`longrope apply FACTORS.json MODEL.gguf -o OUT.gguf`: a GGUF copy that llama.cpp runs with
the factors. Tensors are copied byte for byte (quantized ones stay quantized); only the factor
tensors and a few metadata keys change.

What llama.cpp reads (ggml-org/llama.cpp; verify again when it moves):

- ggml_rope_ext's ``freq_factors`` (ggml-cpu ops.cpp, rope cache init): pair i at position p
  turns by p·θ_i / freq_factors[i], θ_i = base^(-2i/n_rot). That is transformers' inv_freq / λ_i,
  so λ is written as it is: float32, n_rot/2 values, index 0 = highest frequency (a 1-D tensor,
  so GGUF's reversed dimension order changes nothing).
- Which tensor (src/llama-model.cpp, ``llama_model::get_rope_factors``): a layer's
  ``rope_freqs`` when the model has one, else ``rope_factors_long`` when the context size
  (``-c`` per sequence, not the prompt's length) exceeds ``{arch}.rope.scaling.
  original_context_length`` (default: ``{arch}.context_length``), else ``rope_factors_short``.
  Phi3's loader reads the long/short pair. Llama's reads ``rope_freqs`` (one set, no switch),
  or the long/short pair when ``{arch}.rope.scaling.type`` is "longrope" (as MiniCPM's
  converter writes); older builds know only ``rope_freqs`` for Llama and refuse a file with
  tensors they do not load.
- ``{arch}.rope.scaling.attn_factor`` becomes hparams.rope_attn_factor, multiplied into the
  attention factor ggml_rope_ext applies to cos and sin (src/llama-context.cpp), as
  transformers applies ``attention_factor``.
- ``{arch}.rope.scaling.factor`` would divide every frequency once more (freq_scale =
  1/factor) and type "yarn" mixes in its own ramp, so every ``rope.scaling.*`` key of the input
  is dropped and only ours are written. llama.cpp has no n̂.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from longrope.spaces import DeployedFactors, UserError, check_trained_length
from longrope.spaces.files import remove_stale_temps

from .export import load_export

INSTALL = "pip install 'longrope-search[smollm2]' (or pip install gguf)"
FREQS, LONG, SHORT = "rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"
# GGUF architecture -> the form its llama.cpp loader reads: "freqs" (one rope_freqs tensor,
# the long factors at every length) or "switch" (long/short pair, chosen by -c against L0)
FORMS = {"llama": "freqs", "phi3": "switch"}
SWA = "phi3.attention.sliding_window"  # Phi-3's attention window (llama.cpp of Aug 2024 - May 2025)
LLAMA_CPP_THETA = 10000.0  # llama.cpp's RoPE base where {arch}.rope.freq_base is absent


def apply_to_gguf(factors_json: str | Path, model: str | Path, out: str | Path,
                  switch: bool = False) -> tuple[Path, list[str]]:
    """Write OUT.gguf, MODEL.gguf with the exported factors; returns (path, warnings).

    ``switch`` writes a Llama model in the long/short form (rope.scaling.type "longrope")
    instead of one ``rope_freqs`` tensor. Inputs are checked before anything is written; the
    copy goes to a temp file renamed at the end, so a crash leaves no half-written OUT."""
    gguf = _gguf()
    fj, src, dst = Path(factors_json), Path(model), Path(out)
    factors, patch = _load_export(fj)
    if not src.is_file():
        raise UserError(f"{src} is not a file (a GGUF model was expected)")
    if dst.resolve() == src.resolve():
        raise UserError(f"the output {dst} is the input model; give a new file with -o")
    if dst.exists():
        raise UserError(f"{dst} exists; remove it or give a new file with -o")
    if not dst.parent.is_dir():
        raise UserError(f"{dst.parent} is not a folder")
    try:
        reader = gguf.GGUFReader(src)
    except (ValueError, OSError, IndexError, KeyError) as e:  # KeyError: a key given twice
        raise UserError(f"{src} is not a readable GGUF file: {e}") from None

    arch = _value(reader, "general.architecture")
    if arch not in FORMS:
        raise UserError(f"{src}: llama.cpp reads per-dimension rope factors only for "
                        f"{', '.join(FORMS)} here; this GGUF's architecture is {arch!r}")
    if (_value(reader, "split.count") or 1) > 1:
        raise UserError(f"{src} is one shard of a split GGUF; merge it first (llama-gguf-split --merge)")
    n_rot = _n_rot(reader, arch)
    long = factors.long
    if n_rot is None or n_rot // 2 != len(long.lambdas):
        raise UserError(f"the factors have {len(long.lambdas)} values but {src.name} has "
                        f"{'an unknown number of' if n_rot is None else n_rot // 2} rotary frequencies "
                        f"(rope dimension {n_rot})")
    form = "switch" if switch or FORMS[arch] == "switch" else "freqs"
    L, L0 = int(patch["max_position_embeddings"]), factors.original_length
    if not L0:
        raise UserError(f"{fj} has no original_max_position_embeddings (L0)")
    # an extended GGUF (this command's own output, too) keeps its trained length here; factors of
    # another L0 or θ are refused, as `apply` to a folder and `eval` refuse them
    trained = _value(reader, f"{arch}.rope.scaling.original_context_length")
    context = _value(reader, f"{arch}.context_length")
    own = trained is None and _own_factors(reader)
    if trained is None and not own:
        trained = context
    # θ: llama.cpp's default where the key is absent (llama-model.cpp, rope_freq_base_train = 10000)
    base = _value(reader, f"{arch}.rope.freq_base")
    check_trained_length(factors, None if trained is None else int(trained),
                         LLAMA_CPP_THETA if base is None else base, str(fj), src.name)
    short = _short(factors)
    warnings = _warnings(arch, form, factors, L0)
    window = _value(reader, SWA) if arch == "phi3" else None
    if arch == "phi3" and (window is None or window < L):
        # llama-model.cpp, Aug 2024 - May 2025 (PRs #8931 to #13676): Phi-3 attends within this window
        # (2047 where the key is absent and context_length is 4096; with the copy's length, absent,
        # the file is refused). The factors were scored with no window (apply switches a config's
        # off): the copy's covers its whole context; later builds read no window for Phi-3
        warnings.append(f"{SWA} {'(absent)' if window is None else window} -> {L}: llama.cpp builds of Aug "
                        "2024 - May 2025 attend within that window, and the factors were scored with none")
    if own:
        # llama.cpp's converter writes Llama-3.1's llama3 scaling as a rope_freqs tensor and its
        # context_length as the extended 131072, with no trained length beside it
        warnings.insert(0, f"{src.name} has rope factors of its own ({own}) and does not state the "
                        f"length it was trained at (its context_length {context} is the extended one), "
                        f"so the factors' L0 = {L0} is not checked against it; they replace its {own}")

    # the new metadata: our keys replace every rope.scaling.* key and the context length
    keys: dict[str, tuple[Any, Any]] = {
        gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch): (L, gguf.GGUFValueType.UINT32),
        gguf.Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch): (L0, gguf.GGUFValueType.UINT32),
        gguf.Keys.Rope.SCALING_ATTN_FACTOR.format(arch=arch): (long.mscale, gguf.GGUFValueType.FLOAT32),
    }
    if form == "switch":
        keys[gguf.Keys.Rope.SCALING_TYPE.format(arch=arch)] = ("longrope", gguf.GGUFValueType.STRING)
    if arch == "phi3":
        keys[SWA] = (max(int(window or 0), L), gguf.GGUFValueType.UINT32)
    dropped = (f"{arch}.rope.scaling.", f"{arch}.rope.scale_linear", "GGUF.", "general.architecture")
    new_tensors = {FREQS: long.lambdas} if form == "freqs" else {LONG: long.lambdas, SHORT: short}

    remove_stale_temps(dst.parent, f".{dst.name}.")  # a copy killed mid-write (gigabytes)
    tmp, w = dst.with_name(f".{dst.name}.{os.getpid()}.tmp"), None
    try:
        w = _writer(gguf, tmp, arch, reader.endianess)
        w.data_alignment = reader.alignment
        for name, field in reader.fields.items():
            if name.startswith(dropped) or name in keys:
                continue
            w.add_key_value(name, *_as_read(src, name, field))
        for name, (value, vtype) in keys.items():
            w.add_key_value(name, value, vtype)
        copied = [t for t in reader.tensors if t.name not in (FREQS, LONG, SHORT)]
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in new_tensors.items()}
        for t in copied:
            w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        for name, a in arrays.items():
            w.add_tensor_info(name, a.shape, a.dtype, a.nbytes, gguf.GGMLQuantizationType.F32)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in copied:
            w.write_tensor_data(t.data, tensor_endianess=reader.endianess)  # the file's bytes as they are
        for a in arrays.values():
            w.write_tensor_data(a)
        w.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException as e:
        if w is not None:
            try:
                w.close()
            except OSError:
                pass
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, no permission: one line, as `apply` to a folder
            raise UserError(f"cannot write {dst}: {e.strerror or e}") from None
        raise
    return dst, warnings


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError(f"writing a GGUF needs the 'gguf' package: {INSTALL}") from None
    return gguf


def _load_export(fj: Path) -> tuple[DeployedFactors, dict[str, Any]]:
    """The export's factors, checked as `apply` checks them for a model folder, and its target."""
    factors, patch = load_export(fj)
    if not isinstance(patch.get("max_position_embeddings"), int):
        raise UserError(f"{fj} has no integer max_position_embeddings (the target length)")
    return factors, patch


def _writer(gguf, path: Path, arch: str, endianess) -> Any:
    """gguf-py's writer, but one that writes an empty metadata array: gguf-py refuses one, while
    GGUF has them (a count of 0 after the item type) and llama.cpp reads them."""

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):  # gguf-py's one packer of values
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
                return ((self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type)
                        + self._pack("Q", 0))
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch, endianess=endianess)


def _as_read(src: Path, name: str, field) -> tuple[Any, Any, Any]:
    """(value, type, item type) of a metadata field as the file holds it: strings as their bytes
    (llama.cpp does not ask for UTF-8, and contents() would decode them), an empty array's item
    type from its header (the reader lists item types only from the items)."""
    import gguf

    vtype, STRING, ARRAY = field.types[0], gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY
    if vtype == ARRAY and len(field.types) > 2:
        raise UserError(f"{src}: metadata key {name} is a nested array, which this copy cannot carry")
    if vtype == STRING:
        return bytes(field.parts[field.data[0]]), vtype, None
    if vtype != ARRAY:
        return field.contents(), vtype, None
    sub = gguf.GGUFValueType(int(field.parts[3][0]))  # [key length, key, type, item type, count, ...]
    if sub == STRING:
        return [bytes(field.parts[i]) for i in field.data], vtype, sub
    return field.contents(), vtype, sub


def _value(reader, key: str) -> Any:
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def _own_factors(reader) -> str | None:
    """The factor tensors llama.cpp would read from the input, named, or None."""
    names = [t.name for t in reader.tensors if t.name in (FREQS, LONG, SHORT)]
    return " and ".join(n.removesuffix(".weight") for n in names) or None


def _n_rot(reader, arch: str) -> int | None:
    """The rotary dimension llama.cpp uses: rope.dimension_count, else the head size."""
    n = _value(reader, f"{arch}.rope.dimension_count")
    if n is None:
        n = _value(reader, f"{arch}.attention.key_length")
    if n is None:
        emb = _value(reader, f"{arch}.embedding_length")
        heads = _value(reader, f"{arch}.attention.head_count")
        n = emb // heads if emb and isinstance(heads, int) and heads else None
    return int(n) if n else None


def _short(factors: DeployedFactors) -> tuple[float, ...]:
    """The factors up to L0: an export without short ones applies its long ones there, as `eval`
    scores it (DeployedFactors.at) and `apply` to a folder writes it (short_factor = long_factor);
    ones (plain RoPE under the long attention factor) were scored nowhere."""
    return tuple(factors.short.lambdas if factors.short else factors.long.lambdas)


def _warnings(arch: str, form: str, factors: DeployedFactors, L0: int) -> list[str]:
    out = []
    n_hats = [f.n_hat for f in (factors.long, factors.short) if f is not None]
    if any(n_hats):
        out.append(f"n̂ = {max(n_hats)}: llama.cpp has no n̂ (every position is rescaled); the GGUF "
                   "behaves as the factors with n̂ = 0")
    if form == "freqs" and _short(factors) != factors.long.lambdas:
        out.append(f"llama.cpp reads one rope_freqs tensor for {arch}, with no short/long switch: the "
                   "long factors apply at every context length, short ones "
                   "included; --gguf-switch writes the long/short pair for recent llama.cpp builds")
    if form == "switch":
        out.append(f"llama.cpp picks the long factors when the context size (-c) exceeds L0 = {L0}, "
                   "whatever the prompt's length; transformers switches on the sequence's length")
    return out
