#!/bin/sh
# Build llama-cpp-python from source into a virtualenv (or, with WHEEL_DIR set, only a wheel).
#
#   scripts/build-llama.sh [PYTHON]              # default: .venv/bin/python
#   CMAKE_ARGS="-DGGML_CUDA=on" scripts/build-llama.sh   # CUDA build (Jetson, NVIDIA GPU)
#   CMAKE_CUDA_ARCHITECTURES=87 ...              # Jetson Orin; 90 for H100
#
# Only the llama/ggml shared libraries are built: no examples, tests, server, tools or the
# multimodal (mtmd/llava) library, which edge-agent does not use. GGML_NATIVE=OFF keeps the
# binary portable across CPUs of the same architecture.
set -eu
PY=${1:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
FAST="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
FAST="$FAST -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF"
if [ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ]; then
    FAST="$FAST -DCMAKE_CUDA_ARCHITECTURES=$CMAKE_CUDA_ARCHITECTURES"
fi
export CMAKE_ARGS="${CMAKE_ARGS:-} $FAST"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
start=$(date +%s)
if [ -n "${WHEEL_DIR:-}" ]; then
    "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
        -w "$WHEEL_DIR" "llama-cpp-python==$VERSION"
else
    "$PY" -m pip install -q --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION"
fi
echo "llama-cpp-python $VERSION built in $(( $(date +%s) - start ))s with CMAKE_ARGS=$CMAKE_ARGS" >&2
