"""The self-test `longrope check` runs on each device: does this machine score like ours?

Four questions, each answered on the device and in the dtype a search would use:
- rotary parity: the patch with λ = 1 gives the unpatched logits bit for bit, uniform λ = s
  gives transformers' own ``linear`` rope (the parity the test suite proves on CPU), rising λ
  with an attention factor gives its ``longrope`` (where the config class admits one), and
  with n̂ at the whole length (any λ and mscale) every position keeps its original encoding;
- cost: one evaluation of the model at 4 × L0 (perplexity, seconds per 1k tokens), or at 2 × L0 or
  L0 when too few documents reach 4 × L0 (SmolLM2, trained at 8k: one built-in document reaches 32k);
- the head's NLL eager and compiled (headnll.py): equal to float32 rounding, and the time of each;
- numerics (issue 18): a fixed set of candidates ranked in the dtype against float32:
  Spearman's ρ, the same best, and the median relative |Δppl|. A search only needs the order
  of its candidates, so ρ and the best are what must hold in bf16.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from typing import Any

import numpy as np

from longrope.spaces import RescaleFactors, method

from .devices import is_cuda, release_memory

PARITY_POSITIONS = 1024  # the positions whose logits the parity checks compare: the first and last
PARITY_ATOL = {"float32": 1e-4, "bfloat16": 0.1, "float16": 0.02}  # |Δlogit| for uniform λ vs linear
# max |Δlogit| / max |logit| for rising λ vs transformers' longrope: the two compute inv_freq in
# different orders, an ulp apart, and a bf16 logit near 16 moves in steps of 0.125. Measured on
# tiny-sotu (CPU): 2e-6 in float32, 7e-3 in bf16; an attention factor 1.0 for 1.2, or λ reversed: 0.2.
LONGROPE_RTOL = {"float32": 1e-4, "bfloat16": 0.02, "float16": 0.005}
RANK_MIN_RHO = 0.95
NLL_RTOL = 1e-4  # a document's mean NLL, compiled head vs eager
NLL_ATOL = 1e-3  # and each token's: a head that scored the right NLLs on the wrong tokens keeps the mean


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype load_model would use (models.auto_dtype for auto)."""
    from .models import auto_dtype

    return auto_dtype(device) if dtype == "auto" else dtype


def rotary_parity(model_spec: str, device: str, dtype: str, length: int | None = None,
                  attention: str = "sdpa", tokenizer: str = "") -> dict[str, Any]:
    """Max |Δlogit| of the patched model against transformers at `length` (default 2 × L0), over
    the first and last PARITY_POSITIONS / 2 positions (_logits).
    Both references are twins with the model's weights and a rope type set here (plain RoPE,
    PI), not the model itself: a config with its own scaling (llama3, an applied longrope, a
    fine-tuned run's model) is not what λ = 1 means. Model and twins run `attention`, the
    run's own (flash_attention_2 is checked where it will run)."""
    import torch

    from .models import load_model
    from .rotary import apply_factors

    loaded = load_model(model_spec, dtype, device, attention, tokenizer=tokenizer)
    model, geo = loaded.model, loaded.geometry
    length = length or 2 * geo.original_length
    s = length / geo.original_length
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).to(loaded.device)
    with torch.no_grad():
        plain = _twin_logits(model, {"rope_type": "default"}, ids)  # transformers' own RoPE
        linear = _twin_logits(model, {"rope_type": "linear", "factor": s}, ids)  # and its own PI
        apply_factors(model, RescaleFactors.uniform(1.0, geo.n_freqs))
        same = bool(torch.equal(_logits(model, ids), plain))
        apply_factors(model, RescaleFactors.uniform(s, geo.n_freqs))
        diff = float((_logits(model, ids).float() - linear.float()).abs().max())
        apply_factors(model, RescaleFactors.uniform(s, geo.n_freqs, n_hat=length, mscale=1.2))
        kept = float((_logits(model, ids).float() - plain.float()).abs().max())
        del plain, linear
        longrope = _longrope_parity(model, geo, s, ids)
    tol, rtol = PARITY_ATOL.get(loaded.dtype, 1e-4), LONGROPE_RTOL.get(loaded.dtype, 1e-4)
    ok = same and diff <= tol and kept <= tol and (not isinstance(longrope, float) or longrope <= rtol)
    return {"identity_bit_exact": same, "linear_max_abs_diff": diff, "n_hat_max_abs_diff": kept,
            "tolerance": tol, "longrope_max_rel_diff": longrope, "longrope_tolerance": rtol,
            "length": length, "ok": ok}


