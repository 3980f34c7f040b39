#!/bin/bash
# Session 14, trip 1 (carry .gpu .gpu-s): install, then on the embedded model (a) eval in float16
# beside bf16 on CUDA (float32 there equals the CPU table: g1.log), (b) the full recipe on the GPU
# (search 4x, fine-tune there with LoRA+ and S2-Attn, re-search 16x and the short factors on the
# fine-tuned model), once straight and once killed with -9 mid fine-tune and resumed, compared.
# DEV=cpu for a dry run here.
t0=$(date +%s); DEV=${DEV:-cuda}; STEPS=${STEPS:-60}
. .gpu-s/setup.sh || exit 1
export TQDM_DISABLE=1
exec > >(tee -a "$OUT/g5.log") 2>&1
step() { echo; echo "=== $1 ($(( $(date +%s)-t0 ))s)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
W=/tmp/w5; rm -rf $W; mkdir -p $W && cd $W
for dt in bfloat16 float16; do
  step "eval tiny, $DEV $dt (10 held-out documents)"
  timeout 40 longrope eval --lengths 512,1024,2048 --methods none,pi,ntk,yarn --samples 10 --device $DEV --dtype $dt | grep "|"
done
cat > recipe.toml <<T
[model]
path = "builtin:tiny-sotu"
device = "$DEV"
[data]
heldout_docs = 10
[space]
targets = [512, 2048]
short = [128]
[search]
population = 16
parents = 8
mutants = 4
crossovers = 4
max_evals = 48
[finetune]
after = [512]
steps = $STEPS
lr = 1e-4
warmup = 10
batch_tokens = 2048
checkpoint_every = 20
T
step "recipe on $DEV, uninterrupted ($STEPS fine-tune steps at 512)"
/usr/bin/time -f "%e s wall" timeout 120 longrope search recipe.toml --run-dir $W/a > a.out 2>&1; tail -3 a.out
longrope status $W/a
step "recipe on $DEV, kill -9 mid fine-tune, resume"
longrope search recipe.toml --run-dir $W/b > b.out 2>&1 & P=$!
for i in $(seq 1 400); do
  n=$(python3 -c "import json; print(json.load(open('$W/b/finetune/ft-512/progress.json'))['step'])" 2>/dev/null); n=${n:-0}
  [ "$n" -ge $((STEPS / 2 + 5)) ] && break; sleep 0.25
done
kill -9 $P; echo "killed at fine-tune step $n (checkpoint every 20)"; sleep 1
/usr/bin/time -f "%e s wall" timeout 120 longrope resume $W/b > b2.out 2>&1; tail -3 b2.out
longrope status $W/b
python3 - $W/a $W/b <<'PY'
import json, pathlib, sys
import torch
from safetensors.torch import load_file
a, b = (pathlib.Path(x) for x in sys.argv[1:])
wa, wb = (load_file(str(p / "models/ft-512/model.safetensors")) for p in (a, b))
diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
print("fine-tuned weights: max |a - b| =", diff, "over", len(wa), "tensors")
ta, tb = (json.loads((p / "finetune/ft-512/training.json").read_text()) for p in (a, b))
print("final loss", ta["final_loss"], tb["final_loss"], "train s", ta["train_seconds"], tb["train_seconds"])
for f in sorted((a / "best").glob("*.json")):
    x, y = (json.loads(p.read_text().replace(str(b), str(a))) for p in (f, b / "best" / f.name))
    drop = lambda d: {k: v for k, v in d.items() if k not in ("trial", "created", "run_dir")}
    same = drop(x) == drop(y)
    print(f.name, "resumed == uninterrupted" if same else
          f"DIFFERS in {sorted(k for k in x if x.get(k) != y.get(k))}: ppl {x.get('search_ppl')} vs {y.get('search_ppl')}")
PY
step "export + held-out of the recipe's 16x factors on its fine-tuned model"
longrope export $W/a && ls $W/a/export
tar czf "$OUT/runs5.tgz" --exclude='*.safetensors' --exclude='*.pt' a b *.out recipe.toml 2>/dev/null
echo "total $(( $(date +%s)-t0 ))s"
