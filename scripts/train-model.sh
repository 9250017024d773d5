#!/usr/bin/env bash
# Trains the small Dream-architecture Python model that ships in models/unmask-python-7m, from
# nothing, on this machine (docs/training.md, "A model of your own"; the model card lists what one
# run gave):
#
#   1. corpus: the standard library of the machine's Python, split by file into train/held-out;
#   2. a 4096-entry byte-level BPE tokenizer with Dream's special tokens;
#   3. a fresh model of 6.8 M parameters (hidden 256, 6 layers, 4 heads / 2 KV heads, FFN 768);
#   4. masked-diffusion pretraining on packed 256-token windows (--pretrain-steps updates of 8);
#   5. function-level pairs (signature + docstring -> body) from the train and held-out files;
#   6. SFT on the train pairs in the Instruct format, each answer filled with <|dlm_pad|> to the
#      64-token canvas it is generated in (--sft-steps updates of 16);
#   7. export: the final weights with the generation settings of models/unmask-python-7m
#      (GENERATION below) quantized to q8_0 in the work folder, the held-out eval (`unmask
#      eval`) and the loss plot (scripts/plot-training.py, with the Python environment of the
#      tests).
#
# Every stage skips what already exists and the training stages resume from their latest
# checkpoint, so the script can be stopped at any time (Ctrl-C, --minutes, a reboot) and run
# again to continue. Checkpoints stay in the work folder, outside the repository; copying the
# export into models/ is left to the caller (--ship does it).
#
#   scripts/train-model.sh [--minutes N] [--pretrain-steps N] [--sft-steps N] [--work DIR] [--ship]
#
# --minutes: stop after N minutes of training (a stage stops between updates and the next run
# resumes it); --pretrain-steps [default 3000: 6.1 M tokens, about 1.9 passes over the corpus];
# --sft-steps [default 1000]; --work: where everything goes [default ~/.cache/unmask/model-run];
# --ship: copy the export (model.gguf, tokenizer.json, eval.json, loss.png, the held-out pairs)
# into models/unmask-python-7m. BIN_DIR (default: $CARGO_TARGET_DIR/release or target/release)
# holds unmask-train, unmask-quantize and unmask; THREADS (default 2); PYTHON (default: the
# tests' environment, ~/.cache/unmask/venv/bin/python, else python3) draws the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=0
pretrain_steps=3000
sft_steps=1000
work=${HOME}/.cache/unmask/model-run
ship=0
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --pretrain-steps) pretrain_steps=$2; shift 2 ;;
        --sft-steps) sft_steps=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --ship) ship=1; shift ;;
        *) echo "usage: $0 [--minutes N] [--pretrain-steps N] [--sft-steps N] [--work DIR] [--ship]" >&2; exit 2 ;;
    esac
done
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
for tool in unmask-train unmask-quantize unmask; do
    [ -x "$bin/$tool" ] || { echo "missing $bin/$tool: cargo build --release -p unmask-train -p unmask-quantize -p unmask-runtime" >&2; exit 1; }
done
train="$bin/unmask-train"
threads=${THREADS:-2}
python=${PYTHON:-${HOME}/.cache/unmask/venv/bin/python}
[ -x "$python" ] || python=python3
# The canvas the model answers in, and the settings stored in the shipped file (the runtime's
# defaults for it; each is a flag of `unmask generate`).
canvas=64
GENERATION="{\"max_new_tokens\": $canvas, \"steps\": $canvas, \"block_length\": 16, \"temperature\": 0.0, \"top_p\": 0.95, \"alg\": \"entropy\", \"alg_temp\": 0.0}"
shipped=models/unmask-python-7m
mkdir -p "$work"
log() { echo "train-model: $*" >&2; }
deadline=$(( $(date +%s) + minutes * 60 ))

# Runs one training stage (its arguments), under the time left when --minutes is given; returns
# 0 when the stage finished, 3 when the time ran out.
train_stage() {
    if [ "$minutes" -gt 0 ]; then
        left=$(( deadline - $(date +%s) ))
        [ "$left" -gt 0 ] || return 3
        # SIGTERM at the limit: the run stops between updates or removes a partial checkpoint,
        # and the next run resumes from the last complete one.
        status=0
        timeout --signal=TERM "$left" "$train" "$@" || status=$?
        if [ "$status" = 124 ]; then return 3; fi
        return "$status"
    fi
    "$train" "$@"
}

# The stage in $1 is complete when its latest checkpoint is its last update.
finished() {
    [ -f "$1/latest" ] && [ "$(cat "$1/latest")" = "checkpoint-$2" ]
}

