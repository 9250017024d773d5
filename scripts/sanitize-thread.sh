#!/usr/bin/env bash
# The C API under ThreadSanitizer, with the library itself instrumented (docs/reliability.md,
# "Sanitizers"): libunmask is built by nightly Rust with -Zsanitizer=thread and -Zbuild-std (the
# standard library instrumented too), ggml and llama.cpp by gcc with -fsanitize=thread, and the C
# test program (ffi/tests/c/api_test.c) likewise; the program links the ThreadSanitizer runtime
# that nightly Rust ships, the one its instrumentation was made for. Modes:
#
#   race       THREADS contexts on one model generate at once (2 compute threads each) and call
#              the model's text functions, while the main thread cancels a long generation on
#              one more context every millisecond; each generation must equal its solo run
#   threads    two contexts at once, results equal to the single-threaded runs
#   interrupt  cancels from a second thread while one generation runs
#
# Prints one line per mode with its exit status and ThreadSanitizer's report count, and the
# reports' summaries; exit status 1 when a mode fails or anything is reported.
#
#   scripts/sanitize-thread.sh [--threads N] [--rounds R]     # defaults: 4 threads, 3 rounds
#
# Needs the nightly toolchain with rust-src (rustup component add rust-src --toolchain nightly),
# gcc with libtsan, and the release unmask-quantize (cargo build --release -p unmask-quantize)
# for the test model. The first run compiles the standard library, the Rust dependencies, ggml
# and llama.cpp with instrumentation (about 25 minutes on 2 cores); later runs reuse
# TSAN_TARGET (default ~/.cache/unmask/target-tsan) and take about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=4
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sanitize-thread: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done

bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
[ -x "$bin/unmask-quantize" ] ||
    { echo "missing $bin/unmask-quantize: cargo build --release -p unmask-quantize" >&2; exit 1; }
cargo +nightly --version >/dev/null 2>&1 ||
    { echo "sanitize-thread: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
sysroot=$(rustc +nightly --print sysroot)
[ -d "$sysroot/lib/rustlib/src/rust/library" ] ||
    { echo "sanitize-thread: needs rust-src for nightly (rustup component add rust-src --toolchain nightly)" >&2; exit 1; }
host=$(rustc +nightly -vV | awk '/^host:/ {print $2}')
runtime="$sysroot/lib/rustlib/$host/lib/librustc-nightly_rt.tsan.a"
[ -f "$runtime" ] || { echo "sanitize-thread: nightly has no ThreadSanitizer runtime for $host" >&2; exit 1; }

target_dir=${TSAN_TARGET:-$HOME/.cache/unmask/target-tsan}
work=${SANITIZE_WORK:-target/sanitize-thread}
rm -rf "$work"
mkdir -p "$work/lib"

echo "sanitize-thread: building libunmask with -Zsanitizer=thread in $target_dir"
start=$(date +%s)
# RUSTFLAGS with --target reach only the target's crates, not build scripts or proc macros.
# CFLAGS/CXXFLAGS reach ggml's and llama.cpp's cmake build through the cc and cmake crates.
RUSTFLAGS="-Zsanitizer=thread -Cforce-frame-pointers=yes" \
    CFLAGS="-fsanitize=thread -g" CXXFLAGS="-fsanitize=thread -g" \
    cargo +nightly build -Zbuild-std --target "$host" --release -p unmask-ffi \
    --target-dir "$target_dir" >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; exit 1; }
echo "sanitize-thread: built in $(($(date +%s) - start)) s"
lib="$target_dir/$host/release/libunmask.so"
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
cp "$lib" "$work/lib/$soname"
ln -sf "$soname" "$work/lib/libunmask.so"
# Instrumented, linked with nightly Rust's runtime (whole archive, its symbols exported for the
# library) instead of gcc's libtsan, so both halves use one runtime.
cc -std=c11 -g -O1 -fsanitize=thread -fno-omit-frame-pointer -I ffi/include \
    -c ffi/tests/c/api_test.c -o "$work/api_test.o"
cc "$work/api_test.o" -o "$work/api_test" -L"$work/lib" -lunmask \
    -Wl,-rpath,"$(cd "$work/lib" && pwd)" \
    -Wl,--whole-archive "$runtime" -Wl,--no-whole-archive -rdynamic -lpthread -ldl -lm -lrt -lstdc++

# The checks can fail: the library carries the instrumentation (Rust's and ggml's calls into the
# runtime), and a deliberate data race in a program built the same way is reported.
imports=$(nm -D "$lib")
for sym in __tsan_func_entry __tsan_atomic32_load; do
    grep -q " U $sym\$" <<<"$imports" || { echo "sanitize-thread: $lib is not instrumented ($sym)" >&2; exit 1; }
done
cat >"$work/canary.c" <<'C'
#include <pthread.h>
static int shared;
static void *bump(void *arg) { (void)arg; for (int i = 0; i < 1000; i++) shared++; return 0; }
int main(void) {
    pthread_t a, b;
    pthread_create(&a, 0, bump, 0);
    pthread_create(&b, 0, bump, 0);
    pthread_join(a, 0);
    pthread_join(b, 0);
    return shared == 0;
}
C
cc -g -O1 -fsanitize=thread -c "$work/canary.c" -o "$work/canary.o"
cc "$work/canary.o" -o "$work/canary" -Wl,--whole-archive "$runtime" -Wl,--no-whole-archive -rdynamic \
    -lpthread -ldl -lm -lrt -lstdc++
canary_reports=$(TSAN_OPTIONS="halt_on_error=0 exitcode=0" "$work/canary" 2>&1 | grep -c 'WARNING: ThreadSanitizer: data race' || true)
printf '%-10s ThreadSanitizer reports %s (a deliberate data race: must be at least 1)\n' canary "$canary_reports"
[ "$canary_reports" -ge 1 ] || { echo "sanitize-thread: the runtime did not see a deliberate race" >&2; exit 1; }

"$bin/unmask-quantize" synth --preset tiny --gguf "$work/tiny.gguf" --type q8_0 --force >"$work/synth.log" 2>&1

export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 history_size=4"
export RUST_BACKTRACE=0 UNMASK_BACKEND_DIR=/nonexistent-unmask-backends
m="$work/tiny.gguf"
failed=0
run() { # name args...
    local name=$1; shift
    local log="$work/$name.log" status=0 start
    start=$(date +%s)
    "$work/api_test" "$@" >"$log" 2>&1 || status=$?
    local reports last
    reports=$(grep -c 'WARNING: ThreadSanitizer' "$log" || true)
    last=$(grep -v '^$' "$log" | tail -1)
    printf '%-10s exit %-3s ThreadSanitizer reports %-3s %4s s  last line: %s\n' "$name" "$status" "$reports" \
        "$(($(date +%s) - start))" "$last"
    grep -E '^race:' "$log" || true
    if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ] || [ "$last" != ok ]; then
        failed=1
        grep -E 'SUMMARY|WARNING: ThreadSanitizer|FAIL' "$log" | sort | uniq -c | head -20 || true
    fi
}
run race race "$m" "$threads" "$rounds"
run threads threads "$m" 2
run interrupt interrupt "$m"
exit "$failed"
