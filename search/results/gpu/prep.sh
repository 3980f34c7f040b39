#!/usr/bin/env bash
# Prepare the GPU trips of search/results/gpu from the project root: search/results/gpu/prep.sh
# Runs the shared kit's prep.sh --smollm2, then fixes what it gets wrong for this project (found on
# the first run, 2026-12-04): optuna 4.x instead of 5 (pyproject pins <5), the pydantic stack and
# tomli-w (project dependencies the GPU image lacks), and the project wheel without the builtin
# models' weights (the checkout carries them; with them the first trip is over 64 MiB). The
# scripts go to .gpu-s/ (ignored by git). Trips, each right after the other (the machine stays warm
# 30 s): (1) carry .gpu .gpu-s: bash .gpu-s/g1.sh; (2) carry .gpu-smol-a:
# mkdir -p /tmp/stash && cp .gpu-smol-a/* /tmp/stash/; (3) carry .gpu-smol-b .gpu-s: bash .gpu-s/g3.sh
# (session 14 ran g5.sh as trip 1 and g6.sh as trip 3. Next: trip 1 runs g7.sh, session 19's
# compiled head NLL and the speed goal on SmolLM2's shape, needing no trip 2 or 3; then, with the
# real SmolLM2 on trip 3, after '. .gpu-s/setup.sh': python3 .gpu-s/s2prof.py cuda 16384, and
# s2gpu.py again with the warm s2_time)
set -euo pipefail
[ -f pyproject.toml ] || { echo "run from the project root"; exit 1; }
../shared/gpu-kit/prep.sh --smollm2
PLAT="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
rm -f .gpu/whl/optuna-*.whl
python3 -m pip download -q $PLAT -d .gpu/whl "optuna>=4,<5" "pydantic>=2.5" pydantic-core annotated-types \
  typing-inspection tomli-w 2>&1 | grep -v WARNING || true
(cd .gpu/whl && zip -q -d longrope_search-*.whl '*/model.safetensors')
grep -qx '/.gpu-s/' .git/info/exclude || echo '/.gpu-s/' >> .git/info/exclude
mkdir -p .gpu-s && cp search/results/gpu/{setup.sh,g1.sh,g3.sh,g4.sh,g5.sh,g6.sh,g7.sh,s2gpu.py,s2prof.py,rate.py,nll_head.py} .gpu-s/
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "trip 1 carries $(( (tracked + $(du -sb .gpu | cut -f1)) / 1048576 )) MiB of 64"
