#!/usr/bin/env bash
# The CUDA check, in one run (about 6.5 minutes on an H200 machine with 16 cores, 4 of them for
# the backend build):
#   1. builds ggml's CUDA backend (libggml-cuda.so) with its flash-attention kernels, from the
#      ggml source unmask was built with;
#   2. backend agreement: `unmask check-device` on tiny and 0.5b synth models in f16, q8_0 and
#      q4_k (logits of every position of a canvas, greedy generations);
#   3. the shipped model (models/unmask-python-7m, real weights) scored by `unmask eval` on the
#      CPU and on the device, exact and dual cache + threshold 0.9: parse rates, tokens/s and
#      how many completions are identical;
#   4. a 7b synth q4_k_m file, made on the machine, benchmarked with `unmask bench --device cuda`
#      for 256 new tokens: exact at 256 and 64 steps, and dual cache + threshold 0.9, with
#      libllama's forward over the same canvas through the same CUDA backend (flash attention on
#      both sides), and the host-side scoring llama.cpp's diffusion example would add;
#   5. training on the device: `unmask-train grad` on the CPU and on the device for the tiny
#      model's SFT and coupled-GRPO inputs (loss and every parameter gradient compared), and
#      `unmask-train sft` updates of the 0.5b shape (8 x 256 tokens) on both: tokens/s, and the
#      first update's loss and gradient norm side by side;
#   6. a short report: $OUT/gpu-report.md (and the raw JSON lines).
#
# Runs from the repository root with the files of scripts/gpu-bundle.sh (target/gpu-bundle:
# binaries and ggml source; no Rust needed). Without nvcc or a GPU, or with --cpu, it runs the
# same steps on the CPU path: it builds ggml's CPU backend as the loadable "device"
# (libggml-cpu.so, device ggml-cpu) and uses smaller shapes, so the script itself is tested
# anywhere.
#
#   scripts/gpu-check.sh [--cpu] [--build-only]
#
# --build-only stops after the backend build and the models (a second run does the rest; on a
# machine lent for minutes at a time this splits the work in two).
# Environment: SKIP_BENCH=1 (agreement only), SKIP_TRAIN=1 (no training section), TRAIN_UPDATES
# (timed device updates, default 3), OUT (report directory), WORK (scratch, default
# target/gpu-work; kept, so a rerun resumes), BUNDLE, BIN_DIR (where unmask, unmask-quantize
# and unmask-train are), CHECK_PRESETS (default "tiny 0.5b"), CUDA_FA (default ON), EVAL_PAIRS (default 64), and
# on the CPU path BIG_PRESET, BENCH_GEN, BENCH_STEPS (smaller runs, used by CI)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${BUNDLE:-$root/target/gpu-bundle}
out=${OUT:-$root/target/gpu-check}
# Scratch in the repository's (ignored) target directory: a second run resumes (the backend
# build, the models and the finished agreement rows are kept).
work=${WORK:-$root/target/gpu-work}
mode=cuda
force_cpu=0
build_only=0
for arg in "$@"; do
    case "$arg" in
    --cpu) force_cpu=1 ;;
    --build-only) build_only=1 ;;
    *)
        echo "gpu-check: unknown option '$arg'" >&2
        exit 2
        ;;
    esac
done
export CUDA_FA=${CUDA_FA:-ON}
if [[ $force_cpu == 1 ]] || ! { command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; } ||
    ! nvidia-smi -L >/dev/null 2>&1; then
    mode=cpu
fi
bin=${BIN_DIR:-$bundle/bin}
[[ -x $bin/unmask ]] || bin=$root/target/release
mkdir -p "$out" "$work/models"
log=$out/gpu-check.log
: >"$log"
say() { echo "[$(date +%T)] $*" | tee -a "$log" >&2; }
t0=$(date +%s)
threads=$(nproc)

