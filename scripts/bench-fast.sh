#!/usr/bin/env bash
# Benchmark of the decoding modes (docs/performance.md, "Fast decoding"): exact decoding against
# the key/value-cache and threshold modes on synthetic models, with libllama's full-canvas forward
# measured in the same runs. Writes target/bench-fast/report.md (a markdown table) and one JSON
# file per row next to it.
#
#   scripts/bench-fast.sh [--threads N] [--types "q4_k_m q8_0"] [--no-7b]
#
# Needs the release binaries (cargo build --release -p unmask-runtime -p unmask-quantize).
# Synthetic weights are random: tokens per pass and quality say nothing about a real model here.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2
types="q4_k_m q8_0"
seven=1
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --types) types=$2; shift 2 ;;
        --no-7b) seven=0; shift ;;
        *) echo "usage: $0 [--threads N] [--types \"q4_k_m q8_0\"] [--no-7b]" >&2; exit 2 ;;
    esac
done
bin=${CARGO_TARGET_DIR:-target}/release
out=target/bench-fast
mkdir -p "$out"
for exe in unmask unmask-quantize; do
    [ -x "$bin/$exe" ] || { echo "missing $bin/$exe: cargo build --release -p unmask-runtime -p unmask-quantize" >&2; exit 1; }
done

model() { # preset type -> path (made once)
    local f="$out/$1-$2.gguf"
    [ -f "$f" ] || "$bin/unmask-quantize" synth --preset "$1" --gguf "$f" --type "$2" --seed 7 --force >&2
    echo "$f"
}

row() { # name file args...
    local name=$1 file=$2; shift 2
    echo "bench: $name" >&2
    "$bin/unmask" bench -m "$file" --threads "$threads" --prompt-tokens 30 --gen 256 --json "$@" \
        > "$out/$name.json"
}

for ty in $types; do
    f=$(model 0.5b "$ty")
    # Seconds per pass do not change over a run: 64 of the 256 passes suffice.
    row "0.5b-$ty-exact-256" "$f" --steps 256 --passes 64 --llama-runs 2
    row "0.5b-$ty-exact-64" "$f" --steps 64 --llama-runs 2
    row "0.5b-$ty-prefix-64" "$f" --steps 64 --cache prefix --block-length 32 --llama-runs 2
    row "0.5b-$ty-dual-64" "$f" --steps 64 --cache dual --block-length 32 --llama-runs 2
    row "0.5b-$ty-dual-t0.9" "$f" --steps 256 --cache dual --block-length 32 --threshold 0.9 --llama-runs 2
done
if [ "$seven" = 1 ]; then
    f=$(model 7b q4_k_m)
    # A few passes suffice: seconds per pass do not change over a run.
    row "7b-q4_k_m-exact-256" "$f" --steps 256 --passes 3 --llama-runs 1
    row "7b-q4_k_m-dual-t0.9" "$f" --steps 256 --cache dual --block-length 32 --threshold 0.9 --passes 10 --llama-runs 1
fi

python3 - "$out" <<'PY'
import json, pathlib, platform, sys
out = pathlib.Path(sys.argv[1])
rows = sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
lines = [f"Machine: {cpu}, {len(rows) and json.loads(rows[0].read_text())['threads']} threads. "
         "Synthetic random weights: tokens per pass and quality are not a real model's.", "",
         "| model | mode | passes | tokens/pass | layers s/full pass | layers s/cached pass | tokens/s | peak RSS MiB | cache MiB | libllama forward s | partial |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for p in rows:
    r = json.loads(p.read_text())
    mode = p.stem.split("-", 2)[2]
    # Layers only (output projection and scoring excluded), per kind of pass.
    full = r["seconds_per_refresh"] or r["layers_seconds_per_pass"]
    cached = r["seconds_per_cached_pass"]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    lines.append(f"| {'-'.join(p.stem.split('-')[:2])} | {mode} | {r['forward_passes']} | "
                 f"{r['tokens_per_forward']:.2f} | {full:.3f} | {fmt(cached, '.3f')} | {r['tokens_per_second']:.2f} | "
                 f"{r['peak_rss_mib']:.0f} | {r['cache_mib']:.1f} | {fmt(r['llama_forward_seconds'], '.3f')} | {'yes' if r['partial'] else ''} |")
report = "\n".join(lines) + "\n"
(out / "report.md").write_text(report)
print(report)
PY
