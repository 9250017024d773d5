#!/usr/bin/env bash
# Prepares target/gpu-bundle/ for a GPU machine that has CUDA, cmake and a C++ compiler but no
# Rust toolchain: stripped `unmask`, `unmask-quantize` and `unmask-train` binaries (built here,
# release), the ggml source they were built from (only what a CUDA or CPU backend build needs)
# and the inputs of the training-gradient check (made here with the PyTorch reference, which the
# GPU machine may lack). Well under 64 MiB. Then, on the GPU machine, from the repository root:
#
#   scripts/gpu-check.sh            # builds libggml-cuda.so, checks, benchmarks, writes a report
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$root/target/gpu-bundle}
cd "$root"
cargo build --release -p unmask-runtime -p unmask-quantize -p unmask-train
src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/ggml | head -1)
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/ggml/src" "$bundle/train"
for b in unmask unmask-quantize unmask-train; do
    strip -o "$bundle/bin/$b" "${CARGO_TARGET_DIR:-target}/release/$b"
done
cp -r "$src/CMakeLists.txt" "$src/cmake" "$src/include" "$bundle/ggml/"
printf 'Name: ggml\nDescription: unused\nVersion: @GGML_VERSION@\n' >"$bundle/ggml/ggml.pc.in"
# ggml's own sources and the two backends; the other backends' directories are only read
# when enabled.
( cd "$src/src" && cp -r ./*.c ./*.cpp ./*.h ./*.in CMakeLists.txt ggml-cpu ggml-cuda "$bundle/ggml/src/" )
# ggml-cuda's CMakeLists also serves HIP/MUSA builds and includes nothing from them.
# The gradient check's inputs, for the tiny model gpu-check.sh synthesises (same preset, seed).
py=${UNMASK_PYTHON:-$HOME/.cache/unmask/venv/bin/python}
tiny=$(mktemp -d)
trap 'rm -rf "$tiny"' EXIT
"$bundle/bin/unmask-quantize" synth --preset tiny --hf "$tiny/hf" --seed 7 -q
for kind in sft coupled-grpo; do
    "$py" tests/python/grpo_reference.py make-inputs --hf "$tiny/hf" --out "$bundle/train/inputs-$kind.safetensors" \
        --kind "$kind" --seed 5 --n 4 --prompt-len 6 --completion-len 10 >/dev/null
done
echo "bundle: $(du -sh "$bundle" | cut -f1) in $bundle"
