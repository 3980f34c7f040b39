#!/bin/bash
# Trip 4 (carry .gpu-s), same machine: SmolLM2-135M 8k -> 16k with 400 evaluations on Ray 4 x 0.25 GPU,
# then held-out perplexity against PI/NTK/YaRN (the command run, as one line, on 2026-12-04).
. .gpu-s/setup.sh; export TQDM_DISABLE=1; mkdir -p /tmp/w4 && cd /tmp/w4
printf '[model]\npath = "builtin:smollm2-135m"\n[data]\npath = "builtin:sotu-train"\nsearch_docs = 5\nheldout_docs = 3\n[space]\ntargets = [16384]\n[search]\nmax_evals = 400\n[workers]\nbackend = "ray"\ncount = 4\nnum_gpus = 0.25\nnum_cpus = 3\n' > s.toml
/usr/bin/time -f "%e s wall" timeout 170 longrope search s.toml --run-dir /tmp/w4/r 2>&1 | tail -3; longrope status /tmp/w4/r
longrope export /tmp/w4/r && timeout 40 longrope eval --model builtin:smollm2-135m --data builtin:sotu-train --lengths 16384 --methods pi,ntk,yarn,dynamic_ntk,/tmp/w4/r/export/longrope-16384.json --samples 10 2>&1 | grep "|"
timeout 30 longrope eval --model builtin:smollm2-135m --lengths 16384 --methods yarn,/tmp/w4/r/export/longrope-16384.json --samples 9 2>&1 | grep "|"
cp /tmp/w4/r/export/longrope-16384.json $OUT/
