#!/usr/bin/env bash
# The speed-for-quality yardstick of a model (README, models/unmask-python-7m/README.md): every
# quantization type and every decoding mode, each scored by `unmask eval` on the same held-out
# function prompts with the same settings otherwise, in one run on one machine.
#
#   scripts/yardstick.sh --hf DIR --pairs FILE [--limit N] [--canvas N] [--types "f32 f16 q8_0 ..."] [--out FILE]
#
# --hf: the model's Hugging Face folder (scripts/train-model.sh leaves it in
# ~/.cache/unmask/model-run/export/hf); --pairs: held-out pairs (`unmask-train pairs`);
# --limit: pairs per row [default 64]; --types [default: f32 f16 bf16 q8_0 q6_k q5_k_m q4_k_m
# q4_0]; --canvas: new tokens per answer [default 64, the shipped model's]; --out: also write the
# two tables to FILE. Every row uses the model file's sampling settings and the same canvas; the
# decoding-mode rows use the q8_0 file. BIN_DIR
# (default: $CARGO_TARGET_DIR/release or target/release) holds unmask-quantize and unmask;
# THREADS [default 2]. Prints two markdown tables: file size, tokens/s, parse rate and exact first
# lines per type, and tokens/s (with the speed-up over exact decoding), parse rate and exact first
# lines per decoding mode.
set -euo pipefail
cd "$(dirname "$0")/.."
hf=""
pairs=""
limit=64
canvas=64
types="f32 f16 bf16 q8_0 q6_k q5_k_m q4_k_m q4_0"
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hf) hf=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        --limit) limit=$2; shift 2 ;;
        --canvas) canvas=$2; shift 2 ;;
        --types) types=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 --hf DIR --pairs FILE [--limit N] [--types LIST] [--out FILE]" >&2; exit 2 ;;
    esac
done
[ -n "$hf" ] && [ -n "$pairs" ] || { echo "usage: $0 --hf DIR --pairs FILE [--limit N] [--types LIST] [--out FILE]" >&2; exit 2; }
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
threads=${THREADS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One `unmask eval` row: its JSON report on stdout.
evaluate() {
    local model=$1
    shift
    "$bin/unmask" eval -m "$model" --pairs "$pairs" --limit "$limit" --threads "$threads" \
        --max-new-tokens "$canvas" --json "$@"
}
field() { python3 -c "import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(v)" "$1" "$2"; }
pct() { python3 -c "import sys; print(f'{100*float(sys.argv[1]):.1f}%')" "$1"; }

machine=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
    echo "Machine: $machine, $threads threads; $limit held-out pairs ($(basename "$pairs")) per row, $canvas new tokens each."
    echo "Blocks: the model file's block length where it stores one, else none for exact decoding and 32 with a cache."
    echo
    echo "| type | file | tokens/s | parses | first line exact |"
    echo "|---|---:|---:|---:|---:|"
} > "$work/types.md"
for t in $types; do
    echo "yardstick: $t" >&2
    "$bin/unmask-quantize" "$hf" "$work/$t.gguf" --type "$t" --force >/dev/null 2>&1 || {
        echo "| $t | (not convertible) | | | |" >> "$work/types.md"; continue; }
    size=$(python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1])/2**20:.1f} MiB')" "$work/$t.gguf")
    r=$(evaluate "$work/$t.gguf")
    printf '| %s | %s | %.1f | %s | %s |\n' "$t" "$size" "$(field "$r" tokens_per_s)" \
        "$(pct "$(field "$r" parse_rate)")" "$(pct "$(field "$r" first_line_exact)")" >> "$work/types.md"
done

base="$work/q8_0.gguf"
[ -f "$base" ] || "$bin/unmask-quantize" "$hf" "$base" --type q8_0 --force >/dev/null 2>&1
{
    echo
    echo "| decoding (q8_0) | tokens/s | speed-up | parses | first line exact |"
    echo "|---|---:|---:|---:|---:|"
} > "$work/modes.md"
exact_tps=""
while IFS='|' read -r name flags; do
    echo "yardstick: $name" >&2
    # shellcheck disable=SC2086
    r=$(evaluate "$base" $flags)
    tps=$(field "$r" tokens_per_s)
    [ -n "$exact_tps" ] || exact_tps=$tps
    printf '| %s | %.1f | %.2fx | %s | %s |\n' "$name" "$tps" \
        "$(python3 -c "import sys; print(float(sys.argv[1])/float(sys.argv[2]))" "$tps" "$exact_tps")" \
        "$(pct "$(field "$r" parse_rate)")" "$(pct "$(field "$r" first_line_exact)")" >> "$work/modes.md"
done <<EOF
exact (one token per step)|--steps $canvas
exact, half the steps|--steps $((canvas / 2))
parallel, threshold 0.9 (no cache)|--threshold 0.9 --steps $canvas
prefix cache|--cache prefix --steps $canvas
dual cache|--cache dual --steps $canvas
dual cache + threshold 0.9|--cache dual --threshold 0.9
EOF
cat "$work/types.md" "$work/modes.md"
if [ -n "$out" ]; then cat "$work/types.md" "$work/modes.md" > "$out"; fi
