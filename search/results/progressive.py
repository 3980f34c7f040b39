"""Does searching 4x first, then 8x from its best (LongRoPE's progressive extension, section
3.3; what `longrope demo` does), keep more retrieval at 8x than one 8x stage of 160 evaluations, and
does one 8x stage given as many evaluations do as well?

Issue 14's goal: at 8x, factors searched on the needle objective retrieve >= YaRN's pass-key
accuracy + 0.20. Until session 35 the bench's retrieval section searched one stage at 1024 with
160 evaluations and reached 0.20 against YaRN's 0.15 (median of 3 seeds); it now searches 320, as
the control below does, and its 8x needle row equals the control's. Here each search is the bench's
(same config, objective, seeds, held-out documents and keys: search/cli/bench/retrieval.py)
with targets [512, 1024]: 160 evaluations at 4x, then 160 at 8x bred from the 4x best. The
control spends the same 320 evaluations in one 8x stage, so what differs is the 4x stage alone.
Held out at 1024: plain perplexity, needle perplexity and pass-key accuracy over 20 keys.

Usage: python search/results/progressive.py [WORKDIR] (default /tmp/longrope-progressive;
2-5 min a search on 2 quiet cores, 9 searches; a search already in WORKDIR is resumed,
which finishes at once when it is done) -> search/results/progressive.json.
"""

import json
import statistics
import sys
import time
from pathlib import Path

from longrope.objectives.methods import method_factors
from longrope.runs import Run
from longrope.search.cli.bench.quality import _search, _toml
from longrope.search.cli.bench.retrieval import BASELINES, heldout_evaluator, measure, objective

SEEDS, BUDGET, TARGET = (0, 1, 2), 160, 1024
HERE = Path(__file__).parent


def search(workdir: Path, kind: str, seed: int, progressive: bool = True) -> Run:
    """The bench's retrieval search on `kind`, with a 4x stage before the 8x one (or, the
    control, one 8x stage of both stages' evaluations)."""
    target, budget, name = (f"512, {TARGET}", BUDGET, "p") if progressive else (TARGET, 2 * BUDGET, "one")
    name = f"{name}-{kind}-{seed}"
    toml = _toml(seed=seed, target=target, budget=budget) + objective(kind)
    return _search(workdir, name, toml, resume=(workdir / name).exists())[0]


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/longrope-progressive")
    workdir.mkdir(parents=True, exist_ok=True)
    ev = heldout_evaluator()
    out: dict = {"target": TARGET, "budget_per_stage": BUDGET, "seeds": list(SEEDS)}
    for m in BASELINES:
        out[m] = measure(ev, method_factors(m, ev.geometry, TARGET), TARGET)
        print(m, out[m], flush=True)
    for row, kind, progressive in (("progressive_needle", "needle", True), ("progressive_ppl", "ppl", True),
                                   ("one_stage_needle_320", "needle", False)):
        rows = []
        for s in SEEDS:
            t0 = time.perf_counter()
            best = search(workdir, kind, s, progressive).best("long", TARGET)
            rows.append(measure(ev, best.factors, TARGET))
            print(f"{row}, seed {s}: {rows[-1]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        out[row] = {k: [r[k] for r in rows] for k in rows[0]}
    best_pk = max(out[m]["passkey"] for m in BASELINES)
    out["goal_8x_passkey"] = {"best_method": best_pk}  # issue 14: searched on needle >= best + 0.20
    for row in ("progressive_needle", "one_stage_needle_320"):
        pk = statistics.median(out[row]["passkey"])
        out["goal_8x_passkey"][row] = {"median": pk, "met": pk >= min(1.0, best_pk + 0.2)}
    (HERE / "progressive.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["goal_8x_passkey"]))


if __name__ == "__main__":
    main()