if [[ $mode == cuda ]]; then
    device=cuda
    big_preset=7b
    bench_gen=256
    bench_steps="256 64"
    fast_steps=256
    check_args=(--gen 96 --steps 48)
    train_preset=0.5b
    train_batch=8
    train_len=256
    gpu_name=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
    say "mode: CUDA on $gpu_name; $(nvcc --version 2>/dev/null | tail -1 || /usr/local/cuda/bin/nvcc --version | tail -1)"
else
    device=ggml-cpu
    big_preset=${BIG_PRESET:-0.5b}
    bench_gen=${BENCH_GEN:-64}
    bench_steps=${BENCH_STEPS:-"64 16"}
    fast_steps=${bench_steps%% *}
    check_args=(--gen 32 --steps 8)
    train_preset=tiny
    train_batch=4
    train_len=64
    gpu_name="none (CPU path: ggml's CPU backend loaded as the device)"
    say "mode: CPU path (no nvcc/GPU, or --cpu)"
fi

# The models are made while the backend compiles (the synth writer is mostly one thread).
synth() { # preset type file
    [[ -s $3 ]] || "$bin/unmask-quantize" synth --preset "$1" --gguf "$3" --type "$2" --seed 7 \
        --force -q >>"$log" 2>&1
}
big=$work/models/$big_preset-q4_k_m.gguf
big_pid=""
if [[ -z ${SKIP_BENCH:-} ]]; then
    (synth "$big_preset" q4_k_m "$big") &
    big_pid=$!
fi
presets=${CHECK_PRESETS:-tiny 0.5b}
(for p in $presets; do for t in f16 q8_0 q4_k; do synth $p $t "$work/models/$p-$t.gguf"; done; done) &
small_pid=$!

say "building the $mode backend"
bstart=$(date +%s)
[[ -f $bundle/ggml/CMakeLists.txt ]] && export GGML_SRC=$bundle/ggml
if [[ -f $work/backends/libggml-$mode.so && -f $work/backends/build-seconds ]]; then
    build_s="$(cat "$work/backends/build-seconds") (earlier run)"
    say "backend already built"
elif "$root/scripts/build-ggml-backend.sh" "$mode" "$work/backends" >>"$log" 2>&1; then
    build_s=$(($(date +%s) - bstart))
    echo "$build_s" >"$work/backends/build-seconds"
    say "backend built in $build_s s"
