"""The Wilcoxon pruner with a higher p and an earlier start, at the paper's search shape and budget
(issue 15's first goal: <= 0.6x the tokens of the unpruned search, held-out within 1%).

With the default p 0.1 the one-sided signed-rank test cannot prune before a candidate's 4th of 12
documents (its smallest p after k documents is 2^-k), so even pruning every child that finishes
above the cut-off at its 4th would score 0.66x. p 0.3 with a startup of 2 may prune at the 2nd
(1/4 < 0.3): a candidate worse than the cut-off parent on its first two documents goes.

Only the pruned arms run here: the unpruned searches are the bench's none arms (same config, seed
and documents; a search is a function of its seed), read from bench.json: `paper` compares with the
`pruning_paper` section (1,344 evaluations, seed 0), `bench` with the `pruning` section (160
evaluations, seeds 0-2). The none arms score every document (this script checks the count).
Results go into search/results/pruning_p.json, one entry per (section, p, startup).

Usage: python search/results/pruning_p.py [P] [STARTUP] [paper|bench] [WORKDIR]
       (defaults 0.3 2 paper; paper ~17 min here, bench ~10 min)
"""

import json
import sys
import tempfile
from pathlib import Path

from longrope.runs.vocab import DOC_NLL
from longrope.search.cli.bench.quality import PAPER_SHAPE, _search, _stages, _tokens, _toml

RESULTS = Path(__file__).parent


def arm(work: Path, p: float, startup: int, seed: int, budget: int, docs: int, shape: dict) -> dict:
    """One search with the Wilcoxon pruner at (p, startup): tokens, held-out ppl, prunes by document."""
    toml = _toml(pruner="wilcoxon", budget=budget, seed=seed, search_docs=docs, **shape,
                 search_keys=f"pruner_p = {p}\npruner_startup = {startup}")
    run, secs = _search(work, f"wilcoxon-p{p}-s{startup}-{seed}-{budget}", toml, progress=True)
    pruned = [t for stage in _stages(run) for t in stage if t.state.name == "PRUNED"]
    at: dict[int, int] = {}  # documents scored when pruned -> count
    for t in pruned:
        k = len(t.user_attrs.get(DOC_NLL, ()))
        at[k] = at.get(k, 0) + 1
    return {"tokens": _tokens(run), "heldout": run.best("long", 1024).heldout_ppl, "pruned": len(pruned),
            "pruned_at": dict(sorted(at.items())), "seconds": secs}


def main() -> None:
    p = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
    startup = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    which = sys.argv[3] if len(sys.argv) > 3 else "paper"  # paper: pruning_paper's search; bench: pruning's
    work = Path(sys.argv[4] if len(sys.argv) > 4 else tempfile.mkdtemp(prefix="pruning-p-"))
    key = {"paper": "pruning_paper", "bench": "pruning"}[which]
    old = json.loads((RESULTS / "bench.json").read_text())[key]
    budget, docs, seeds = old["budget"], old["search_docs"], old["seeds"]
    shape = {k: old[k] for k in PAPER_SHAPE if k in old}  # the bench's own shape when absent
    none = {"tokens": old["none"]["tokens"], "heldout": old["none"]["heldout"]}
    assert none["tokens"] == [budget * docs * 1024] * len(seeds), none  # every candidate scored in full
    arms = [arm(work, p, startup, s, budget, docs, shape) for s in seeds]
    wil = {k: [a[k] for a in arms] for k in arms[0]}
    out = {"p": p, "startup": startup, "section": key, "budget": budget, "search_docs": docs, "seeds": seeds,
           **shape, "none": none, "wilcoxon": wil,
           "tokens_ratio": [a / b for a, b in zip(wil["tokens"], none["tokens"], strict=True)],
           "heldout_ratio": [a / b for a, b in zip(wil["heldout"], none["heldout"], strict=True)],
           "wilcoxon_default": {"tokens": old["wilcoxon"]["tokens"], "heldout": old["wilcoxon"]["heldout"]}}
    path = RESULTS / "pruning_p.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[f"{key} p={p} startup={startup}"] = out
    path.write_text(json.dumps(saved, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
