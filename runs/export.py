"""Export: the Hugging Face form of the best factors, CSV, and `apply` to a model folder.

The JSON loads in transformers 4.57 and 5.x as a config patch: 4.57 reads
``original_max_position_embeddings`` only at the top level, 5.x inside the
rope dict, so it is written in both places. transformers and vLLM have no n̂:
an export with n̂ > 0 carries it in ``longrope_search`` and warns. vLLM ignores
``attention_factor`` and reads ``long_mscale``/``short_mscale``: both are written.

Phi-3 is stricter: its 4.57 config class admits exactly ``type``,
``short_factor`` and ``long_factor`` and derives the attention factor itself
(sqrt(1 + ln s / ln L0), our default "su" mscale). ``--format phi3`` and
`apply` on a phi3 folder write that form, and warn if the searched mscale
differs from what transformers will compute.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from shlex import quote
from typing import Any

from longrope.spaces import (
    DeployedFactors,
    RescaleFactors,
    RopeGeometry,
    UserError,
    architecture_of,
    check_trained_length,
    check_usable,
    hf_attention_factor,
    is_alibi,
    need_file,
    read_text,
    refuse_csv,
)
from longrope.spaces.files import atomic_write_text, make_folder, remove_stale_temps

from .best import BestRecord
from .rundir import Run


def hf_config_patch(long: BestRecord, short: BestRecord | None) -> dict[str, Any]:
    L0, L = long.original_length, long.target_length
    short_factor = list(short.lambdas) if short else [1.0] * len(long.lambdas)
    rope = {
        "rope_type": "longrope", "type": "longrope",
        "long_factor": list(long.lambdas), "short_factor": short_factor,
        "factor": L / L0, "original_max_position_embeddings": L0,
        "attention_factor": long.mscale,
        # vLLM reads only these two (else it derives sqrt(1 + ln s / ln L0) for both): the long
        # stage's searched scale, and the short stage's (without one, the long one, which is what
        # transformers applies at every length)
        "long_mscale": long.mscale, "short_mscale": short.mscale if short else long.mscale,
    }
    return {
        "max_position_embeddings": L,
        "original_max_position_embeddings": L0,
        # θ at the top level, where 4.57 reads it and 5.x takes it from: a config.json saved by 5.x
        # keeps θ only in rope_parameters, which the merged rope_scaling replaces, and the model
        # would load with its class's default θ (10000 for Llama) without a word
        "rope_theta": long.base,
        "rope_scaling": rope,
        "longrope_search": {
            "n_hat": long.n_hat, "target_length": L, "ppl": long.search_ppl,
            "heldout_ppl": long.heldout_ppl, "short_length": short.target_length if short else None,
            "short_n_hat": short.n_hat if short else 0,
            # the slot (generation, child), not the Optuna trial number: a resume's re-queued copies
            # shift the numbers, and the export of a resumed run equals an uninterrupted one's
            "slot": None if long.slot is None else list(long.slot), "evals": long.evals,
            "config_hash": long.config_hash,
            "model": long.model, "data": long.data, "sampler": long.sampler,
        },
    }


# What `apply` takes from a factors file: the keys hf_config_patch writes (a config.json given
# as one holds its model's shape too), and of its rope dict those transformers' longrope reads.
EXPORT_KEYS = ("max_position_embeddings", "original_max_position_embeddings", "rope_theta", "longrope_search")
ROPE_KEYS = ("rope_type", "type", "long_factor", "short_factor", "factor", "original_max_position_embeddings",
             "attention_factor", "long_mscale", "short_mscale")

# The export formats: name -> (file suffix, what it is). `longrope export --format` reads this
# table; a new format is a row here and a branch in `export` below.
FORMATS: dict[str, tuple[str, str]] = {
    "json": (".json", "a Hugging Face config patch (transformers 4.57 and 5.x) for config.json; "
                      "`apply` writes it"),
    "phi3": ("-phi3.json", "rope_scaling with only type/short_factor/long_factor, which Phi3Config in "
                           "transformers 4.57 requires (the attention factor is then derived)"),
    "csv": (".csv", "one long factor per line, like the reference implementation"),
}


def phi3_rope_scaling(rope: dict[str, Any]) -> dict[str, Any]:
    """The three-key rope_scaling every transformers version's Phi3Config accepts."""
    return {"type": "longrope", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]}


def phi3_mscale_warning(patch: dict[str, Any]) -> str | None:
    """Phi-3's form cannot carry attention_factor: say so when the searched one differs."""
    searched = patch["rope_scaling"].get("attention_factor")
    rope = {k: v for k, v in patch["rope_scaling"].items() if k not in ("attention_factor", "factor")}
    derived = hf_attention_factor(rope, patch)  # what transformers will use for the three-key form
    if searched is None or abs(searched - derived) < 5e-5:  # the searched grid's rounding (its step 1e-4)
        return None
    return (f"the Phi-3 rope_scaling form has no attention_factor: transformers will use {derived:.6f} "
            f"(sqrt(1 + ln s / ln L0)), not the searched mscale {searched:.6f}")


