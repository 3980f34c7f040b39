"""Search spaces at equal budget (issue 15, 5b): LongRoPE's (every λ free in [1, 1.25 s],
mscale fixed) against LongRoPE2's critical-dimension space, that space with the attention
scale searched too, and LongRoPE's space with only LongRoPE2's floor (λ >= s from the critical
dimension on, the pairs below searched freely: `below_critical = "search"`). Every search uses
the needle objective (the one the retrieval section shows keeps retrieval) with the same seeds
and budget; the best factors are then scored on the held-out pool: plain perplexity, needle
perplexity and pass-key accuracy."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .retrieval import SEARCH_KEYS, by_key, heldout_evaluator, heldout_words, measure, searched

SPACES = {  # name: the [space] lines it adds to the bench's search config
    "longrope": "",
    "critical_dim": 'critical_dim = "auto"',
    "critical_dim+mscale": 'critical_dim = "auto"\nmscale = "search"',
    "critical_floor": 'critical_dim = "auto"\nbelow_critical = "search"',
}


def spaces(workdir: Path, targets: list[int], seeds: list[int], budget: int,
           names: tuple[str, ...] = tuple(SPACES), keys: int = SEARCH_KEYS) -> dict[str, Any]:
    """{target: {space: {"ppl": [...], "needle": [...], "passkey": [...], "mscale": [...]}}},
    one value per seed. Held out: heldout_size(keys), as in `retrieval`.
    `names`: a subset of SPACES (every search is a pure function of its seed, so a row measured
    alone equals the same row of the whole section)."""
    ev = heldout_evaluator(keys=keys)
    out: dict[str, Any] = {}
    for target in targets:
        row: dict[str, Any] = {}
        for name in names:
            lines = SPACES[name]
            found = searched(workdir, f"space-{name}", target, seeds, budget, space=lines, keys=keys)
            row[name] = by_key([{**measure(ev, f, target), "mscale": f.mscale} for f in found])
        out[str(target)] = row
    return out


def goals(r: dict[str, Any], L0: int = 128) -> list[str]:
    """Goal 2 of issue 15: the best space beats LongRoPE's at 8x (held-out ppl and pass-key)."""
    med = statistics.median
    lines = []
    for target, row in r.items():
        if int(target) // L0 != 8 or "longrope" not in row or len(row) < 2:
            continue
        base = row["longrope"]
        best = min((n for n in row if n != "longrope"), key=lambda n: med(row[n]["ppl"]))
        b = row[best]
        ok_ppl = med(b["ppl"]) < med(base["ppl"])
        ok_pk = med(b["passkey"]) >= med(base["passkey"])
        lines.append(f"8x spaces: best other space {best}: held-out ppl {med(b['ppl']):.2f} vs "
                     f"LongRoPE's {med(base['ppl']):.2f} ({'met' if ok_ppl else 'NOT met'}); pass-key "
                     f"{med(b['passkey']):.2f} vs {med(base['passkey']):.2f} "
                     f"({'met' if ok_pk else 'NOT met'})")
    return lines


def render(r: dict[str, Any], budget: int | None = None, heldout: str = heldout_words()) -> list[str]:
    from .retrieval import cell

    lines = []
    for target, row in r.items():
        lines += ["", f"search spaces at {target} (needle objective, {budget} evaluations per search; "
                  f"held-out: {heldout}; median [min, max] over seeds):", "",
                  "| space | perplexity | needle perplexity | pass-key accuracy | mscale |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | " + " | ".join(cell(v[k], ".2f") for k in ("ppl", "needle", "passkey")) + " | "
                  + cell(v["mscale"], ".3f") + " |" for n, v in row.items()]
    return lines + [""] + goals(r)
