#!/usr/bin/env bash
# Benchmark of thread counts (docs/performance.md, "Threads"): seconds per denoising step at
# 1, 2 and 4 threads, on a quiet machine and with one competing busy process, with ggml's
# workers sleeping between graphs (unmask's setting) and polling (ggml's default, through
# UNMASK_GGML_POLL=50). Every configuration runs once per round, interleaved, and the report
# gives the median over the rounds. Writes target/bench-threads/report.md and a JSON file per run.
#
#   scripts/bench-threads.sh [--rounds N] [--quick]
#
# --quick: the tiny model at 1 and 2 threads, one round (a check that the script works, seconds;
# tests/tests/bench_threads_script.rs runs it). BIN_DIR (default: $CARGO_TARGET_DIR/release or
# target/release) holds the binaries, OUT_DIR (default: target/bench-threads) takes the results.
# Needs the release binaries (cargo build --release -p unmask-runtime -p unmask-quantize).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
quick=0
thread_counts="1 2 4"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --quick) quick=1; rounds=1; thread_counts="1 2"; shift ;;
        *) echo "usage: $0 [--rounds N] [--quick]" >&2; exit 2 ;;
    esac
done
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
out=${OUT_DIR:-target/bench-threads}
mkdir -p "$out"
for exe in unmask unmask-quantize; do
    [ -x "$bin/$exe" ] || { echo "missing $bin/$exe: cargo build --release -p unmask-runtime -p unmask-quantize" >&2; exit 1; }
done

model() { # preset type -> path (made once)
    local f="$out/$1-$2.gguf"
    [ -f "$f" ] || "$bin/unmask-quantize" synth --preset "$1" --gguf "$f" --type "$2" --seed 7 --force >&2
    echo "$f"
}

busy_pid=
stop_busy() { [ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null; wait "$busy_pid" 2>/dev/null || true; busy_pid=; }
trap stop_busy EXIT INT TERM
start_busy() { # one process spinning on one core, as another program would
    python3 -c 'while True: pass' &
    busy_pid=$!
}

# name model-path bench-args...
declare -a names files extra
add() { names+=("$1"); files+=("$2"); shift 2; extra+=("$*"); }
tiny=$(model tiny q8_0)
add tiny "$tiny" --gen 64 --steps 64
if [ "$quick" = 0 ]; then
    half=$(model 0.5b q4_k_m)
    # Seconds per step do not change over a run: a few passes suffice.
    add 0.5b-q4_k_m "$half" --gen 256 --steps 256 --passes 4
fi

rm -f "$out"/run-*.json
for round in $(seq 1 "$rounds"); do
    for m in "${!names[@]}"; do
        for busy in 0 1; do
            [ "$busy" = 1 ] && start_busy
            for poll in 0 50; do
                for t in $thread_counts; do
                    name="${names[$m]}-t$t-busy$busy-poll$poll-r$round"
                    echo "bench-threads: $name" >&2
                    # shellcheck disable=SC2086
                    UNMASK_GGML_POLL=$poll "$bin/unmask" bench -m "${files[$m]}" --threads "$t" \
                        --no-llama --json ${extra[$m]} 2>/dev/null > "$out/run-$name.json"
                done
            done
            [ "$busy" = 1 ] && stop_busy
        done
    done
done

python3 - "$out" <<'PY'
import json, pathlib, platform, re, statistics, sys
out = pathlib.Path(sys.argv[1])
cpu = "unknown CPU"
for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
import os
cpus = os.cpu_count()
runs = {}
for f in sorted(out.glob("run-*.json")):
    m = re.match(r"run-(.+)-t(\d+)-busy(\d)-poll(\d+)-r\d+\.json", f.name)
    model, t, busy, poll = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    runs.setdefault((model, busy, poll, t), []).append(json.loads(f.read_text())["seconds_per_step"])
models = sorted({k[0] for k in runs}, key=lambda m: (m != "tiny", m))
lines = [f"Machine: {cpu}, {cpus} logical CPUs. Median seconds per denoising step over "
         f"{max(len(v) for v in runs.values())} interleaved round(s); busy = one other process "
         "spinning on a core; poll = ggml's worker polling level between graphs (0: sleep, "
         "unmask's setting; 50: ggml's default).", ""]
lines.append("| model | busy | poll | 1 thread | 2 threads | 4 threads |")
lines.append("|---|---|---|---|---|---|")
for model in models:
    for busy in (0, 1):
        for poll in (0, 50):
            cells = []
            for t in (1, 2, 4):
                v = runs.get((model, busy, poll, t))
                cells.append(f"{statistics.median(v):.4f} s" if v else "-")
            lines.append(f"| {model} | {'yes' if busy else 'no'} | {poll} | " + " | ".join(cells) + " |")
report = "\n".join(lines) + "\n"
(out / "report.md").write_text(report)
print(report)
PY
