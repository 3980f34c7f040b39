"""Issue 16's S2-Attn goal on a real model (run by g6.sh): SmolLM2-135M fine-tuned with the recipe's
LoRA+ at 2x and 4x its trained length, S2-Attn (G = L/4) against full attention, back to back, with
the bench's own `s2_time`; then the held-out perplexity of both merged models at 2x (YaRN factors).

Usage: s2gpu.py DEV STEPS_2X STEPS_4X [L]  (L: the 2x length, 16384 for SmolLM2; smaller for a dry run)
"""

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from longrope.objectives.methods import method_factors
from longrope.objectives.specs import FinetuneSpec, ObjectiveSpec
from longrope.objectives.workers import Evaluator
from longrope.search.cli.bench.finetune import s2_model, s2_time

MODEL, DATA = os.environ.get("M", "builtin:smollm2-135m"), "builtin:sotu-train"
NAME = "s2gpu"  # s2_time's work folders


def main() -> None:
    dev, steps, steps4 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    length = int(sys.argv[4]) if len(sys.argv) > 4 else 16384
    spec = ObjectiveSpec.of(MODEL, DATA, device=dev, search_docs=5, heldout_docs=10)
    base = Evaluator(spec)
    geometry = base.geometry
    yarn = lambda n: method_factors("yarn", geometry, n)  # noqa: E731
    ft = FinetuneSpec(steps=steps, lr=1e-4, warmup=10, batch_tokens=length, checkpoint_every=1000)
    work = Path(tempfile.mkdtemp(prefix="s2gpu-"))
    out = {"model": MODEL, "device": dev, "lr": ft.lr, "steps": {"2x": steps, "4x": steps4},
           "base_heldout_yarn_2x": base.evaluate(yarn(length), length, pool="heldout").ppl}
    del base
    out["2x"] = s2_time(work, spec, ft, yarn, [length], steps, name=NAME)[str(length)]
    print(json.dumps(out, indent=1), flush=True)
    for s2 in (True, False):
        ev = Evaluator(dataclasses.replace(spec, model=dataclasses.replace(
            spec.model, path=str(s2_model(work, NAME, length, s2)))))
        ppl = ev.evaluate(yarn(length), length, pool="heldout").ppl
        out["2x"]["heldout_s2" if s2 else "heldout_full"] = ppl
        del ev
    out["2x"]["heldout_ratio"] = out["2x"]["heldout_s2"] / out["2x"]["heldout_full"]
    print(json.dumps(out, indent=1), flush=True)
    for far in (2 * length, 3 * length // 2):  # time only; the search pool holds few documents that long
        try:
            ft4 = dataclasses.replace(ft, batch_tokens=far)
            out[f"{far}"] = s2_time(work, spec, ft4, yarn, [far], steps4, name=NAME)[str(far)]
            break
        except Exception as e:  # noqa: BLE001 - report and keep the 2x figures
            out[f"{far}"] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
