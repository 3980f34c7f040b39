"""Model loading: a Hugging Face folder, a GGUF file, or a ``builtin:`` name.

A GGUF file is dequantized once into a safetensors folder under the cache
(``models/gguf/<stem>-<key>``, keyed by its path, size and mtime); later loads
read that folder, as for builtin:smollm2-135m.

The config is read first (no weights), so a path that is not a model, an
architecture transformers does not know, or a model without RoPE fails in one
line before anything heavy happens; so does a type the architecture table
(longrope.spaces.architectures) does not admit. Scoring wants
``use_cache=False`` and no sliding window (Mistral's window would hide the
long context we are scoring). A config marked ``position_encoding = "alibi"`` (the
ALiBi twin, objectives/alibi.py) loads as its Llama body and is converted to ALiBi.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from longrope.spaces import RopeGeometry, UserError, architecture_of, is_alibi, reraise_interrupt

from .alibi import convert
from .cache import cache_root
from .headnll import set_kind
from .smollm2 import convert as dequantize
from .smollm2 import ensure_converted, is_converted, with_top_level_theta

BUILTIN_MODELS = ("tiny-sotu", "tiny-sotu-alibi", "smollm2-135m")

# vLLM's longrope keys, which our exports and fine-tuned folders write on purpose (runs/export.py)
VLLM_ROPE_KEYS = {"long_mscale", "short_mscale"}


class _QuietVllmKeys(logging.Filter):
    """transformers' rope validation logs "Unrecognized keys in `rope_parameters`" (4.57:
    `rope_scaling`) for vLLM's two keys on every load of an exported or fine-tuned folder; drop
    that line when they are the only ones named, so a truly unknown key still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not msg.startswith("Unrecognized keys in `rope_"):
            return True
        return not set(re.findall(r"'(\w+)'", msg.split(":", 1)[-1])) <= VLLM_ROPE_KEYS


logging.getLogger("transformers.modeling_rope_utils").addFilter(_QuietVllmKeys())


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    geometry: RopeGeometry
    name: str
    device: str
    dtype: str
    alibi: bool = False  # an ALiBi twin (objectives/alibi.py): no rotary, nothing to rescale