def _longrope_parity(model: Any, geo: Any, s: float, ids: Any) -> float | str:
    """Max |Δlogit| / max |logit| of the patch against transformers' own ``longrope`` with λ
    rising from 1 to s and attention factor 1.2: the per-dimension order and the mscale, which
    uniform λ and n̂ = length cannot see. A config class that refuses the twin (4.57's Phi3 admits no
    attention_factor) gives the reason instead of a number, and fails nothing."""
    from .rotary import apply_factors

    n = geo.n_freqs
    lam = tuple(1.0 + (s - 1.0) * i / max(n - 1, 1) for i in range(n))
    rope = {"rope_type": "longrope", "short_factor": [1.0] * n, "long_factor": list(lam), "factor": s,
            "original_max_position_embeddings": geo.original_length, "attention_factor": 1.2}
    try:
        ref = _twin_logits(model, rope, ids)
    except Exception as e:  # noqa: BLE001 - transformers' own refusal of the config, reported
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"not checked: transformers' longrope twin: {why}"
    apply_factors(model, RescaleFactors(lam, n_hat=0, mscale=1.2))
    ref = ref.float()
    return float((_logits(model, ids).float() - ref).abs().max() / ref.abs().max())


def _twin_logits(model: Any, rope: dict[str, Any], ids: Any) -> Any:
    """Logits of a copy of `model` whose config has the rope type `rope` (one copy at a time:
    a big model on a GPU holds two sets of weights, never three)."""
    import transformers

    cfg = copy.deepcopy(model.config)
    set_rope(cfg, rope)
    twin = transformers.AutoModelForCausalLM.from_config(cfg, dtype=model.dtype,
                                                         attn_implementation=model.config._attn_implementation)
    twin.load_state_dict(model.state_dict())
    return _logits(twin.to(ids.device).eval(), ids)


def _logits(model: Any, ids: Any) -> Any:
    """The logits of the first and last PARITY_POSITIONS / 2 positions (all where there are no
    more): all of 2 x L0 held [L, vocab] several times over, past a GPU's memory for a large
    vocabulary (Qwen2.5-7B at 65k: 20 GB each in bf16, 40 GB as float32). The last read every
    earlier key as rotated; the first show a fault of the early positions undiluted."""
    import torch

    n, half, at = ids.shape[1], PARITY_POSITIONS // 2, ids.device
    keep = 0 if n <= PARITY_POSITIONS else torch.cat((torch.arange(half, device=at),
                                                       torch.arange(n - half, n, device=at)))
    return model(ids, logits_to_keep=keep).logits


