"""Retrieval: LongRoPE2's Table 6 on our own bed. At each target, held-out plain perplexity,
needle perplexity and pass-key accuracy for the closed-form methods and for factors searched
on plain perplexity and on the needle objective (same seeds, same budget)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .quality import _search, _toml

BASELINES = ("none", "pi", "ntk", "yarn", "dynamic_ntk")
SEARCH_KEYS = 10  # pass-key samples per search evaluation, one per depth (--quick: QUICK_KEYS)
QUICK_KEYS = 2  # the quick bench checks the tables' shape: fewer forwards per evaluation, held out too


def objective(kind: str, keys: int = SEARCH_KEYS) -> str:
    """The [objective] section of the bench's searches: `kind` with `keys` needle samples."""
    return f'[objective]\nkind = "{kind}"\ndepths = {keys}\nper_depth = 1\n'


def heldout_size(keys: int = SEARCH_KEYS) -> tuple[int, int]:
    """(documents, pass keys) held out where retrieval is measured: `keys` documents and 2 keys at
    each of `keys` depths; the full bench's 10 and 20, --quick's fewer (it checks shapes)."""
    return keys, 2 * keys


def heldout_words(keys: int = SEARCH_KEYS) -> str:
    """The held-out set as the tables name it: '10 documents, 20 keys'."""
    docs, n = heldout_size(keys)
    return f"{docs} documents, {n} keys"


def heldout_evaluator(model: str = "builtin:tiny-sotu", keys: int = SEARCH_KEYS):
    """The scorer the retrieval, spaces, compare and fine-tune sections share (heldout_size)."""
    from longrope.objectives.specs import ObjectiveSpec
    from longrope.objectives.workers import Evaluator

    docs, _ = heldout_size(keys)
    return Evaluator(ObjectiveSpec.of(model, threads=2, search_docs=5, heldout_docs=docs, depths=keys,
                                      per_depth=2))


def searched(workdir: Path, name: str, target: int, seeds: list[int], budget: int, kind: str = "needle",
             space: str = "", keys: int = SEARCH_KEYS) -> list:
    """The best long factors of one search per seed (objective `kind`, [space] lines `space`)."""
    out = []
    for s in seeds:
        toml = _toml(seed=s, target=target, budget=budget, space=space) + objective(kind, keys)
        run, _ = _search(workdir, f"{name}-{target}-{s}", toml)
        out.append(run.best("long", target).factors)
    return out


def by_key(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """[{k: v}, ...] (one dict per seed) -> {k: [v, ...]}."""
    return {k: [r[k] for r in rows] for k in rows[0]}


def heldout_ppl(ev, factors, length: int) -> float:
    """Held-out perplexity at `length` (factors None: the model's own rotary)."""
    return ev.evaluate(factors, length, pool="heldout", kind="ppl").ppl


def measure(ev, factors, length: int) -> dict[str, float]:
    """The three held-out numbers for one set of factors at one length."""
    needle = ev.evaluate(factors, length, pool="heldout", kind="needle")
    return {"ppl": heldout_ppl(ev, factors, length), "needle": needle.ppl, "passkey": needle.extra["passkey"]}


def retrieval(workdir: Path, seeds: dict[int, list[int]], budget: int,
              keys: int = SEARCH_KEYS) -> dict[str, Any]:
    """{target: {method: {"ppl": [...], "needle": [...], "passkey": [...]}}} for each target in
    `seeds`, one value per seed for the searched rows, one for the closed-form ones. Held out:
    heldout_size(keys)."""
    from longrope.objectives.methods import method_factors

    ev = heldout_evaluator(keys=keys)
    out: dict[str, Any] = {}
    for target, target_seeds in seeds.items():
        row: dict[str, Any] = {}
        for m in BASELINES:
            row[m] = {k: [v] for k, v in measure(ev, method_factors(m, ev.geometry, target), target).items()}
        for kind in ("ppl", "needle"):
            found = searched(workdir, f"r-{kind}", target, target_seeds, budget, kind, keys=keys)
            row[f"searched_{kind}"] = by_key([measure(ev, f, target) for f in found])
        out[str(target)] = row
    return out


def goals(r: dict[str, Any], L0: int = 128) -> list[str]:
    """The issue's goals at 8x (and the needle-vs-ppl comparison at 8x and 16x), met or not."""
    med = statistics.median
    lines = []
    for target, row in r.items():
        s = int(target) // L0
        base_pk = max(med(row[m]["passkey"]) for m in BASELINES)
        base_needle = min(med(row[m]["needle"]) for m in BASELINES)
        base_ppl = min(med(row[m]["ppl"]) for m in BASELINES)
        sn, sp = row["searched_needle"], row["searched_ppl"]
        if s == 8:
            pk_ok = med(sn["passkey"]) >= min(1.0, base_pk + 0.20)
            lines += [f"8x pass-key: searched on needle {med(sn['passkey']):.2f} vs best method "
                      f"{base_pk:.2f} (goal: +0.20 or 1.00): {'met' if pk_ok else 'NOT met'}",
                      f"8x needle ppl: {med(sn['needle']) / base_needle:.3f}x the best method's "
                      f"(goal <= 0.7): {'met' if med(sn['needle']) <= 0.7 * base_needle else 'NOT met'}",
                      f"8x plain ppl: {med(sn['ppl']) / base_ppl:.3f}x the best method's (goal <= 1.05): "
                      f"{'met' if med(sn['ppl']) <= 1.05 * base_ppl else 'NOT met'}"]
        if s in (8, 16):
            better = med(sn["passkey"]) > med(sp["passkey"])
            lines.append(f"{s}x pass-key, searched on needle {med(sn['passkey']):.2f} vs on ppl "
                         f"{med(sp['passkey']):.2f} (goal: needle higher): {'met' if better else 'NOT met'}")
    return lines


def cell(v: list[float], fmt: str) -> str:
    """Median of the seeds, with [min, max] when there are several."""
    xs = sorted(v)
    mid = format(statistics.median(xs), fmt)
    return mid + (f" [{format(xs[0], fmt)}, {format(xs[-1], fmt)}]" if len(xs) > 1 else "")


def render(r: dict[str, Any], budget: int | None = None, heldout: str = heldout_words()) -> list[str]:
    lines = []
    for target, row in r.items():
        evals = f"; searched: {budget} evaluations per search, median [min, max] of seeds" if budget else ""
        lines += ["", f"retrieval at {target} (held-out: {heldout}{evals}):", "",
                  "| method | perplexity | needle perplexity | pass-key accuracy |", "|---|---|---|---|"]
        lines += [f"| {m} | " + " | ".join(cell(v[k], ".2f") for k in ("ppl", "needle", "passkey")) + " |"
                  for m, v in row.items()]
    return lines + [""] + goals(r)
