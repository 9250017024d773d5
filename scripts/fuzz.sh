#!/usr/bin/env bash
# Fuzzing of unmask's parsers (docs/reliability.md, "Fuzzing"): builds the cargo-fuzz targets of
# fuzz/ with the nightly toolchain (AddressSanitizer), makes seed corpora with unmask's own tools,
# runs each target for a given time and prints, per target, the executions, the corpus size and
# the findings (crash, leak and timeout files). Exit code 1 when any target found something.
#
#   scripts/fuzz.sh [--seconds N | --runs N] [--targets "gguf_header ..."] [--jobs N]
#
# --seconds: per target (default 60). --runs: executions per target instead, with no time limit
# (the long runs of docs/reliability.md: --runs 10000000). .ci/run runs every target for a few
# seconds.
# Needs: the nightly toolchain (`cargo +nightly`) and cargo-fuzz (installed into
# $UNMASK_CACHE/cargo-fuzz when missing). Work files go to $FUZZ_WORK (default
# target/fuzz-work): corpora grow across runs; findings go to $FUZZ_WORK/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
runs=0
targets="gguf_header safetensors_header tokenizer_from_gguf model_load chat_prompt toml_config data_reader"
jobs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; seconds=0; shift 2 ;;
        --targets) targets=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds N | --runs N] [--targets \"gguf_header ...\"] [--jobs N]" >&2; exit 2 ;;
    esac
done
cache="${UNMASK_CACHE:-$HOME/.cache/unmask}"
work="${FUZZ_WORK:-target/fuzz-work}"
mkdir -p "$work"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly); cargo-fuzz needs it" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ ! -x "$cache/cargo-fuzz/bin/cargo-fuzz" ]; then
        echo "fuzz: installing cargo-fuzz into $cache/cargo-fuzz" >&2
        cargo install cargo-fuzz --locked --root "$cache/cargo-fuzz" >&2
    fi
    export PATH="$cache/cargo-fuzz/bin:$PATH"
fi
# The fuzz build has its own target folder: nightly and sanitizer flags would invalidate the
# stable build's cache.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$cache/fuzz-target}"

echo "fuzz: building the targets (nightly, AddressSanitizer)" >&2
cargo +nightly fuzz build --fuzz-dir fuzz -O >&2
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