def set_rope(cfg: Any, rope_scaling: dict[str, Any]) -> None:
    """Install a transformers rope type on a config object after construction, for 5.x
    (rope_parameters, keeping rope_theta and a partial rotary factor) and 4.57 (rope_scaling,
    with the legacy "type" key; original_max_position_embeddings read only at the top level).
    The self-check's linear twin uses it; so do the tests (Phi3's validator admits only longrope
    at construction). Which form goes by the installed version, not by the config's attributes:
    4.57 keeps a 5.x config.json's rope_parameters as an attribute it never reads."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        rope = getattr(cfg, "rope_parameters", None) or {}
        keep = {k: v for k, v in rope.items() if k in ("rope_theta", "partial_rotary_factor")}
        cfg.rope_parameters = {**keep, **rope_scaling}
    elif rope_scaling["rope_type"] == "default":  # 4.57: plain RoPE is no rope_scaling at all
        cfg.rope_scaling = None
    else:
        cfg.rope_scaling = dict(rope_scaling, type=rope_scaling["rope_type"])
        if "original_max_position_embeddings" in rope_scaling:
            cfg.original_max_position_embeddings = rope_scaling["original_max_position_embeddings"]


def candidates(geometry: Any, length: int, n: int = 12, seed: int = 0) -> list[RescaleFactors]:
    """PI, NTK, YaRN at `length`, then geometric mixtures of the three (non-decreasing, like
    the methods) with random weights and n̂: a spread of plausible candidates, fixed by seed."""
    base = [method(m, geometry, length) for m in ("pi", "ntk", "yarn")]
    lam = np.array([b.lambdas for b in base])
    rng = np.random.default_rng(seed)
    out = list(base)
    while len(out) < n:
        w = rng.dirichlet(np.ones(3))
        mix = np.exp(w @ np.log(lam))
        out.append(RescaleFactors(tuple(float(x) for x in mix), n_hat=int(rng.choice([0, 2, 8, 32])),
                                  mscale=base[2].mscale))
    return out


def scoring_length(ev: Any) -> int:
    """4 × L0, else the longest of 2 × L0 and L0 that enough of the evaluator's documents reach;
    the data's own error (how many reach it, the longest) when not even L0 is reached."""
    from longrope.spaces import UserError

    L0 = ev.geometry.original_length
    for k in (4, 2):
        try:
            ev.docs(k * L0)
            return k * L0
        except UserError:
            continue
    ev.docs(L0)
    return L0


def evaluation(model_spec: str, device: str, dtype: str, docs: int = 5, data: str = "builtin:sotu",
               attention: str = "sdpa", tokenizer: str = "") -> tuple[Any, dict[str, Any]]:
    """One evaluation (YaRN at `scoring_length`) on `docs` documents: (the evaluator, its figures)."""
    from .specs import ObjectiveSpec
    from .workers import Evaluator

    ev = Evaluator(ObjectiveSpec.of(model_spec, data, device=device, dtype=dtype, search_docs=docs,
                                    heldout_docs=0, attention=attention, tokenizer=tokenizer))
    length = scoring_length(ev)
    ev.evaluate(method("yarn", ev.geometry, length), length)  # warm up
    t0 = time.perf_counter()
    e = ev.evaluate(method("yarn", ev.geometry, length), length)
    secs = time.perf_counter() - t0
    return ev, {"length": length, "ppl": e.ppl, "seconds": secs, "tokens": e.tokens,
                "seconds_per_1k_tokens": 1000 * secs / e.tokens, "ok": e.ok and math.isfinite(e.ppl)}


def rank_check(model_spec: str, device: str, dtype: str, ev: Any = None, docs: int = 5,
               data: str = "builtin:sotu") -> dict[str, Any]:
    """Rank the fixed candidates in `dtype` and in float32 on the same documents. On a GPU the
    float32 reference loads once `ev`'s weights are let go: `ev` scores nothing after this."""
    from scipy.stats import spearmanr

    from .specs import ObjectiveSpec
    from .workers import Evaluator

    ev = ev or Evaluator(ObjectiveSpec.of(model_spec, data, device=device, dtype=dtype, search_docs=docs,
                                          heldout_docs=0))
    # the float32 reference: flash-attn computes only in 16-bit types, so SDPA stands in for it there
    att = "sdpa" if ev.spec.model.attention == "flash_attention_2" else ev.spec.model.attention
    length = scoring_length(ev)
    cands = candidates(ev.geometry, length)
    low = [ev.evaluate(c, length).ppl for c in cands]
    loaded = getattr(ev, "loaded", None)
    if loaded is not None and is_cuda(loaded.device):  # `ev`'s weights go (to no device: not the host's
        loaded.model.to("meta")  # memory either, where the float32 one loads first): with the float32
        release_memory()  # one beside them, 3x their size, a 40-48 GB card was short
    ref = Evaluator(dataclasses.replace(ev.spec, model=dataclasses.replace(ev.spec.model, dtype="float32",
                                                                          attention=att)))
    high = [ref.evaluate(c, length).ppl for c in cands]
    rho = float(spearmanr(low, high).statistic)
    same_best = int(np.argmin(low)) == int(np.argmin(high))
    finite = all(math.isfinite(x) for x in low + high)  # tied infinities would rank alike: ρ = 1
    rel = statistics.median(abs(a - b) / b for a, b in zip(low, high, strict=True)) if finite else math.inf
    return {"dtype": dtype, "candidates": len(cands), "length": length, "spearman": rho,
            "same_best": same_best, "median_rel_diff": rel, "min_spearman": RANK_MIN_RHO,
            "all_finite": finite, "ok": finite and rho >= RANK_MIN_RHO and same_best}


