#!/usr/bin/env bash
# Training speed, unmask against PyTorch (docs/performance.md, "Training"): tokens per second of
# one SFT update (forward, backward, gradient clipping, AdamW) on the same model, batch, loss,
# optimizer and thread count, unmask-train and a plain PyTorch loop
# (tests/python/bench_train_torch.py) taking turns, round by round. The report gives each side's
# median over the rounds and their ratio. Writes target/bench-train/report.md.
#
#   scripts/bench-train.sh [--rounds N] [--updates N] [--shape 5m|0.5b|tiny] [--quick]
#
# Shapes: 5m (hidden 256, 6 layers, 4 heads / 2 KV heads, FFN 768, vocabulary 1024; 5.2 M
# parameters, batch 8 x 256 tokens), 0.5b (Qwen2.5-0.5B's layers and vocabulary, batch 2 x 256),
# tiny (2 layers, batch 4 x 64). --updates: timed updates per run (default 4; one more warms
# up). --quick: tiny, one round, one timed update (a check that the
# script works; tests/tests/bench_train_script.rs runs it). Threads: THREADS (default 2). BIN_DIR
# (default: $CARGO_TARGET_DIR/release or target/release) holds the binaries, OUT_DIR (default:
# target/bench-train) takes the results, UNMASK_PYTHON the interpreter with torch (default:
# ~/.cache/unmask/venv/bin/python, made by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
shape=5m
updates=4
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --shape) shape=$2; shift 2 ;;
        --updates) updates=$2; shift 2 ;;
        --quick) shape=tiny; rounds=1; updates=1; shift ;;
        *) echo "usage: $0 [--rounds N] [--updates N] [--shape 5m|0.5b|tiny] [--quick]" >&2; exit 2 ;;
    esac
done
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
out=${OUT_DIR:-target/bench-train}
py=${UNMASK_PYTHON:-$HOME/.cache/unmask/venv/bin/python}
threads=${THREADS:-2}
for exe in unmask-train unmask-quantize; do
    [ -x "$bin/$exe" ] || { echo "missing $bin/$exe: cargo build --release -p unmask-train -p unmask-quantize" >&2; exit 1; }
done
"$py" -c 'import torch, transformers' 2>/dev/null || { echo "$py lacks torch/transformers (run .ci/run once, or set UNMASK_PYTHON)" >&2; exit 1; }
mkdir -p "$out"

case "$shape" in
    5m) preset=tiny; batch=8; len=256
        config='{"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024}' ;;
    0.5b) preset=0.5b; batch=2; len=256; config='{}' ;;
    tiny) preset=tiny; batch=4; len=64; config='{}' ;;
    *) echo "unknown shape $shape (5m, 0.5b, tiny)" >&2; exit 2 ;;
esac

# The model: a synthetic checkpoint of the preset (config, tokenizer) with the shape applied and
# fresh float32 weights (Qwen2's initialisation), made once.
model="$out/model-$shape"
if [ ! -f "$model/model.safetensors" ]; then
    [ -f "$out/template-$preset/config.json" ] ||
        "$bin/unmask-quantize" synth --preset "$preset" --hf "$out/template-$preset" --seed 7 >&2
    "$py" tests/python/bench_train_torch.py --model "$out/template-$preset" --make-model "$model" --shape "$config" >&2
fi
# Training text for unmask-train: windows of $len tokens (token 0 the prompt, as on the PyTorch
# side). The Python standard library, as any machine with Python has it.
data="$out/text-$shape.txt"
if [ ! -s "$data" ]; then
    "$py" - "$data" <<'EOF'
import pathlib, sys, sysconfig
lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
files = sorted(p for p in lib.glob("*.py"))[:200]
pathlib.Path(sys.argv[1]).write_text("\n".join(p.read_text(errors="replace") for p in files))
EOF
fi

run_unmask() { # -> tokens/s (median over the timed updates)
    local dir="$out/unmask-run"
    rm -rf "$dir"
    "$bin/unmask-train" sft --model "$model" --data "$data" --out "$dir" --max-len "$len" \
        --micro-batch "$batch" --grad-accum 1 --steps $((updates + 1)) --save-every 0 --threads "$threads" \
        --lr 1e-4 --max-grad-norm 1.0 >/dev/null 2>"$out/unmask-stderr.txt" || { cat "$out/unmask-stderr.txt" >&2; exit 1; }
    "$py" - "$dir/metrics.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if "tokens_per_s" in r][1:]  # the first update warms up
print(round(statistics.median(r["tokens_per_s"] for r in rows), 1))
EOF
}
run_torch() {
    "$py" tests/python/bench_train_torch.py --model "$model" --batch "$batch" --len "$len" \
        --updates "$updates" --threads "$threads" --vocab-limit 500 \
        | "$py" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])'
}

declare -a ours theirs
for round in $(seq 1 "$rounds"); do
    ours+=("$(run_unmask)")
    theirs+=("$(run_torch)")
    echo "round $round: unmask ${ours[-1]} tokens/s, pytorch ${theirs[-1]} tokens/s" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
u=$(median "${ours[@]}")
p=$(median "${theirs[@]}")
ratio=$(awk -v u="$u" -v p="$p" 'BEGIN {printf "%.2f", u / p}')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
torch_version=$("$py" -c 'import torch; print(torch.__version__)')
{
    echo "# Training speed: unmask-train sft vs PyTorch"
    echo
    echo "Machine: $cpu, $(nproc) CPUs; $threads threads; torch $torch_version."
    echo "Shape $shape: batch $batch x $len tokens per update, $updates timed updates per run, $rounds rounds, interleaved."
    echo
    echo "| | tokens/s (median) | per round |"
    echo "|---|---:|---|"
    echo "| unmask-train | $u | ${ours[*]} |"
    echo "| PyTorch | $p | ${theirs[*]} |"
    echo
    echo "unmask / PyTorch: **${ratio}x**"
} | tee "$out/report.md"