def export(run: Run, target: int | None = None, short: int | None = None, out: str | None = None,
           fmt: str = "json") -> tuple[Path, list[str]]:
    """Write the export; returns (path, warnings)."""
    from .status import stage_summaries, unfinished

    summaries = stage_summaries(run)  # reads every stage's trials: once
    searched = {s["target"]: s for s in summaries if s["kind"] == "long" and s["best_ppl"] is not None}
    want = target if target is not None else max(searched, default=None)
    if want in searched and searched[want]["best_file_missing"]:
        raise UserError(f"{run.best_path('long', want)} is missing (deleted?), though the journal holds "
                        f"that stage's results: `longrope resume {quote(str(run.path))}` writes it again")
    long = run.best("long", target)
    if long is None:
        raise UserError(f"{run.path} has no long-context result yet; run or resume the search first")
    sh = run.best("short", short)
    if sh is not None and len(sh.lambdas) != len(long.lambdas):
        raise UserError("short and long factors have different lengths")
    warnings = unfinished(run, [r for r in (long, sh) if r is not None], summaries)
    if sh is not None and sh.model != long.model and any(map(fine_tuned, (sh.model, long.model))):
        # a fine-tune between the two stages (not a model moved between them: resume --model)
        warnings.append(f"long-{long.target_length} was searched on {long.model} and "
                        f"short-{sh.target_length} on {sh.model}: one model gets both, so one set runs "
                        "on a model it was not searched on (--short picks another short stage)")
    for r in (long,) if fmt == "csv" else (long, sh):  # a CSV holds the long factors alone
        if r is not None and r.n_hat > 0:
            warnings.append(f"n̂ = {r.n_hat} ({r.kind}-{r.target_length}): transformers and vLLM ignore n̂ "
                            "(kept in longrope_search); `longrope eval --methods` this export, or "
                            "longrope.objectives.rotary.apply_factors on a loaded model, applies it; or "
                            "search with space.deployable = true")
    short_mscale = sh.mscale if sh is not None else 1.0
    if long.mscale != short_mscale and fmt != "csv":  # lengths up to L0 were scored with; a CSV loads nowhere
        warnings.append(f"transformers applies attention_factor {long.mscale:g} at every length, short ones "
                        "included; " + (f"the short factors were searched with mscale {sh.mscale:g}" if sh
                                        else "lengths up to L0 were scored without it (no short result)"))
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    suffix, _ = FORMATS[fmt]
    name = f"{long.target_length}{suffix}"
    path = Path(out) if out else run.path / "export" / f"longrope-{name}"
    make_folder(path.parent, "folder for the export")
    remove_stale_temps(path.parent, f".{path.name}.")  # left by an export killed mid-write
    if fmt == "csv":
        text = "\n".join(repr(x) for x in long.lambdas) + "\n"
    else:
        patch = hf_config_patch(long, sh)
        if fmt == "phi3":
            w = phi3_mscale_warning(patch)
            warnings += [w] if w else []
            patch["rope_scaling"] = phi3_rope_scaling(patch["rope_scaling"])
        text = json.dumps(patch, indent=1) + "\n"
    atomic_write_text(path, text)
    return path, warnings


def with_class_defaults(config: dict[str, Any]) -> Any:
    """The config as transformers builds it from this config.json, whose class fills in what the
    file leaves out: the model loads with Qwen3's head_dim of 128 whatever hidden_size / heads
    says, and Llama's 2048 positions. A config transformers cannot build stays the dict, whose
    own checks say why in one line."""
    try:
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # its notes on unusual keys are not ours to print
        try:
            return transformers.AutoConfig.for_model(**config)
        finally:
            transformers.logging.set_verbosity(verbosity)
    except Exception:  # transformers raises ValueError/KeyError/TypeError variously
        return config


