#!/usr/bin/env bash
# Trains a small Dream-architecture Python model from nothing on this machine (docs/training.md,
# "A model of your own"): the corpus (the standard library of the machine's Python), a 4096-entry
# tokenizer, a fresh model of 6.8 M parameters (hidden 256, 6 layers, 4 heads / 2 KV heads, FFN 768),
# then masked-diffusion pretraining on packed 256-token windows. Every stage skips what already
# exists and pretraining resumes from its latest checkpoint, so the script can be stopped at any
# time (Ctrl-C, --minutes, a reboot) and run again to continue. Checkpoints stay in the work
# folder, outside the repository.
#
#   scripts/train-model.sh [--minutes N] [--steps N] [--work DIR]
#
# --minutes: stop pretraining after N minutes (it checkpoints every 100 updates and on the way
# out); --steps: updates of the whole pretraining run [default 20000: 41 M tokens, about 12 passes
# over the corpus]; --work: where everything goes [default ~/.cache/unmask/model-run]. BIN_DIR
# (default: $CARGO_TARGET_DIR/release or target/release) holds unmask-train; THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=0
steps=20000
work=${HOME}/.cache/unmask/model-run
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        *) echo "usage: $0 [--minutes N] [--steps N] [--work DIR]" >&2; exit 2 ;;
    esac
done
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
train="$bin/unmask-train"
[ -x "$train" ] || { echo "missing $train: cargo build --release -p unmask-train" >&2; exit 1; }
threads=${THREADS:-2}
mkdir -p "$work"
log() { echo "train-model: $*" >&2; }

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

pretrain=(sft --out "$work/pretrain")
if [ -f "$work/pretrain/latest" ]; then
    log "pretraining: resuming from $(cat "$work/pretrain/latest")"
    pretrain+=(--resume)
else
    log "pretraining: $steps updates"
    pretrain+=(--model "$work/fresh" --data "$work/corpus/train" --pack true --chat false
        --max-len 256 --micro-batch 8 --grad-accum 1 --steps "$steps" --lr 1e-3 --warmup-steps 200
        --max-grad-norm 1.0 --save-every 100 --keep 2 --seed 0)
fi
pretrain+=(--threads "$threads")
if [ "$minutes" -gt 0 ]; then
    # SIGTERM at the limit: the run stops between updates or removes a partial checkpoint, and
    # the next run resumes from the last complete one.
    status=0
    timeout --signal=TERM "${minutes}m" "$train" "${pretrain[@]}" || status=$?
    if [ "$status" = 124 ]; then log "stopped after $minutes minutes; run again to continue"; exit 0; fi
    exit "$status"
fi
"$train" "${pretrain[@]}"
log "pretraining done: $work/pretrain/$(cat "$work/pretrain/latest")"
