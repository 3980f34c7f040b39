# Sourced at the start of every GPU command: installs .gpu/ into /tmp/site once per machine.
# (the kit's setup.sh, plus: the project wheel travels without the builtin models' weights, which
# the checkout itself carries, to keep the trip under 64 MiB; they are copied in after the install)
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
if [ ! -e /tmp/site/.ok ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || return 1
  tar -C /tmp/site -xJf .gpu/ray_slim.tar.xz || return 1
  for d in objectives/builtin/*/; do [ -f "$d/model.safetensors" ] && cp "$d/model.safetensors" "/tmp/site/longrope/objectives/builtin/$(basename "$d")/"; done
  touch /tmp/site/.ok
fi
