#!/usr/bin/env bash
# Prepares target/gpu-bundle/ for a GPU machine that has CUDA, cmake and a C++ compiler but no
# Rust toolchain: stripped `unmask` and `unmask-quantize` binaries (built here, release) and the
# ggml source they were built from (only what a CUDA or CPU backend build needs). Well under
# 64 MiB. Then, on the GPU machine, from the repository root:
#
#   scripts/gpu-check.sh            # builds libggml-cuda.so, checks, benchmarks, writes a report
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$root/target/gpu-bundle}
cd "$root"
cargo build --release -p unmask-runtime -p unmask-quantize
src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/ggml | head -1)
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/ggml/src"
for b in unmask unmask-quantize; do
    strip -o "$bundle/bin/$b" "${CARGO_TARGET_DIR:-target}/release/$b"
done
cp -r "$src/CMakeLists.txt" "$src/cmake" "$src/include" "$bundle/ggml/"
printf 'Name: ggml\nDescription: unused\nVersion: @GGML_VERSION@\n' >"$bundle/ggml/ggml.pc.in"
# ggml's own sources and the two backends; the other backends' directories are only read
# when enabled.
( cd "$src/src" && cp -r ./*.c ./*.cpp ./*.h ./*.in CMakeLists.txt ggml-cpu ggml-cuda "$bundle/ggml/src/" )
# ggml-cuda's CMakeLists also serves HIP/MUSA builds and includes nothing from them.
echo "bundle: $(du -sh "$bundle" | cut -f1) in $bundle"