else
    say "backend build FAILED (see $log and the build logs next to it)"
    cp "$work"/backends/*.log "$out/" 2>/dev/null
    tail -30 "$log" >&2
    exit 1
fi
export UNMASK_BACKEND_DIR=$work/backends
"$bin/unmask" devices | tee -a "$log"

wait $small_pid
if [[ $build_only == 1 ]]; then
    [[ -n $big_pid ]] && wait $big_pid
    say "backend and models ready (--build-only); run again without it for the checks"
    exit 0
fi
declare -A tolerance=([f16]=2e-2 [q8_0]=3e-2 [q4_k]=5e-2)
train_tol=1e-3
status=0
# Rows and JSON lines live in $work (a resumed run keeps the finished ones); the report is
# rewritten after every row, so a run cut short still leaves one.
agree=$work/rows-agree.md
evalrows=$work/rows-eval.md
benchrows=$work/rows-bench.md
gradrows=$work/rows-train-grad.md
speedrows=$work/rows-train-speed.md
jsonl=$work/gpu-check.jsonl
touch "$agree" "$evalrows" "$benchrows" "$gradrows" "$speedrows" "$jsonl"
train_updates=${TRAIN_UPDATES:-3}
shipped=$root/models/unmask-python-7m
eval_pairs=${EVAL_PAIRS:-64}
write_report() {
    local total=$(($(date +%s) - t0))
    {
        echo "# unmask GPU check"
        echo
        echo "- date: $(date -u +%FT%TZ); mode: $mode; device: $gpu_name"
        echo "- backend build: ${build_s}s (flash-attention kernels: $CUDA_FA); this run so far: ${total}s; threads: $threads"
        echo "- binaries: $("$bin/unmask" --version)"
        echo
        echo "## Backend agreement (unmask check-device: CPU vs $device)"
        echo
        echo "Logits of every position of a 30-token prompt + masks (\`${check_args[*]}\`); relative error = max |cpu - device| / max |cpu|."
        echo "Own errors (reported, not part of the verdict): each backend's quantized file against the f16 file of the same model on that backend."
        echo "Greedy generations: entropy, temperature 0, the same length and steps."
        echo
        echo "| model | type | logits rel. error | same argmax rows | D2H bytes/step | greedy generation | verdict |"
        echo "|---|---|---|---|---|---|---|"
        cat "$agree"
        echo
        echo "## The shipped model (real weights): unmask eval on $eval_pairs held-out pairs, CPU vs $device"
        echo
        echo "Settings from the model file (64 new tokens, 64 steps, blocks of 16, greedy entropy); identical = completions equal to the CPU's, character for character."
        echo
        echo "| decoding | device | parses | first line exact | tokens/s | identical to the CPU |"
        echo "|---|---|---:|---:|---:|---:|"
        cat "$evalrows"
        echo
        echo "## Benchmark: $big_preset synth q4_k_m, $bench_gen new tokens, 30-token prompt, greedy entropy"
        echo
        echo "Per pass: unmask's step (exact) or pass (cached modes) against one libllama forward over the same canvas. Whole run: libllama's forwards alone for exact decoding at the same steps (one per step, as llama.cpp's diffusion example runs) against unmask's whole run."
        echo
        echo "| decoding | steps | attention | unmask s/pass | tokens/s | layers + head/scoring s | D2H bytes/step | libllama forward s | + host scoring s | ratio per pass: fwd / fwd+scoring | ratio whole run |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        cat "$benchrows"
        echo
        echo "## Training: unmask-train on the CPU and on $device"
        echo
        echo "Gradients: \`unmask-train grad\` on the tiny model's inputs; relative error per tensor = max |cpu - device| / max |cpu|, the worst over every parameter gradient. Bound $train_tol (f32 products in a different order; on a GPU, cuBLAS may use TF32 tensor cores)."
        echo
        echo "| loss | loss on cpu | loss on $device | worst gradient rel. error | gradients | verdict |"
        echo "|---|---:|---:|---:|---:|---|"
        cat "$gradrows"
        echo
        echo "Speed: \`unmask-train sft\`, $train_preset shape, micro-batch $train_batch x $train_len tokens, f32, AdamW; tokens/s is the median over the updates after the first (which warms up)."
        echo
        echo "| device | updates | tokens/s | s/update | update 1 loss | update 1 grad norm | device / cpu |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        cat "$speedrows"
        echo
        echo "Raw JSON: gpu-check.jsonl; log: gpu-check.log."
    } >"$out/gpu-report.md"
    cp "$jsonl" "$out/gpu-check.jsonl"
}
write_report
for p in $presets; do
    for t in f16 q8_0 q4_k; do
        if grep -q "^| $p | $t | .* | pass |$" "$agree"; then
            continue # done by an earlier run
        fi
        f=$work/models/$p-$t.gguf
        say "check-device $p $t"
        reference=()
        [[ $t != f16 ]] && reference=(--reference "$work/models/$p-f16.gguf")
        if line=$("$bin/unmask" check-device -m "$f" --device $device --tolerance "${tolerance[$t]}" \
            "${reference[@]}" --threads "$threads" "${check_args[@]}" 2>>"$log"); then
            verdict=pass
        else
            verdict=FAIL
            status=1
        fi
        echo "$line" >>"$jsonl"
        python3 - "$p" "$t" "$verdict" "$line" >>"$agree" <<'PY'
import json, sys
p, t, verdict, line = sys.argv[1:5]
try:
    r = json.loads(line)
except Exception:
    print(f"| {p} | {t} | - | - | - | no report | {verdict} |")
    sys.exit()
d = r.get("first_divergence")
div = "identical" if r["greedy_identical"] else (
    f"differs at step {d['step']} ({d['kind']}, explained: {d['explained']})" if d else "differs")
own = ""
if r.get("cpu_own_rel_error") is not None:
    own = (f"; own errors vs f16: cpu {r['cpu_own_rel_error']:.2e} + device "
           f"{r['device_own_rel_error']:.2e}")
print(f"| {p} | {t} | {r['logits_rel_error']:.2e} (tol {r['tolerance']:.0e}{own}) | "
      f"{r['rows_same_argmax']}/{r['rows']} | {r['device_bytes_to_host_per_step']:.0f} | {div} | {verdict} |")
PY
        write_report
    done
done

# The shipped model: the same held-out prompts on the CPU and on the device.
if [[ -s $shipped/model.gguf && -s $shipped/heldout-pairs.jsonl ]]; then
    while IFS='|' read -r label flags; do
        if grep -q "^| $label | " "$evalrows"; then
            continue
        fi
        say "eval the shipped model: $label"
        slug=${label// /_}
        ok=1
        reports=()
        for d in cpu $device; do
            # shellcheck disable=SC2086
            if ! r=$("$bin/unmask" eval -m "$shipped/model.gguf" --pairs "$shipped/heldout-pairs.jsonl" \
                --limit "$eval_pairs" --device $d --threads "$threads" --json \
                --save-completions "$work/eval-$d-$slug.jsonl" $flags 2>>"$log"); then
                say "eval on $d FAILED"
                ok=0
                status=1
                break
            fi
            echo "$r" >>"$jsonl"
            reports+=("$r")
        done
        [[ $ok == 1 ]] || continue
        python3 - "$label" "$device" "${reports[0]}" "${reports[1]}" "$work/eval-cpu-$slug.jsonl" \
            "$work/eval-$device-$slug.jsonl" >>"$evalrows" <<'PY'
import json, sys
label, device, rc, rd, fc, fd = sys.argv[1:7]
rc, rd = json.loads(rc), json.loads(rd)
read = lambda f: [json.loads(l)["completion"] for l in open(f) if l.strip()]
a, b = read(fc), read(fd)
same = sum(x == y for x, y in zip(a, b))
pct = lambda v: f"{100 * v:.1f}%"
for name, r, ident in (("cpu", rc, "-"), (device, rd, f"{same}/{len(a)}")):
    print(f"| {label} | {name} | {pct(r['parse_rate'])} | {pct(r['first_line_exact'])} | "
          f"{r['tokens_per_s'] or 0:.1f} | {ident} |")
PY
        write_report
    done <<EOF
exact|
dual cache + threshold 0.9|--cache dual --threshold 0.9
EOF
else
    say "no shipped model in $shipped: its evaluation is left out"
fi

say "waiting for the $big_preset q4_k_m file"
[[ -n $big_pid ]] && wait $big_pid
[[ -n ${SKIP_BENCH:-} || -s $big ]] || { say "the $big_preset file was not written (see $log)"; exit 1; }
runs=()
for steps in $bench_steps; do runs+=("exact|$steps|"); done
runs+=("dual cache + threshold 0.9|$fast_steps|--cache dual --threshold 0.9")
[[ -n ${SKIP_BENCH:-} ]] && runs=()
for run in "${runs[@]}"; do
    IFS='|' read -r label steps flags <<<"$run"
    if grep -q "^| $label | $steps | " "$benchrows"; then
        continue
    fi
    say "bench $big_preset q4_k_m: $bench_gen tokens, $steps steps, $label"
    # shellcheck disable=SC2086
    if line=$("$bin/unmask" bench -m "$big" --device $device --gen "$bench_gen" --steps "$steps" \
        --threads "$threads" --llama-runs 3 --json $flags 2>>"$log"); then
        echo "$line" >>"$jsonl"
        python3 - "$label" "$line" >>"$benchrows" <<'PY'
import json, sys
label, r = sys.argv[1], json.loads(sys.argv[2])
f = lambda v, fmt: "-" if v is None else format(v, fmt)
print(f"| {label} | {r['steps']} | {r.get('attention', '-')} | {r['seconds_per_step']:.4f} | "
      f"{r['tokens_per_second']:.1f} | "
      f"{r['layers_seconds_per_pass']:.4f} + {r['head_and_scoring_seconds_per_pass']:.4f} | "
      f"{r['bytes_to_host_per_step']:.0f} | {f(r['llama_forward_seconds'], '.4f')} | "
      f"{f(r['llama_host_scoring_seconds'], '.4f')} | "
      f"{f(r['ratio_llama_forward_over_unmask_step'], '.2f')}x / "
      f"{f(r['ratio_llama_forward_and_scoring_over_unmask_step'], '.2f')}x | "
      f"{f(r.get('ratio_llama_exact_run_over_unmask_run'), '.2f')}x |")
PY
    else
        say "bench FAILED"
        status=1
    fi
    write_report
done
# Training on the device: gradients of the same inputs, then the speed of SFT updates.
train_bin=$bin/unmask-train
py=${UNMASK_PYTHON:-python3}
if [[ -n ${SKIP_TRAIN:-} ]]; then
    say "training section skipped (SKIP_TRAIN)"
elif [[ ! -x $train_bin ]]; then
    say "no $train_bin: the training section is left out"
    status=1
else
    tdir=$work/train
    mkdir -p "$tdir"
    tiny_hf=$tdir/tiny-hf
    [[ -s $tiny_hf/model.safetensors.index.json ]] ||
        "$bin/unmask-quantize" synth --preset tiny --hf "$tiny_hf" --seed 7 -q >>"$log" 2>&1
    for kind in sft coupled-grpo; do
        if grep -q "^| $kind | " "$gradrows"; then
            continue
        fi
        inputs=$tdir/inputs-$kind.safetensors
        [[ -s $bundle/train/inputs-$kind.safetensors ]] && cp "$bundle/train/inputs-$kind.safetensors" "$inputs"
        if [[ ! -s $inputs ]] && ! "$py" "$root/tests/python/grpo_reference.py" make-inputs --hf "$tiny_hf" \
            --out "$inputs" --kind "$kind" --seed 5 --n 4 --prompt-len 6 --completion-len 10 >>"$log" 2>&1; then
            say "no $kind inputs (not in the bundle, and $py cannot make them): row left out"
            continue
        fi
        say "training gradients: $kind on cpu and $device"
        ok=1
        for d in cpu $device; do
            "$train_bin" grad --hf "$tiny_hf" --inputs "$inputs" --out "$tdir/grad-$kind-$d.safetensors" \
                --loss "$kind" --device $d --threads "$threads" >>"$log" 2>&1 || { ok=0; break; }
        done
        if [[ $ok == 0 ]]; then
            say "unmask-train grad on $d FAILED"
            echo "| $kind | - | - | - | - | FAIL ($d failed) |" >>"$gradrows"
            status=1
            write_report
            continue
        fi
        row=$(python3 - "$kind" "$train_tol" "$tdir/grad-$kind-cpu.safetensors" \
            "$tdir/grad-$kind-$device.safetensors" 2>>"$log" <<'PY'
import array, json, struct, sys
kind, tol, fa, fb = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def read(path):  # safetensors of f32 arrays (what unmask-train grad writes)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", (name, e["dtype"])
        a = array.array("f")
        a.frombytes(data[e["data_offsets"][0]:e["data_offsets"][1]])
        out[name] = a
    return out
a, b = read(fa), read(fb)
worst, grads = 0.0, 0
for name, x in a.items():
    if not name.startswith("grad."):
        continue
    y = b[name]
    scale = max((abs(v) for v in x), default=0.0)
    err = max((abs(p - q) for p, q in zip(x, y)), default=0.0) / max(scale, 1e-30)
    worst, grads = max(worst, err), grads + 1
verdict = "pass" if worst <= tol and grads > 0 else "FAIL"
print(json.dumps({"train_grad": kind, "loss_cpu": a["loss"][0], "loss_device": b["loss"][0],
                  "worst_grad_rel_error": worst, "gradients": grads, "verdict": verdict}))
PY
        ) || row=""
        if [[ -z $row ]]; then
            echo "| $kind | - | - | - | - | FAIL (no comparison) |" >>"$gradrows"
            status=1
        else
            echo "$row" >>"$jsonl"
            python3 - "$row" >>"$gradrows" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"| {r['train_grad']} | {r['loss_cpu']:.6e} | {r['loss_device']:.6e} | "
      f"{r['worst_grad_rel_error']:.2e} | {r['gradients']} | {r['verdict']} |")
PY
            [[ $row == *'"verdict": "pass"'* ]] || status=1
        fi
        write_report
    done

    # Speed: the same SFT updates on the CPU (fewer: it is the slow side) and on the device.
    if ! grep -q "^| $device | " "$speedrows"; then
        model=$tdir/$train_preset-hf
        [[ -s $model/model.safetensors.index.json ]] ||
            "$bin/unmask-quantize" synth --preset "$train_preset" --hf "$model" --seed 7 -q >>"$log" 2>&1
        text=$tdir/text.txt
        [[ -s $text ]] || python3 - "$text" <<'PY'
import pathlib, sys, sysconfig
lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
files = sorted(lib.glob("*.py"))[:200]
pathlib.Path(sys.argv[1]).write_text("\n".join(p.read_text(errors="replace") for p in files))
PY
        rows=()
        for d in cpu $device; do
            updates=$((train_updates + 1))
            [[ $d == cpu ]] && updates=2
            say "training speed: $train_preset sft on $d, $updates updates"
            run=$tdir/run-$d
            rm -rf "$run"
            if "$train_bin" sft --model "$model" --data "$text" --out "$run" --pack true \
                --max-len "$train_len" --micro-batch "$train_batch" --grad-accum 1 --steps "$updates" \
                --save-every 0 --lr 1e-4 --seed 3 --device $d --threads "$threads" >>"$log" 2>&1; then
                rows+=("$run/metrics.jsonl")
            else
                say "unmask-train sft on $d FAILED"
                status=1
            fi
        done
        if [[ ${#rows[@]} == 2 ]]; then
            python3 - "$device" "${rows[0]}" "${rows[1]}" "$jsonl" >>"$speedrows" <<'PY'
import json, statistics, sys
device, fc, fd, jsonl = sys.argv[1:5]
def load(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    timed = rows[1:] or rows
    return rows, statistics.median(r["tokens_per_s"] for r in timed)
(rc, tc), (rd, td) = load(fc), load(fd)
with open(jsonl, "a") as f:
    f.write(json.dumps({"train_speed": device, "tokens_per_s_cpu": tc, "tokens_per_s_device": td,
                        "loss_1_cpu": rc[0]["loss"], "loss_1_device": rd[0]["loss"],
                        "grad_norm_1_cpu": rc[0]["grad_norm"],
                        "grad_norm_1_device": rd[0]["grad_norm"]}) + "\n")
for name, rows, tps, ratio in (("cpu", rc, tc, "1.00x"), (device, rd, td, f"{td / tc:.2f}x")):
    secs = statistics.median(r["seconds"] for r in (rows[1:] or rows))
    print(f"| {name} | {len(rows)} | {tps:.1f} | {secs:.3f} | {rows[0]['loss']:.6f} | "
          f"{rows[0]['grad_norm']:.6f} | {ratio} |")
PY
        fi
        write_report
    fi
fi
write_report
# What libllama said about flash attention (its context log).
grep -i "flash.attn\|flash attention" "$log" | sort | uniq -c | head -5 | tee -a "$out/gpu-report.md" >&2
cat "$out/gpu-report.md"
exit $status
