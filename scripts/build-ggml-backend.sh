#!/usr/bin/env bash
# Builds one GGML backend as a library that unmask loads at run time (ggml_backend_load), from
# the very ggml source unmask is linked with (vendored by llama-cpp-sys-2 =0.1.161).
#
#   scripts/build-ggml-backend.sh cuda [OUT_DIR]   # libggml-cuda.so (needs nvcc and cmake)
#   scripts/build-ggml-backend.sh cpu  [OUT_DIR]   # libggml-cpu.so (a stand-in "device" for
#                                                  # testing the loading path without a GPU)
#
# Then run unmask with UNMASK_BACKEND_DIR=OUT_DIR (or put the library next to the `unmask`
# binary, or in ../lib/unmask relative to it).
#
# Environment: GGML_SRC (ggml source directory; default: the bundle's copy or cargo's registry),
# CUDA_ARCHS (default: native, i.e. the GPUs present), CUDA_FA (default ON: ggml's CUDA flash
# attention kernels, which unmask uses for attention on the device; 239 s against 215 s without
# them on 16 cores for one architecture; OFF falls back to explicit attention), JOBS (default:
# all cores).
set -euo pipefail

family=${1:-}
out=${2:-$(pwd)/target/ggml-backends}
case "$family" in
cuda | cpu) ;;
*)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
if [[ -z "${GGML_SRC:-}" ]]; then
    for candidate in "$here/../ggml" "$here/../target/gpu-bundle/ggml" \
        ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/ggml; do
        if [[ -f "$candidate/CMakeLists.txt" ]]; then
            GGML_SRC=$candidate
            break
        fi
    done
fi
if [[ ! -f "${GGML_SRC:-}/CMakeLists.txt" ]]; then
    echo "error: ggml source not found; set GGML_SRC (scripts/gpu-bundle.sh copies it)" >&2
    exit 1
fi
command -v cmake >/dev/null || { echo "error: cmake is needed" >&2; exit 1; }
# The crate packages ggml without its pkg-config template, which ggml's CMakeLists configures;
# build from a copy that has an (unused) one.
if [[ ! -f "$GGML_SRC/ggml.pc.in" ]]; then
    mkdir -p "$out"
    if [[ ! -f "$out/ggml-src/ggml.pc.in" ]]; then
        rm -rf "$out/ggml-src"
        cp -a "$GGML_SRC" "$out/ggml-src" # timestamps kept: a rebuild recompiles nothing
        printf 'Name: ggml\nDescription: unused\nVersion: @GGML_VERSION@\n' >"$out/ggml-src/ggml.pc.in"
    fi
    GGML_SRC="$out/ggml-src"
fi

jobs=${JOBS:-$(nproc)}
build="$out/build-$family"
mkdir -p "$out"
common=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DGGML_BACKEND_DL=ON
    -DGGML_NATIVE=OFF
    -DGGML_BUILD_TESTS=OFF
    -DGGML_BUILD_EXAMPLES=OFF
    # Find libggml-base.so next to the backend library wherever the directory is moved.
    '-DCMAKE_BUILD_RPATH=$ORIGIN'
)
if [[ $family == cuda ]]; then
    command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] ||
        { echo "error: nvcc (the CUDA compiler) is needed to build the CUDA backend" >&2; exit 1; }
    export PATH="$PATH:/usr/local/cuda/bin"
    flags=(
        -DGGML_CUDA=ON
        -DGGML_CPU=OFF
        -DGGML_CUDA_NCCL=OFF
        "-DGGML_CUDA_FA=${CUDA_FA:-ON}"
        "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-native}"
    )
    target=ggml-cuda
else
    # The same instruction sets as unmask's built-in CPU backend (.cargo/config.toml).
    flags=(
        -DGGML_CPU=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
        -DGGML_SSE42=ON -DGGML_AVX512=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_OPENMP=OFF
        -DGGML_LLAMAFILE=ON
    )
    target=ggml-cpu
fi

start=$(date +%s)
cmake -S "$GGML_SRC" -B "$build" "${common[@]}" "${flags[@]}" >"$out/cmake-$family.log" 2>&1 ||
    { tail -30 "$out/cmake-$family.log" >&2; exit 1; }
cmake --build "$build" --target "$target" -j "$jobs" >"$out/build-$family.log" 2>&1 ||
    { tail -40 "$out/build-$family.log" >&2; exit 1; }
lib=$(find "$build" -name "lib$target.so" | head -1)
base=$(find "$build" -name 'libggml-base.so*' | head -1)
[[ -n "$lib" && -n "$base" ]] || { echo "error: lib$target.so was not produced" >&2; exit 1; }
cp -L "$lib" "$out/"
for f in $(find "$build" -name 'libggml-base.so*'); do cp -L "$f" "$out/"; done
echo "built $out/lib$target.so in $(($(date +%s) - start)) s (from $GGML_SRC)"
