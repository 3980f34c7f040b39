"""The full recipe (issue 16) on the embedded model, at 16x (2048 tokens; L0 = 128).

(a) the base model with factors searched for 16x; (b) LongRoPE's progressive extension: search
4x, fine-tune there (LongLoRA: LoRA + embeddings + norms, S2-Attn), re-search 16x and the short
factors on the fine-tuned model. Both are one run each, with the same targets [512, 2048] and
short [128], needle objective, seed and budget; they differ only in ``finetune.after``. Then
the fine-tune's ablations at 4x with the recipe's factors and steps: full attention instead of
S2-Attn (time and quality), and LoRA alone (embeddings and norms frozen). Held out as in the
retrieval section (retrieval.heldout_size).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .quality import _search, _toml
from .retrieval import SEARCH_KEYS, heldout_evaluator, heldout_ppl, heldout_words, measure, objective

PASSKEY_MIX = 0.25
SHORT_MIX = 0.5  # finetune.short_mix's default (the short_mix section sweeps 0-0.75)
S2_STEPS = 10  # steps per fine-tune timed for S2-Attn's cost against full attention at each length
S2_SCALES = (4, 8, 16, 32, 64)  # x L0: the s2_time section, from the recipe's fine-tune length to 8192
# the recipe's fine-tune on the embedded model. lr 1e-4 (5x LongLoRA's 2e-5: a 4M-parameter model,
# 300 steps); at 5e-4 (sessions 9-12) it eroded the model's retrieval: pass-key at 16x 0.15 against
# the base model's 0.20, where 1e-4 gave 0.25 (session 13, one trial of arm (b), then this rerun)
FINETUNE = """[finetune]
after = {after}
steps = {steps}
lr = 1e-4
warmup = 10
batch_tokens = 2048
checkpoint_every = 50
passkey_mix = {mix}
short_mix = {short}
"""


def recipe(workdir: Path, budget: int, steps: int, scales: tuple[int, int] = (4, 16),
           L0: int = 128, keys: int = SEARCH_KEYS) -> dict[str, Any]:
    """{"a": ..., "b": ..., "short": ..., "ablation": ..., "base_at_mid": ...}: held-out numbers of
    each arm; `scales`: the fine-tune's and the final target's, over L0."""
    from longrope.objectives.finetune import RECORD, finetune
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.search import config

    mid, far = scales[0] * L0, scales[1] * L0
    runs = {}
    # (b+pk): (b) with a quarter of the fine-tune's windows made pass-key samples (finetune.passkey_mix);
    # (b+short): (b) with SHORT_MIX of its steps at L0 (finetune.short_mix, LongRoPE2's mixed windows)
    arms = (("a", "[]", 0.0, 0.0), ("b", f"[{mid}]", 0.0, 0.0), ("b_pk", f"[{mid}]", PASSKEY_MIX, 0.0),
            ("b_short", f"[{mid}]", 0.0, SHORT_MIX))
    for arm, after, mix, short in arms:
        toml = _toml(target=f"{mid}, {far}", space=f"short = [{L0}]", budget=budget) + \
            objective("needle", keys) + FINETUNE.format(after=after, steps=steps, mix=mix, short=short)
        runs[arm], _ = _search(workdir, f"recipe-{arm}", toml)
    a, b, b_pk, b_short = runs["a"], runs["b"], runs["b_pk"], runs["b_short"]
    def held(model: str = "builtin:tiny-sotu"):
        return heldout_evaluator(model, keys)

    base, tuned, tuned_short = held(), held(str(b.model_dir(mid))), held(str(b_short.model_dir(mid)))
    out: dict[str, Any] = {
        "a": measure(base, a.best("long", far).factors, far),
        "b": measure(tuned, b.best("long", far).factors, far),
        "b_pk": measure(held(str(b_pk.model_dir(mid))), b_pk.best("long", far).factors, far),
        "b_short": measure(tuned_short, b_short.best("long", far).factors, far),
    }

    def at_l0(ev, factors):
        return heldout_ppl(ev, factors, L0)

    out["short"] = {"base": at_l0(base, None), "base_short_factors": at_l0(base, a.best("short", L0).factors),
                    "tuned_no_factors": at_l0(tuned, None),
                    "tuned_short_factors": at_l0(tuned, b.best("short", L0).factors),
                    "short_mix_no_factors": at_l0(tuned_short, None),
                    "short_mix_short_factors": at_l0(tuned_short, b_short.best("short", L0).factors)}
    cfg = config.from_dict(b.config())  # the ablations change one key of the recipe's own fine-tune
    spec, ft, factors = ObjectiveSpec.from_config(cfg), cfg.finetune, b.best("long", mid).factors
    tunes = {name: (json.loads((run.finetune_dir(mid) / RECORD).read_text()), run.model_dir(mid))
             for name, run in (("lora+_s2", b), (f"lora+_s2, passkey_mix {PASSKEY_MIX}", b_pk))}
    tunes[f"lora+_s2, short_mix {SHORT_MIX}"] = (json.loads((b_short.finetune_dir(mid) / RECORD).read_text()),
                                                 b_short.model_dir(mid))
    # one search, same seed: the arms fine-tune with equal factors
    out["passkey_mix_same_factors"] = all(
        (f.lambdas, f.n_hat, f.mscale) == (factors.lambdas, factors.n_hat, factors.mscale)
        for f in (b_pk.best("long", mid).factors, b_short.best("long", mid).factors))
    for name, change in (("lora+_full", {"s2_attn": False}), ("lora_s2", {"train_embeddings_norms": False})):
        work, folder = workdir / f"abl-{name}", workdir / f"abl-{name}-model"
        rec = finetune(spec, dataclasses.replace(ft, **change), factors, mid, work, folder, progress=False)
        tunes[name] = (rec, folder)
    out["ablation"] = {name: {"train_seconds": rec["train_seconds"], "final_loss": rec["final_loss"],
                              **measure(held(str(folder)), factors, mid)}
                       for name, (rec, folder) in tunes.items()}
    out["base_at_mid"] = measure(base, factors, mid)
    out["lengths"] = [mid, far]  # S2-Attn's time against full attention: the s2_time section
    return out


def s2_time(workdir: Path, spec: Any, ft: Any, factors_at: Callable[[int], Any], lengths: list[int],
            steps: int, name: str = "s2") -> dict[str, dict[str, float]]:
    """{length: {"s2": seconds, "full": seconds, "ratio": s2 / full}}: `steps` steps of the
    fine-tune `ft` at each length with S2-Attn (G = L/4) and with full attention, back to back;
    `factors_at(length)` the factors applied there; `name` prefixes the work folders (a fine-tune
    resumes from its folder's checkpoint). S2-Attn's saving grows with L over the width.

    One untimed step of each kind runs first: the first fine-tune in a process pays for lazy
    start-up (thread pools, the allocator, kernels' first calls), which would otherwise land on
    whichever kind is timed first (3 steps at 512 here: S2-Attn 1.52x full attention's time when
    timed first, cold)."""
    from longrope.objectives.finetune import finetune

    def run(s2: bool, n: int, k: int, work: Path, model: Path) -> float:
        tune = dataclasses.replace(ft, s2_attn=s2, steps=k, s2_group=0, short_mix=0.0, passkey_mix=0.0)
        return finetune(spec, tune, factors_at(n), n, work, model, progress=False)["train_seconds"]

    for s2 in (True, False):  # afresh: an earlier call's warm-up (another length) is not one to resume
        warm = workdir / f"{name}-warmup-{s2}"
        shutil.rmtree(warm, ignore_errors=True)
        run(s2, lengths[0], 1, warm, warm.with_name(f"{warm.name}-model"))
    out = {}
    for n in lengths:
        secs = {s2: run(s2, n, steps, workdir / f"{name}-{n}-{s2}", s2_model(workdir, name, n, s2))
                for s2 in (True, False)}
        out[str(n)] = {"s2": secs[True], "full": secs[False], "ratio": secs[True] / secs[False]}
    return out


def s2_model(workdir: Path, name: str, length: int, s2: bool) -> Path:
    """Where s2_time(..., name=name) leaves the merged model it trained at `length`, with S2-Attn
    or full attention (for a held-out comparison of the two)."""
    return workdir / f"{name}-{length}-{s2}-model"


S2_SCALING = "s2-scaling"  # the prefix of s2_scaling's work folders (s2_model finds its models)


def s2_scaling(workdir: Path, scales: tuple[int, ...], steps: int, L0: int = 128) -> dict[str, Any]:
    """S2-Attn's fine-tune time over full attention's from the recipe's length to where attention
    dominates a step. The embedded model spends most of a step outside attention at 4x (MLPs, the
    4096-word head: ~8.5 MFLOP a token against attention's ~4 kFLOP x L), so S2-Attn's O(L·G)
    saving shows only once the L² term leads, as in LongLoRA's 7B models at 8k-100k. The recipe's
    fine-tune (LoRA + embeddings + norms) with PI factors at each length (the time does not depend
    on their values) and the same tokens per step at every length (one window at the longest)."""
    from longrope.objectives.methods import method_factors
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.search import config

    lengths = [x * L0 for x in scales]
    toml = (_toml(target=f"{lengths[0]}", space=f"short = [{L0}]", budget=12)
            + objective("needle")
            + FINETUNE.format(after=f"[{lengths[0]}]", steps=steps, mix=0.0, short=0.0))
    cfg = config.from_dict(tomllib.loads(toml))
    ft = dataclasses.replace(cfg.finetune, batch_tokens=max(lengths))
    geometry = heldout_evaluator().geometry
    times = s2_time(workdir, ObjectiveSpec.from_config(cfg), ft, lambda n: method_factors("pi", geometry, n),
                    lengths, steps, name=S2_SCALING)
    return {"L0": L0, "steps": steps, "batch_tokens": ft.batch_tokens, "times": times}


def render_s2(r: dict[str, Any]) -> list[str]:
    """The S2-Attn time table and its goal line (<= 0.6x full attention's time)."""
    L0, times = r["L0"], r["times"]
    lines = ["", f"S2-Attn fine-tune time against full attention by length ({r['steps']} steps each, "
             f"{r['batch_tokens']} tokens a step, G = L/4, back to back):", "",
             "| length | S2-Attn s / step | full s / step | S2 / full |", "|---|---|---|---|"]
    lines += [f"| {n} ({int(n) // L0}x) | {t['s2'] / r['steps']:.2f} | {t['full'] / r['steps']:.2f} | "
              f"{t['ratio']:.2f} |" for n, t in times.items()]
    met = [int(n) for n, t in times.items() if t["ratio"] <= 0.6]
    verdict = f"met from {min(met)} tokens ({min(met) // L0}x) on" if met else "NOT met at any length"
    first = next(iter(times))  # the section starts at the recipe's fine-tune length
    verdict += f"; at the recipe's fine-tune length ({int(first) // L0}x) {times[first]['ratio']:.2f}x"
    return lines + ["", f"S2-Attn time <= 0.6x full attention's: {verdict}"]


def goals(r: dict[str, Any], s2: dict[str, Any] | None = None) -> list[str]:
    """The recipe's goal lines; `s2`: the s2_time section, whose ratio at the fine-tune's length
    (timed back to back, warm) is the time figure when it has one; else the ablation's timings."""
    a, b, s, abl = r["a"], r["b"], r["short"], r["ablation"]
    ok_b = b["ppl"] < a["ppl"] and b["passkey"] > a["passkey"]
    t = abl["lora+_s2"]["train_seconds"] / abl["lora+_full"]["train_seconds"]
    timed = (s2 or {}).get("times", {}).get(str(r["lengths"][0]))
    if timed:
        t = timed["ratio"]
    q = abl["lora+_s2"]["ppl"] / abl["lora+_full"]["ppl"]
    short = s["tuned_short_factors"] / s["base"]
    mixed = s.get("short_mix_short_factors", float("nan")) / s["base"]
    mid, far = (n // 128 for n in r["lengths"])
    pk = r.get("b_pk")
    pk_line = [] if pk is None else [
        f"{far}x with passkey_mix {PASSKEY_MIX}: held-out ppl {pk['ppl']:.2f} vs {a['ppl']:.2f}, pass-key "
        f"{pk['passkey']:.2f} vs {a['passkey']:.2f} (goal: better on both): "
        f"{'met' if pk['ppl'] < a['ppl'] and pk['passkey'] > a['passkey'] else 'NOT met'}"]
    return pk_line + [
        f"{far}x: fine-tuned at {mid}x + re-searched: held-out ppl {b['ppl']:.2f} vs base + searched "
        f"{a['ppl']:.2f}, "
        f"pass-key {b['passkey']:.2f} vs {a['passkey']:.2f} (goal: (b) better on both): "
        f"{'met' if ok_b else 'NOT met'}",
        f"S2-Attn fine-tune at {mid}x: {t:.2f}x the time of full attention (goal <= 0.6), held-out ppl "
        f"{q:.3f}x (goal within 2%): {'met' if t <= 0.6 and abs(q - 1) <= 0.02 else 'NOT met'} at {mid}x "
        "(by length: the s2_time section)",
        f"short context at L0 after the recipe, re-searched short factors: {short:.3f}x the original "
        f"model's ppl (goal within 5%): {'met' if abs(short - 1) <= 0.05 else 'NOT met'}",
    ] + ([] if "b_short" not in r else [
        f"with short_mix {SHORT_MIX}: short context {mixed:.3f}x (goal within 5%): "
        f"{'met' if abs(mixed - 1) <= 0.05 else 'NOT met'}; at {far}x held-out ppl "
        f"{r['b_short']['ppl']:.2f}, "
        f"pass-key {r['b_short']['passkey']:.2f}"])


def render(r: dict[str, Any], budget: int | None = None, steps: int | None = None,
           s2: dict[str, Any] | None = None, heldout: str = heldout_words()) -> list[str]:
    f2 = "{:.2f}".format
    mid, far = (n // 128 for n in r["lengths"])
    lines = ["", f"the full recipe at {far}x (needle objective, {budget} evaluations per stage, fine-tune "
             f"{steps} steps at {mid}x; held-out: {heldout}):", "",
             "| arm | perplexity | needle perplexity | pass-key accuracy |", "|---|---|---|---|"]
    for name, k in ((f"(a) base + factors searched for {far}x", "a"),
                    (f"(b) fine-tuned at {mid}x + re-searched for {far}x", "b"),
                    (f"(b+pk) as (b), passkey_mix {PASSKEY_MIX}", "b_pk"),
                    (f"(b+short) as (b), short_mix {SHORT_MIX}", "b_short")):
        if k not in r:  # a bench.json from before the arm existed
            continue
        lines.append(f"| {name} | {f2(r[k]['ppl'])} | {f2(r[k]['needle'])} | {f2(r[k]['passkey'])} |")
    s = r["short"]
    lines += ["", "perplexity at L0 = 128 (held out):", "", "| model | no factors | short factors |",
              "|---|---|---|", f"| base | {f2(s['base'])} | {f2(s['base_short_factors'])} |",
              f"| fine-tuned | {f2(s['tuned_no_factors'])} | {f2(s['tuned_short_factors'])} |"]
    if "short_mix_no_factors" in s:
        lines.append(f"| fine-tuned, short_mix {SHORT_MIX} | {f2(s['short_mix_no_factors'])} | "
                     f"{f2(s['short_mix_short_factors'])} |")
    lines += ["",
              f"fine-tune ablations at {mid}x (same factors, steps and seed):", "",
              "| fine-tune | training seconds | final loss | perplexity | pass-key accuracy |",
              "|---|---|---|---|---|",
              f"| none (base model) | - | - | {f2(r['base_at_mid']['ppl'])} | "
              f"{f2(r['base_at_mid']['passkey'])} |"]
    for name, v in r["ablation"].items():
        lines.append(f"| {name} | {v['train_seconds']:.0f} | {v['final_loss']:.3f} | {f2(v['ppl'])} | "
                     f"{f2(v['passkey'])} |")
    return lines + [""] + goals(r, s2)


SHORT_MIXES = (0.0, 0.25, 0.5, 0.75)


def short_mix_sweep(workdir: Path, budget: int, steps: int, mixes: tuple[float, ...] = SHORT_MIXES,
                    scale: int = 4, L0: int = 128, keys: int = SEARCH_KEYS) -> dict[str, Any]:
    """{"base_l0": ppl, "lengths": [L0, L], "rows": {mix: {...}}}: one search at scale x L0 (the
    recipe's (b) fine-tune length), then the recipe's fine-tune once per `finetune.short_mix`, same
    factors and seed. Each row: held-out ppl at L0 with the model's own rotary (the short-context
    goal's number, before any short-factor re-search, which moved it < 1% in the recipe) and the
    ppl and pass-key at L with the factors: what mixing in short windows costs at long context."""
    from longrope.objectives.finetune import finetune
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.search import config

    L = scale * L0
    toml = _toml(target=f"{L}", budget=budget) + objective("needle", keys) + \
        FINETUNE.format(after="[]", steps=steps, mix=0.0, short=0.0)
    run, _ = _search(workdir, "short-mix", toml)
    cfg = config.from_dict(run.config())
    spec, factors = ObjectiveSpec.from_config(cfg), run.best("long", L).factors
    base = heldout_evaluator(keys=keys)
    out: dict[str, Any] = {"base_l0": heldout_ppl(base, None, L0),
                           "lengths": [L0, L], "base_at_l": measure(base, factors, L), "rows": {}}
    for mix in mixes:
        folder = workdir / f"short-mix-{mix}-model"
        rec = finetune(spec, dataclasses.replace(cfg.finetune, short_mix=mix), factors, L,
                       workdir / f"short-mix-{mix}", folder, progress=False)
        ev = heldout_evaluator(str(folder), keys)
        l0 = heldout_ppl(ev, None, L0)
        out["rows"][str(mix)] = {"l0_ppl": l0, "l0_ratio": l0 / out["base_l0"], **measure(ev, factors, L),
                                 "train_seconds": rec["train_seconds"], "short_steps": rec.get("short_steps")}
    return out


def render_sweep(r: dict[str, Any], budget: int | None = None, steps: int | None = None,
                 heldout: str = heldout_words()) -> list[str]:
    L0, L = r["lengths"]
    lines = ["", f"finetune.short_mix at {L // L0}x ({steps} steps, factors from one search of {budget} "
             f"evaluations; held out: {heldout}):", "",
             f"| short_mix | ppl at L0 = {L0} | vs original | ppl at {L} | pass-key at {L} | short steps | "
             "training seconds |", "|---|---|---|---|---|---|---|",
             f"| (base model) | {r['base_l0']:.2f} | 1.000 | {r['base_at_l']['ppl']:.2f} | "
             f"{r['base_at_l']['passkey']:.2f} | - | - |"]
    for mix, v in r["rows"].items():
        lines.append(f"| {mix} | {v['l0_ppl']:.2f} | {v['l0_ratio']:.3f} | {v['ppl']:.2f} | "
                     f"{v['passkey']:.2f} | {v['short_steps']} | {v['train_seconds']:.0f} |")
    met = [m for m, v in r["rows"].items() if v["l0_ratio"] <= 1.05]
    best = min(r["rows"].values(), key=lambda v: v["l0_ratio"])
    verdict = f"met from short_mix {met[0]}" if met else f"NOT met at any mix (best {best['l0_ratio']:.3f}x)"
    lines += ["", f"short context within 5% of the original (the recipe's goal): {verdict}"]
    return lines