def resolve(spec: str, convert: bool = True, what: str = "model path") -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model spec. A GGUF file resolves to its converted
    folder, converting it first when `convert` (else to the file while it is not converted).
    `what` names the path in the error for one that does not exist."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name in ("tiny-sotu", "tiny-sotu-alibi"):
            return Path(str(files("longrope.objectives").joinpath(f"builtin/{name}"))), None
        if name == "smollm2-135m":
            return ensure_converted(), None
        raise UserError(f"unknown builtin model {spec!r}; builtins: "
                        + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{path} is a file but not .gguf; give a model folder or a GGUF file")
        return from_gguf(path, convert)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: not a Hugging Face model folder")
    return path, None


WEIGHTS = ("config.json", "*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")


def fingerprint(spec: str, chunk: int = 1 << 20) -> str | None:
    """What a model folder (or GGUF file) is known by when it moves: its config.json and each
    weight file's name, size and first and last MiB (a safetensors file begins with every
    tensor's name, dtype, shape and offset; a GGUF file with its metadata). Hashing the whole
    weights would take minutes for a large model at each resume; a copy that differs only inside
    a tensor's middle passes, which is what a copy of the same model looks like.
    None for a builtin, the synthetic objective, or a path this machine does not see."""
    path = Path(spec).expanduser()
    if spec.startswith(("builtin:", "synthetic")) or not path.exists():
        return None
    files_ = [path] if path.is_file() else sorted({f for g in WEIGHTS for f in path.glob(g) if f.is_file()})
    h = hashlib.sha256()
    for f in files_:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(chunk)
            fh.seek(max(size - chunk, 0))
            tail = fh.read(chunk)
        name = "" if path.is_file() else str(f.relative_to(path))  # a GGUF file may be renamed
        h.update(f"{name}|{size}|".encode() + hashlib.sha256(head + tail).digest())
    return h.hexdigest()[:32]


def gguf_cache(path: Path) -> Path:
    """Where a GGUF file's dequantized folder lives: keyed by its absolute path, size and mtime,
    so an edited or replaced file converts afresh."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "models" / "gguf" / f"{path.stem}-{key}"


def from_gguf(path: Path, convert: bool = True) -> tuple[Path, str | None]:
    """A GGUF model's converted folder: dequantized once (smollm2.convert), after its config
    has been read and its architecture admitted, so a bad file fails before the slow part."""
    out = gguf_cache(path)
    if is_converted(out):
        return with_top_level_theta(out), None
    if not convert:
        return path.parent, path.name
    architecture_of(read_config(path.parent, path.name))
    try:
        return dequantize(path, out), None
    except UserError:
        raise
    except Exception as e:
        reraise_interrupt(e)  # a Ctrl-C inside an extension's import
        raise UserError(f"cannot convert the GGUF file {path}: {_first_line(e)}") from None


def full_attention(config: Any) -> None:
    """No layer keeps a sliding window: Qwen2's use_sliding_window marks layers sliding_attention
    in layer_types, whose mask then needs the window just switched off (every forward raised).
    `apply` does the same to the JSON it writes (runs/export.py)."""
    if getattr(config, "use_sliding_window", False):
        config.use_sliding_window = False
    types = getattr(config, "layer_types", None)
    if types:
        config.layer_types = ["full_attention" if t == "sliding_attention" else t for t in types]


def gguf_scaling(spec: str) -> str | None:
    """What rope scaling of its own a GGUF model carries, which transformers' GGUF loader drops
    (it maps rope.freq_base alone): a rope_freqs tensor (Llama-3.1's, an applied export's) or
    rope.scaling keys. None for a folder, a builtin, or a GGUF without any."""
    path = Path(spec).expanduser()
    if not (spec.lower().endswith(".gguf") and path.is_file()):
        return None
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        field = reader.get_field("general.architecture")
        arch = field.contents() if field is not None else ""
        kind, factor, linear = (reader.get_field(f"{arch}.rope.{k}")
                                for k in ("scaling.type", "scaling.factor", "scale_linear"))
        kind, factor, linear = (f.contents() if f is not None else None for f in (kind, factor, linear))
    except Exception:  # not readable as GGUF here: loading it says why
        return None
    found = [t.name.removesuffix(".weight") for t in reader.tensors
             if t.name.startswith(("rope_freqs", "rope_factors_"))]
    if kind not in (None, "none"):
        found.append(f"rope.scaling.type = {kind}")
    elif kind is None and factor not in (None, 0, 1):  # llama.cpp's type defaults to linear
        found.append(f"rope.scaling.factor = {factor:g} (linear)")
    if kind is None and factor is None and linear not in (None, 0, 1):  # the older key, read without factor
        found.append(f"rope.scale_linear = {linear:g}")
    return ", ".join(found) or None


def read_config(folder: Path, gguf: str | None) -> Any:
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(folder), gguf_file=gguf) if gguf else \
            transformers.AutoConfig.from_pretrained(str(folder))
    except Exception as e:  # transformers raises ValueError/KeyError/OSError variously
        reraise_interrupt(e)  # a Ctrl-C inside an extension's import
        what = f"GGUF file {folder / gguf}" if gguf else f"model folder {folder}"
        raise UserError(f"cannot read the {what} as a transformers model: {_first_line(e)}") from None


def auto_dtype(device: str) -> str:
    """What dtype = "auto" loads in: float32 on a CPU; bfloat16 on a GPU that computes in it
    (compute capability 8.0 and newer: A100, H100, L4); float16 on older ones (V100, T4), whose
    torch emulates bfloat16 slowly (is_bf16_supported says yes to emulation), as vLLM does.
    A GPU asked for where torch sees none is load_model's to refuse, in its own line."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"


def training_dtype(dtype: str, device: str) -> str:
    """The dtype a fine-tune loads in: the scoring one, but float32 where that is float16. The
    fine-tune steps float32 master weights yet backpropagates through the model's own dtype, and
    float16's gradients underflow and overflow without a loss scale (bfloat16 has float32's
    range); float16 is only ever the choice on GPUs without bfloat16, where float32 is the way."""
    resolved = auto_dtype(device) if dtype == "auto" else dtype
    return "float32" if resolved == "float16" else resolved


def training_attention(attention: str, dtype: str) -> str:
    """The attention a fine-tune loads with: the scoring one, but SDPA where training_dtype made
    it float32 and flash-attn would refuse it (a float16 run scored with flash_attention_2)."""
    return "sdpa" if attention == "flash_attention_2" and dtype == "float32" else attention


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str = "auto",
    attention: str = "sdpa",
    threads: int = 0,
    tokenizer: str = "",
    nll: str = "auto",
) -> LoadedModel:
    """Load once per worker; candidates are switched later by a buffer copy. The tokenizer
    loads first (from `tokenizer` when given, else from the model), so a model without one
    is refused in one line before any weights are read. `nll`: how the scorer runs the head's
    log-softmax on it (headnll.py)."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # stderr is for our one-line errors and bars
    folder, gguf = resolve(spec)
    config = read_config(folder, gguf)
    architecture_of(config)  # one line for an unadmitted type, before any weights load
    geometry = RopeGeometry.from_config(config)
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("model.device = 'cuda' but torch sees no GPU on this machine")
    dtype = auto_dtype(device) if dtype == "auto" else dtype
    if attention == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise UserError("attention = 'flash_attention_2' but flash-attn is not installed")
        if dtype == "float32":  # transformers only warns; every forward would then raise
            raise UserError(f"attention = 'flash_attention_2' runs in bfloat16 or float16, not float32 "
                            f"(on {device}); set model.dtype = 'bfloat16', or attention = 'sdpa'")
        if str(device).startswith("cuda") and (cc := torch.cuda.get_device_capability(device))[0] < 8:
            # flash-attn 2 runs on Ampere and newer; transformers loads it on a T4 or V100 (float16 by
            # auto there), and every forward raised: each candidate failed
            raise UserError(f"attention = 'flash_attention_2' needs an Ampere or newer GPU (compute "
                            f"capability 8.0+); {torch.cuda.get_device_name(device)} is {cc[0]}.{cc[1]}: "
                            "set attention = 'sdpa'")
    if getattr(config, "sliding_window", None):
        config.sliding_window = None  # score the whole context, not a window
    full_attention(config)
    config.use_cache = False
    tok = load_tokenizer(tokenizer, folder, gguf)
    kw: dict[str, Any] = dict(config=config, dtype=getattr(torch, dtype), attn_implementation=attention)
    if gguf:
        kw["gguf_file"] = gguf
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kw)
    except UserError:
        raise
    except Exception as e:
        reraise_interrupt(e)  # a Ctrl-C inside an extension's import
        raise UserError(f"cannot load model {spec}: {_first_line(e)}") from None
    alibi = is_alibi(config)
    if alibi:
        convert(model)
    model.to(device).eval()
    model.requires_grad_(False)
    set_kind(model, nll)
    return LoadedModel(model, tok, geometry, spec, device, dtype, alibi)


def load_tokenizer(path: str, folder: Path, gguf: str | None) -> Any:
    """The tokenizer at `path` (a folder or a builtin: model), else the model's own."""
    import transformers

    where, kw = (folder, {"gguf_file": gguf} if gguf else {})
    own = Path(path).expanduser() if path else None
    if own is not None and own.is_dir() and not (own / "config.json").is_file():
        where = own  # a tokenizer's own folder (tokenizer.json, ...): no model config
    elif path:
        try:  # a GGUF's own tokenizer needs no dequantized weights
            where, kw = resolve(path, convert=False, what="path")
        except UserError as e:
            raise UserError(f"tokenizer: {e}") from None
        kw = {"gguf_file": kw} if kw else {}
    try:
        return transformers.AutoTokenizer.from_pretrained(str(where), **kw)
    except Exception as e:
        reraise_interrupt(e)  # a Ctrl-C inside an extension's import
        hint = "" if path else "; give one with --tokenizer (eval) or model.tokenizer (config)"
        raise UserError(f"cannot load a tokenizer from {where}: {_first_line(e)[:160]}{hint}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
