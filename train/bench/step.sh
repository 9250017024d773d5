#!/bin/bash
# Training-step benchmark: unmask-train vs the PyTorch reference, same inputs, 2 threads.
# BIN_DIR (default: $CARGO_TARGET_DIR/release or target/release) holds the binaries,
# UNMASK_PYTHON the interpreter with torch (default: ~/.cache/unmask/venv/bin/python).
set -e
cd "$(dirname "$0")/../.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
Q=$bin/unmask-quantize; T=$bin/unmask-train; PY=${UNMASK_PYTHON:-$HOME/.cache/unmask/venv/bin/python}
B=${BENCH_DIR:-/tmp/unmask-train-bench}; mkdir -p $B
[ -d $B/tiny ] || $Q synth --preset tiny --hf $B/tiny --seed 1 --quiet
[ -d $B/05b ] || $Q synth --preset 0.5b --hf $B/05b --seed 1 --quiet
for m in tiny 05b; do
  n=4; [ $m = 05b ] && n=2
  $PY tests/python/grpo_reference.py make-inputs --hf $B/$m --out $B/$m-in.safetensors --kind coupled-grpo --n $n --prompt-len 32 --completion-len 64 > /dev/null
  echo "== $m: coupled-GRPO loss + gradients, N=$n sequences, prompt 32 + completion 64, 3 passes"
  /usr/bin/time -f "unmask-train grad: %e s wall, peak RSS %M KB" $T grad --hf $B/$m --inputs $B/$m-in.safetensors --out $B/$m-out-rs.safetensors --loss coupled-grpo --threads 2 > /dev/null
  /usr/bin/time -f "pytorch reference: %e s wall, peak RSS %M KB" $PY tests/python/grpo_reference.py coupled-grpo --hf $B/$m --inputs $B/$m-in.safetensors --out $B/$m-out-py.safetensors > /dev/null
done
echo "== tiny: one whole grpo update (rollouts G=4 x 64 tokens / 64 diffusion steps, toy reward, mu 1, beta 0.01, AdamW)"
rm -rf $B/run-tiny
/usr/bin/time -f "unmask-train grpo (1 update incl. load): %e s wall, peak RSS %M KB" $T grpo --model $B/tiny --tasks train/data/toy_tasks.jsonl --out $B/run-tiny --reward toy-even-ids --steps 1 --prompts-per-round 1 --num-generations 4 --mu 1 --completion-tokens 64 --diffusion-steps 64 --prompt-tokens 32 --threads 2 > /dev/null
tail -1 $B/run-tiny/metrics.jsonl