def apply_to_folder(factors_json: str | Path, model_dir: str | Path, out_dir: str | Path,
                    copy: bool = False, quiet: bool = False) -> Path:
    """A model folder whose config.json carries the factors; weights linked (or copied).

    Everything is checked before the output folder is made: the factors as eval checks them
    (finite, non-decreasing, >= 1, a positive attention factor), the model as a RoPE
    architecture the engine admits, the output as a new or empty folder."""
    src, out = Path(model_dir), Path(out_dir)
    fj = need_file(factors_json, "factors file")
    if not (src / "config.json").is_file():
        raise UserError(f"{src} is not a model folder (no config.json)")
    factors, patch = load_export(fj)
    out = out.absolute()
    if out == Path.cwd():  # renamed into place, it would leave the shell in a deleted folder
        raise UserError(f"-o {out_dir} is the folder you are in; give the new model folder's own name")
    if out.resolve().is_relative_to(src.resolve()):  # its iterdir would meet the folder being built
        raise UserError(f"-o {out_dir} is inside the model folder {src}; give a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is a file; give a new folder with -o")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty")
    config = _read_json(src / "config.json", "model config")
    if not isinstance(config, dict):
        raise UserError(f"{src / 'config.json'} is not a JSON object")
    for key in ("rope_parameters", "rope_scaling"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            got = type(config[key]).__name__
            raise UserError(f"{src / 'config.json'}: {key} must be an object, got {got}")
    if is_alibi(config):
        raise UserError(f"{src} is an ALiBi model (no rotary embeddings): rescale factors do not apply to it")
    arch = architecture_of(config)  # a model without RoPE, or one the engine does not admit
    loaded = with_class_defaults(config)
    geo = RopeGeometry.from_config(loaded)
    if geo.n_freqs != len(factors.long.lambdas):
        raise UserError(f"the factors have {len(factors.long.lambdas)} values but the "
                        f"model has {geo.n_freqs} rotary frequencies")
    check_trained_length(factors, geo.original_length, geo.base, str(fj))
    rope = {k: v for k, v in patch["rope_scaling"].items() if k in ROPE_KEYS}
    rope.setdefault("short_factor", list(factors.long.lambdas))  # transformers requires it; eval
    # scored a file without one with the long factors at every length, which is what from_hf gives
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta")) or geo.base
    partial = config.get("partial_rotary_factor") or (config.get("rope_parameters") or {}).get(
        "partial_rotary_factor")
    config.update({k: v for k, v in patch.items() if k in EXPORT_KEYS})  # a config.json given as the
    # factors file carries its own model's shape too: only what an export sets is taken from it
    base = {k: v for k, v in (("rope_theta", theta), ("partial_rotary_factor", partial)) if v}
    config.update(base)  # at the top level too: 4.57 (and vLLM on it) reads θ only there
    window = config.get("sliding_window")
    if isinstance(config.get("layer_types"), list):  # as models.full_attention loads it
        config["layer_types"] = ["full_attention" if t == "sliding_attention" else t
                                 for t in config["layer_types"]]
    if window and config.get("use_sliding_window", True):  # as models.py loads it for every score
        config["sliding_window"] = None
        if "use_sliding_window" in config:
            config["use_sliding_window"] = False
        if not quiet:
            print(f"note: the sliding window of {window} tokens in {src / 'config.json'} is switched off: "
                  "the factors were searched and scored with full attention", file=sys.stderr)
    if arch.export_form == "phi3":
        if (w := phi3_mscale_warning(patch)) and not quiet:
            print(f"warning: {w}", file=sys.stderr)
        config["rope_scaling"] = phi3_rope_scaling(rope)  # 4.57 admits only these keys; 5.x reads them too
        config.pop("rope_parameters", None)
    else:
        rope.update(base)  # and L0 inside it, which vLLM reads there (a phi3-form file has none)
        rope.setdefault("original_max_position_embeddings",
                        config.get("original_max_position_embeddings") or geo.original_length)
        config["rope_scaling"] = rope
        config["rope_parameters"] = rope
        heads = config.get("num_attention_heads")
        if config.get("head_dim") is None and config.get("hidden_size") and heads:
            # Mixtral's config leaves head_dim None, which transformers' longrope code does not
            # fall back from (int(None * 1.0)): the folder would not load. The class's own value
            # where it has one (Qwen3: 128, not hidden_size / heads), as the model loads
            config["head_dim"] = getattr(loaded, "head_dim", None) or config["hidden_size"] // heads
    try:
        text = json.dumps(config, indent=1, allow_nan=False) + "\n"
    except ValueError:  # Python's json reads NaN and Infinity; transformers' loader and vLLM's do not
        raise UserError(f"{src / 'config.json'} holds NaN or Infinity, which JSON cannot carry") from None
    make_folder(out, "model folder")
    # built beside `out` and renamed over it (empty, made above) once whole: an apply killed while
    # it copies gigabytes leaves `out` empty for the next one, not half a model
    remove_stale_temps(out.parent, f".{out.name}.")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for item in src.iterdir():
            if item.name == "config.json":
                continue
            if item.name == "params.json":  # Mistral's own config, beside consolidated*.safetensors:
                # vLLM then reads it instead of config.json, and serves without the factors
                if not quiet:
                    print(f"note: {item} (Mistral's native config, without the factors) is left out: "
                          "vLLM would read it instead of config.json", file=sys.stderr)
                continue
            target = tmp / item.name
            if item.name in RAISED and (raised := _raised_length(item, config, quiet)):
                atomic_write_text(target, raised)
                continue
            place = shutil.copy2 if copy else _link  # a subfolder (Llama's original/) linked file by file
            if item.is_dir():
                shutil.copytree(item, target, copy_function=place)
            else:
                place(item, target)
        atomic_write_text(tmp / "config.json", text)
        os.replace(tmp, out)
    except OSError as e:  # a full disk, no permission: one line, and nothing half-written left
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the model folder {out}: {e.strerror or e}"
                        + (f" ({e.filename})" if e.filename else "")) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if arch.rotary_layout != "half" and not quiet:
        print(f"note: {arch.model_type} rotates interleaved pairs; vLLM's LongRoPE rotary takes only the "
              "neox layout, so this folder loads in transformers (and llama.cpp), not in vLLM",
              file=sys.stderr)
    # the short factors' n̂ too, as export and the GGUF path read both (DeployedFactors also
    # takes a "longrope_search": null, which patch.get(..., {}) did not)
    if any(f.n_hat for f in (factors.long, factors.short) if f is not None) and not quiet:
        print("warning: n̂ > 0 is not applied by transformers; use longrope.objectives.rotary."
              "apply_factors on the loaded model to evaluate with it", file=sys.stderr)
    return out