# --- seed corpora, made by our own tools -------------------------------------------------------
seeds="$work/seeds"
if [ ! -f "$seeds/.done" ]; then
    echo "fuzz: making seed corpora" >&2
    rm -rf "$seeds"
    mkdir -p "$seeds"/{gguf,safetensors,chat,toml,data}
    # The converter of the ordinary (stable) build, built there when missing.
    main_target="${UNMASK_MAIN_TARGET_DIR:-$cache/target}"
    q="$main_target/release/unmask-quantize"
    [ -x "$q" ] || CARGO_TARGET_DIR="$main_target" cargo build --release -p unmask-quantize >&2
    # A tiny model as a GGUF file of ours and as a Hugging Face folder (its safetensors shard).
    "$q" synth --preset tiny --gguf "$seeds/gguf/tiny-q8_0.gguf" --type q8_0 --force >&2
    "$q" synth --preset tiny --hf "$seeds/hf" --force >&2
    cp "$seeds"/hf/*.safetensors "$seeds/safetensors/"
    cp "$seeds/hf/tokenizer.json" "$seeds/tokenizer.json"
    python3 - "$seeds" <<'PY'
import json, struct, sys, pathlib
seeds = pathlib.Path(sys.argv[1])
# A small GGUF v3 file (the tiny model's is 1.5 MB, slow to mutate): string, integer, float and
# array values, and two f32 tensors after the aligned header.
def s(t): b = t.encode(); return struct.pack("<Q", len(b)) + b
kv = [(s("general.architecture"), struct.pack("<I", 8) + s("dream")),
      (s("dream.block_count"), struct.pack("<I", 4) + struct.pack("<I", 1)),
      (s("dream.attention.layer_norm_rms_epsilon"), struct.pack("<I", 6) + struct.pack("<f", 1e-6)),
      (s("tokenizer.ggml.tokens"), struct.pack("<IIQ", 9, 8, 3) + s("a") + s("b") + s("<|mask|>"))]
tensors = [(s("token_embd.weight"), [4, 3], 0), (s("output_norm.weight"), [4], 64)]
head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(k + v for k, v in kv)
for name, dims, offset in tensors:
    head += name + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    head += struct.pack("<IQ", 0, offset)
head += bytes(-len(head) % 32)
(seeds / "gguf-small").mkdir(exist_ok=True)
(seeds / "gguf-small" / "small.gguf").write_bytes(head + struct.pack("<20f", *range(20)))
# A small safetensors file: two tensors and metadata.
header = {"__metadata__": {"format": "pt"},
          "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
          "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}
h = json.dumps(header).encode()
(seeds / "safetensors" / "small.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + bytes(22))
# Conversations: "role:content" parts separated by U+0001, after a flags byte.
for i, c in enumerate(["user:hi", "system:Be brief.\x01user:hi\x01assistant:hello\x01user:more",
                       "user:def f():\n    return 1"]):
    (seeds / "chat" / f"{i}.txt").write_bytes(bytes([i % 2]) + c.encode())
# Trainer settings and data.
(seeds / "toml" / "sft.toml").write_text(
    'steps = 100\nmicro_batch = 8\ngrad_accum = 1\nmax_len = 256\nlr = 2e-5\nchat = true\n'
    'data = ["pairs.jsonl"]\nout = "run"\nbeta1 = 0.9\nbeta2 = 0.999\nwarmup_steps = 10\n')
pairs = [{"prompt": "Reverse a string", "response": "def rev(s):\n    return s[::-1]"},
         {"prompt": "Add", "response": "def add(a, b):\n    return a + b"}]
(seeds / "data" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
(seeds / "data" / "pairs.json").write_text(json.dumps(pairs))
(seeds / "data" / "text.txt").write_text("def f(x):\n    return x * 2\n")
PY
    touch "$seeds/.done"
fi

seed_dir() {
    case "$1" in
        gguf_header) echo "$seeds/gguf-small" ;;
        tokenizer_from_gguf|model_load) echo "$seeds/gguf" ;;
        safetensors_header) echo "$seeds/safetensors" ;;
        chat_prompt) echo "$seeds/chat" ;;
        toml_config) echo "$seeds/toml" ;;
        data_reader) echo "$seeds/data" ;;
    esac
}

# --- runs ----------------------------------------------------------------------------------------
found=0
# libFuzzer: -runs=-1 and -max_total_time=0 mean no limit.
run_limit=-1
[ "$runs" -gt 0 ] && run_limit=$runs
printf '%-20s %12s %10s %8s %9s\n' target executions exec/s corpus findings
for t in $targets; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    log="$work/$t.log"
    # -max_len: the model targets' seeds are whole model files (1.5 MB); the others are small.
    case "$t" in
        tokenizer_from_gguf|model_load) max_len=4194304 ;;
        *) max_len=65536 ;;
    esac
    parallel=()
    [ "$jobs" -gt 1 ] && parallel=(-fork="$jobs")
    status=0
    "$bin/$t" "$corpus" "$(seed_dir "$t")" -max_total_time="$seconds" -runs="$run_limit" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" -max_len="$max_len" -rss_limit_mb=4096 -timeout=25 \
        "${parallel[@]}" > "$log" 2>&1 || status=$?
    execs=$(grep -h 'stat::number_of_executed_units' "$log" | awk '{s+=$2} END {print s+0}')
    rate=$(grep -h 'stat::average_exec_per_sec' "$log" | awk '{s+=$2} END {print s+0}')
    n_corpus=$(find "$corpus" -type f | wc -l)
    n_found=$(find "$artifacts" -type f | wc -l)
    printf '%-20s %12s %10s %8s %9s\n' "$t" "$execs" "$rate" "$n_corpus" "$n_found"
    if [ "$n_found" -gt 0 ] || [ "$status" -ne 0 ]; then
        found=1
        echo "fuzz: $t: exit status $status, $n_found finding(s): see $log and $artifacts" >&2
    fi
done
exit "$found"
