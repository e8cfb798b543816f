#!/usr/bin/env bash
# Builds llama-cpp-python once, portable, into a wheelhouse outside the clone.
#
# Why: the default native build uses this CPU's AMX kernels and segfaults on the
# first forward pass of any quantized model; -DGGML_NATIVE=OFF avoids that and
# makes the wheel safe on other CPUs. pip's own wheel cache ignores CMAKE_ARGS,
# so we build with --no-cache-dir into our own wheelhouse and install from it.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
WHEELHOUSE="${SWITCHYARD_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/wheelhouse}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$WHEELHOUSE"
if ls "$WHEELHOUSE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "llama-cpp-python $VERSION: cached in $WHEELHOUSE"
  exit 0
fi

echo "llama-cpp-python $VERSION: building a portable wheel (about 10 minutes, once per machine)"
tmp="$(mktemp -d "$WHEELHOUSE/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$PYTHON" -m pip wheel --no-deps --no-cache-dir "llama-cpp-python==$VERSION" -w "$tmp"
# Move into place only when complete, so an interrupted build is never mistaken for a cached one.
mv "$tmp"/llama_cpp_python-*.whl "$WHEELHOUSE"/
echo "llama-cpp-python $VERSION: built into $WHEELHOUSE"
