#!/usr/bin/env bash
# Build llama-cpp-python once (about 8 minutes on 2 cores) and keep the wheel, so CI and the
# Docker image install it in seconds. Portable flags: no -march=native, x86-64-v3 (AVX2/FMA)
# kernels, so the wheel runs on any machine of that class, not just the one that built it.
# Prints the wheel folder; pass it to pip as --find-links.
set -euo pipefail
VERSION=0.3.36
WHEELS="${CLINIE_WHEELS:-$HOME/.cache/clinie/wheels}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "llama-wheel: building llama-cpp-python==$VERSION (several minutes)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PYTHON" -m pip wheel --quiet --no-deps "llama-cpp-python==$VERSION" -w "$WHEELS" >&2
fi
echo "$WHEELS"
