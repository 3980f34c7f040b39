"""S2-Attn against full attention at the recipe's steps, time and held-out quality, at one scale
of the embedded model (issue 16's goal where S2-Attn's time goal is met: 64x = 8192 tokens).
The bench's s2_scaling (PI factors, LoRA+, the same tokens per step) with the recipe's 300 steps,
then the held-out perplexity of both merged models (10 documents) with the same factors.

Usage: python search/results/s2_quality.py [SCALE] [STEPS] [WORKDIR]   (defaults 64 300; ~40 min here)
WORKDIR must be new or empty (default: a fresh temporary folder): the timed fine-tunes of a
finished run there would resume from their last checkpoints and report that run's times.
"""

import json
import sys
import tempfile
from pathlib import Path

from longrope.objectives.methods import method_factors
from longrope.search.cli.bench.finetune import S2_SCALING, s2_model, s2_scaling
from longrope.search.cli.bench.retrieval import heldout_evaluator, heldout_ppl


def main() -> None:
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    work = Path(sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="s2-quality-"))
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty: its finished fine-tunes would be resumed, not timed")
    r = s2_scaling(work, (scale,), steps)
    n = scale * r["L0"]
    base = heldout_evaluator()
    pi = method_factors("pi", base.geometry, n)
    t = r["times"][str(n)]
    t["heldout_base"] = heldout_ppl(base, pi, n)
    for s2 in (True, False):
        ev = heldout_evaluator(str(s2_model(work, S2_SCALING, n, s2)))
        t["heldout_s2" if s2 else "heldout_full"] = heldout_ppl(ev, pi, n)
    t["heldout_ratio"] = t["heldout_s2"] / t["heldout_full"]
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