[ -d "$work/corpus" ] || { log "corpus"; "$train" corpus --out "$work/corpus" >&2; }
[ -f "$work/tokenizer.json" ] || {
    log "tokenizer"
    "$train" tokenizer --data "$work/corpus/train" --vocab-size 4096 --out "$work/tokenizer.json" >&2
}
[ -d "$work/fresh" ] || {
    log "fresh model"
    "$train" init --tokenizer "$work/tokenizer.json" --out "$work/fresh" --hidden 256 --layers 6 \
        --heads 4 --kv-heads 2 --intermediate 768 --seed 0 >&2
}

# Runs the training stage of folder $2 ($1 names it) to $3 updates: resumes it from its latest
# checkpoint, or starts it with the rest of the arguments; exits the script when --minutes ran out.
stage() {
    local name=$1 out=$2 steps=$3 status=0
    shift 3
    finished "$out" "$steps" && return 0
    if [ -f "$out/latest" ]; then
        log "$name: resuming from $(cat "$out/latest")"
        train_stage sft --out "$out" --resume --threads "$threads" || status=$?
    else
        log "$name: $steps updates"
        train_stage sft --out "$out" --steps "$steps" --grad-accum 1 --max-grad-norm 1.0 \
            --save-every 100 --keep 2 --seed 0 --threads "$threads" "$@" || status=$?
    fi
    if [ "$status" = 3 ]; then log "stopped after $minutes minutes; run again to continue"; exit 0; fi
    [ "$status" = 0 ] || exit "$status"
}

stage pretraining "$work/pretrain" "$pretrain_steps" --model "$work/fresh" \
    --data "$work/corpus/train" --pack true --chat false --max-len 256 --micro-batch 8 \
    --lr 1e-3 --warmup-steps 200

[ -f "$work/pairs-train.jsonl" ] || {
    log "pairs"
    "$train" pairs --data "$work/corpus/train" --max-body-lines 12 --out "$work/pairs-train.jsonl" >&2
}
[ -f "$work/pairs-heldout.jsonl" ] || \
    "$train" pairs --data "$work/corpus/held-out" --max-body-lines 12 --out "$work/pairs-heldout.jsonl" >&2

stage SFT "$work/sft" "$sft_steps" --model "$work/pretrain/checkpoint-$pretrain_steps" \
    --data "$work/pairs-train.jsonl" --chat true --append-eos false --response-len "$canvas" \
    --max-len 192 --micro-batch 16 --lr 5e-4 --warmup-steps 50

log "export"
export_dir="$work/export"
rm -rf "$export_dir.tmp"
mkdir -p "$export_dir.tmp/hf"
final="$work/sft/checkpoint-$sft_steps"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    cp "$final/$f" "$export_dir.tmp/hf/"
done
"$python" - "$final/generation_config.json" "$export_dir.tmp/hf/generation_config.json" "$GENERATION" <<'EOF'
import json, sys
config = json.load(open(sys.argv[1]))
config.update(json.loads(sys.argv[3]))
json.dump(config, open(sys.argv[2], "w"), indent=2)
EOF
"$bin/unmask-quantize" "$export_dir.tmp/hf" "$export_dir.tmp/model.gguf" --type q8_0 >&2
cp "$work/tokenizer.json" "$export_dir.tmp/tokenizer.json"
cp "$work/pairs-heldout.jsonl" "$export_dir.tmp/heldout-pairs.jsonl"
texts=()
for f in "$work"/corpus/held-out/*.py; do texts+=(--text "$f"); done
"$bin/unmask" eval -m "$export_dir.tmp/model.gguf" --pairs "$work/pairs-heldout.jsonl" --limit 1000 \
    "${texts[@]}" --windows 64 --threads "$threads" --json > "$export_dir.tmp/eval.json"
cat "$export_dir.tmp/eval.json" >&2
"$python" scripts/plot-training.py --pretrain "$work/pretrain/metrics.jsonl" --sft "$work/sft/metrics.jsonl" \
    --out "$export_dir.tmp/loss.png" >&2 || log "no loss plot (scripts/plot-training.py needs matplotlib)"
rm -rf "$export_dir"
mv "$export_dir.tmp" "$export_dir"
log "exported to $export_dir"
if [ "$ship" = 1 ]; then
    mkdir -p "$shipped"
    for f in model.gguf tokenizer.json eval.json loss.png heldout-pairs.jsonl; do
        [ -f "$export_dir/$f" ] && cp "$export_dir/$f" "$shipped/$f"
    done
    log "copied into $shipped (its README.md, the model card, is written by hand)"
fi