def _link(src: str | Path, dst: str | Path) -> None:
    os.symlink(Path(src).resolve(), dst)


# files beside config.json that hold the trained length as a limit: (key, what it is, what it does)
RAISED = {"tokenizer_config.json": ("model_max_length", "the tokenizer's", "it truncates texts to it"),
          "generation_config.json": ("max_length", "generation_config.json's",
                                     "generate() refuses a longer prompt without max_new_tokens")}


def _raised_length(path: Path, config: dict[str, Any], quiet: bool) -> str | None:
    """The file (RAISED) with its length limit raised to the new length, or None to link it as it
    is: left at L0, a tokenizer called with truncation=True (pipelines do) cut every text there,
    and generate() refused a longer prompt."""
    key, whose, why = RAISED[path.name]
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    L = config.get("max_position_embeddings")
    old = d.get(key) if isinstance(d, dict) else None
    if not isinstance(old, int) or not isinstance(L, int) or old >= L:
        return None
    if not quiet:
        print(f"note: {whose} {key} {old} is raised to {L} ({why})", file=sys.stderr)
    return json.dumps({**d, key: L}, indent=2, ensure_ascii=False) + "\n"


def fine_tuned(model: str) -> bool:
    """`model` is a run's fine-tuned model, RUN/models/ft-<L>."""
    p = Path(model)
    return p.parent.name == "models" and p.name.startswith("ft-") and Run.is_run(p.parent.parent)


def searched_on_warning(patch: dict[str, Any], model: str) -> str | None:
    """A warning when an export's factors were searched on a run's fine-tuned model
    (RUN/models/ft-<L>, the model of every stage after a fine-tune) and `model` is another one:
    they fit the fine-tuned weights, not the base model's."""
    info = patch.get("longrope_search")
    searched = str(info.get("model") or "") if isinstance(info, dict) else ""
    p = Path(searched)
    if not fine_tuned(searched):
        return None
    if not model.startswith("builtin:") and Path(model).resolve() == p.resolve():
        return None
    return (f"these factors were searched on the fine-tuned model {searched}, not on {model}: apply them "
            "to that folder (or export a stage searched before the fine-tune)")


def load_export(path: str | Path) -> tuple[DeployedFactors, dict[str, Any]]:
    """An export's factors and its JSON, checked as eval checks factors (finite, non-decreasing,
    >= 1, a positive attention factor): what `apply` writes into a model folder or a GGUF."""
    fj = need_file(path, "factors file")
    refuse_csv(fj)
    patch = _read_json(fj, "factors file")
    if not isinstance(patch, dict):
        raise UserError(f"{fj} must hold a JSON object (an export of `longrope export`), "
                        f"not a {type(patch).__name__}")
    if "rope_scaling" not in patch and isinstance(patch.get("rope_parameters"), dict) \
            and "long_factor" in patch["rope_parameters"]:  # a config.json saved by transformers 5.x
        patch = dict(patch, rope_scaling=patch["rope_parameters"])
    if "rope_scaling" not in patch:
        try:
            f = RescaleFactors.from_dict(patch)
        except UserError as e:
            raise UserError(f"{fj} is neither an export nor factors: {e}") from None
        raise UserError(f"{fj} holds raw factors ({len(f.lambdas)} λ), not an export; "
                        "run `longrope export` first")
    try:
        factors = DeployedFactors.from_hf(patch)
        check_usable(factors, str(fj))
    except UserError as e:
        raise UserError(str(e) if str(e).startswith(str(fj)) else f"{fj}: {e}") from None
    return factors, patch


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None
