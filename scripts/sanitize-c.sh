#!/usr/bin/env bash
# The C API's own tests (ffi/tests/c/api_test.c) under AddressSanitizer, UndefinedBehaviorSanitizer
# and LeakSanitizer (docs/reliability.md, "Sanitizers"): the test program is compiled with
# -fsanitize=address,undefined against the release libunmask, and every mode runs with leak
# detection over the whole process (the library's allocations included, since Rust allocates
# through malloc). Prints one line per mode and the sanitizer's summary of any report; exit code
# 1 when a mode fails or a sanitizer reports anything.
#
#   scripts/sanitize-c.sh
#
# Needs the release build of unmask-ffi and unmask-quantize (cargo build --release -p unmask-ffi
# -p unmask-quantize) and a C compiler with the sanitizer runtimes (gcc or clang).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
work=${SANITIZE_WORK:-target/sanitize-c}
for f in libunmask.so unmask-quantize; do
    [ -e "$bin/$f" ] || { echo "missing $bin/$f: cargo build --release -p unmask-ffi -p unmask-quantize" >&2; exit 1; }
done
rm -rf "$work"
mkdir -p "$work/lib"
# The program links against the library's SONAME, as an installed copy provides it.
soname=$(objdump -p "$bin/libunmask.so" | awk '/SONAME/ {print $2}')
cp "$bin/libunmask.so" "$work/lib/$soname"
ln -sf "$soname" "$work/lib/libunmask.so"
cc -std=c11 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
    -I ffi/include ffi/tests/c/api_test.c -L"$work/lib" -lunmask -Wl,-rpath,"$(cd "$work/lib" && pwd)" \
    -lpthread -o "$work/api_test"

"$bin/unmask-quantize" synth --preset tiny --gguf "$work/tiny.gguf" --type q8_0 --force >"$work/synth.log" 2>&1
python3 - "$work" <<'PY'
import sys, pathlib
w = pathlib.Path(sys.argv[1])
b = (w / "tiny.gguf").read_bytes()
c = bytearray(b)
c[8:24] = b"\xff" * 16  # tensor and metadata counts
(w / "corrupt.gguf").write_bytes(bytes(c))
(w / "truncated.gguf").write_bytes(b[: len(b) // 2])
PY

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1"
export RUST_BACKTRACE=0 UNMASK_BACKEND_DIR=/nonexistent-unmask-backends
m="$work/tiny.gguf"
failed=0
run() { # name args...
    local name=$1; shift
    local log="$work/$name.log" status=0
    "$work/api_test" "$@" > "$log" 2>&1 || status=$?
    local reports
    reports=$(grep -c -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log" || true)
    local last
    last=$(grep -v '^$' "$log" | tail -1)
    printf '%-10s exit %-3s sanitizer reports %-3s last line: %s\n' "$name" "$status" "$reports" "$last"
    if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ] || [ "$last" != ok ]; then
        failed=1
        grep -E 'SUMMARY|ERROR|runtime error' "$log" | head -5 || true
    fi
}
run layout layout
run cancel cancel "$m" 5
run threads threads "$m" 4
run interrupt interrupt "$m"
run chat chat "$m"
run defaults defaults "$m" 8
run race race "$m" 4 2
run abuse abuse "$m" "$work/corrupt.gguf" "$work/truncated.gguf"
exit "$failed"
