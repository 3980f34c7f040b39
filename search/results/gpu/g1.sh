#!/bin/bash
# Trip 1 (carry .gpu .gpu-s): the embedded model on the GPU. DEV=cpu for a dry run here.
t0=$(date +%s); DEV=${DEV:-cuda}; R=$(pwd)
. .gpu-s/setup.sh || exit 1
export TQDM_DISABLE=1
exec > >(tee -a "$OUT/g1.log") 2>&1
step() { echo; echo "=== $1 ($(( $(date +%s)-t0 ))s)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
python3 -c "import torch, transformers, optuna, ray, pydantic; print('torch', torch.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())"
W=/tmp/w; mkdir -p $W && cd $W
step "check --json (every device)"
timeout 75 longrope check --json > $OUT/check.json; echo "rc $?"; head -c 3000 $OUT/check.json
step "eval tiny, $DEV float32"
timeout 45 longrope eval --lengths 512,1024,2048 --methods none,pi,ntk,yarn,dynamic_ntk --samples 10 --device $DEV --dtype float32
step "eval tiny, $DEV default dtype (bf16 on a GPU)"
timeout 45 longrope eval --lengths 512,1024,2048 --methods none,pi,ntk,yarn,dynamic_ntk --samples 10 --device $DEV
cat > ray4.toml <<T
[model]
path = "builtin:tiny-sotu"
device = "$DEV"
[data]
heldout_docs = 10
[space]
targets = [512, 1024]
[search]
population = 32
parents = 16
mutants = 8
crossovers = 8
iterations = 6
patience = 100
[workers]
backend = "ray"
count = 4
num_gpus = ${G4:-0.25}
num_cpus = 2
T
sed "s/count = 4/count = 1/; s/num_gpus = .*/num_gpus = ${G1:-1}/" ray4.toml > ray1.toml
(nvidia-smi dmon -s um -d 1 > dmon.txt 2>&1 &) ; 
step "search, Ray 4 actors x 0.25 GPU"
/usr/bin/time -f "%e s wall" timeout 75 longrope search ray4.toml --run-dir $W/ray4; longrope status $W/ray4
step "search, Ray 1 actor x 1 GPU"
/usr/bin/time -f "%e s wall" timeout 60 longrope search ray1.toml --run-dir $W/ray1; longrope status $W/ray1
pkill -f "nvidia-smi dmon"
step "kill -9 mid-search + resume (Ray 4 x 0.25)"
longrope search ray4.toml --run-dir $W/kill > kill.out 2>&1 & P=$!
for i in $(seq 1 120); do n=$(grep -c "\"op_code\":6" $W/kill/journal.log 2>/dev/null); n=${n:-0}; [ "$n" -ge 90 ] && break; sleep 0.5; done
kill -9 $P; echo "killed at $n completed trials"; sleep 2
/usr/bin/time -f "%e s wall" timeout 60 longrope resume $W/kill; longrope status $W/kill
python3 - $W/ray4 $W/kill <<'PY'
import json, pathlib, sys
a, b = (pathlib.Path(x) / "best" for x in sys.argv[1:])
for f in sorted(a.glob("*.json")):
    x, y = (json.loads(p.read_text()) for p in (f, b / f.name))
    drop = lambda d: {k: v for k, v in d.items() if k not in ("trial", "created", "run_dir")}
    print(f.name, "resumed == uninterrupted (all but the trial number)" if drop(x) == drop(y) else f"DIFFERS: {set(k for k in x if x.get(k) != y.get(k))}")
PY
step "export + held-out eval of the found factors ($DEV)"
longrope export $W/ray4 && timeout 40 longrope eval --lengths 1024 --methods pi,ntk,yarn,dynamic_ntk,$W/ray4/export/longrope-1024.json --samples 10 --device $DEV
step "demo, in-process"
/usr/bin/time -f "%e s wall" timeout ${DEMO_T:-100} longrope demo --run-dir $W/demo | tail -25
step "GPU utilisation during the Ray searches"
awk '$1 ~ /^[0-9]+$/ {n++; s+=$2; if ($2>m) m=$2} END {if (n) print "samples", n, "mean SM%", s/n, "max", m}' dmon.txt
tar czf "$OUT/runs1.tgz" --exclude='*.safetensors' ray4 ray1 kill demo dmon.txt *.toml kill.out 2>/dev/null
echo "total $(( $(date +%s)-t0 ))s"