def nll_check(ev: Any, length: int) -> dict[str, Any]:
    """The scorer's head NLL eager and compiled (headnll.py) on one document at `length`: the
    document's mean NLL must agree to NLL_RTOL (float32 rounding; ranking needs far less), and
    each form's time for the document (decoder included). A compile that cannot run here is
    reported, not failed: scoring falls back to eager."""
    from .devices import median_seconds
    from .headnll import ATTR, failures, resolve
    from .perplexity import token_nll

    model, dev = ev.loaded.model, ev.loaded.device
    doc = ev.docs(length)[0]
    kind = getattr(model, ATTR)
    out: dict[str, Any] = {"auto": resolve("auto", dev), "length": length}
    try:
        setattr(model, ATTR, "eager")
        ref = token_nll(model, doc)
        out["eager_seconds"] = median_seconds(lambda: token_nll(model, doc), 3, dev)
        setattr(model, ATTR, "compiled")
        got = token_nll(model, doc)
        if getattr(model, ATTR) != "compiled":  # the compile failed and it scored eagerly
            return {**out, "compiled": False, "reason": failures.get(str(dev).split(":")[0], ""), "ok": True}
        out["compiled_seconds"] = median_seconds(lambda: token_nll(model, doc), 3, dev)
    finally:
        setattr(model, ATTR, kind)
    rel = abs(float(got.mean()) - float(ref.mean())) / float(ref.mean())
    worst = float((got - ref).abs().max())
    return {**out, "compiled": True, "mean_rel_diff": rel, "max_abs_diff": worst, "tolerance": NLL_RTOL,
            "token_tolerance": NLL_ATOL, "ok": rel <= NLL_RTOL and worst <= NLL_ATOL}


def self_test(model_spec: str, device: str, dtype: str = "auto", attention: str = "sdpa",
              tokenizer: str = "") -> dict[str, Any]:
    """Parity, one evaluation, the head NLL eager vs compiled and (for a dtype other than float32)
    the rank check, on one device, with the run's attention and tokenizer (the rank check's
    float32 reference shares the evaluator's spec, so those too)."""
    from .devices import device_name

    dtype = resolve_dtype(dtype, device)
    if device == "cpu" and attention == "flash_attention_2":  # flash-attn runs on GPUs only
        attention = "sdpa"  # a flash run's CPU self-test is SDPA's, not a failure
    out: dict[str, Any] = {"device": device, "name": device_name(device), "model": model_spec, "dtype": dtype,
                           "attention": attention}
    out["rotary_parity"] = rotary_parity(model_spec, device, dtype, attention=attention, tokenizer=tokenizer)
    ev, out["evaluation"] = evaluation(model_spec, device, dtype, attention=attention, tokenizer=tokenizer)
    out["nll"] = nll_check(ev, out["evaluation"]["length"])
    out["rank_check"] = None if dtype == "float32" else rank_check(model_spec, device, dtype, ev)
    out["ok"] = all(out[k]["ok"] for k in ("rotary_parity", "evaluation", "nll", "rank_check") if out[k])
    return out
