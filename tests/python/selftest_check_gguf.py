#!/usr/bin/env python3
"""Self-test for check_gguf.py: proves the checker passes good files and
fails bad ones, without the Rust tool.

In a temporary folder it builds a tiny Dream-style Hugging Face checkpoint
(random BF16 weights in two safetensors shards, written by a small writer in
this file, plus an index, config.json and a trivial tokenizer.json), then
writes GGUF files with PyPI ``gguf``'s ``GGUFWriter`` (F32, F16, BF16, Q8_0
and a k-quant-style fallback mix) and deliberately broken variants, and runs
check_gguf.py on each through its command line.

Run with ``python selftest_check_gguf.py``; exit status 0 means every case
behaved as expected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter
from gguf.quants import quantize

CHECKER = Path(__file__).resolve().parent / "check_gguf.py"

CONFIG = {
    "architectures": ["DreamModel"],
    "model_type": "Dream",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
    "mask_token_id": 299,
    "torch_dtype": "bfloat16",
}

# Non-ASCII on purpose: the embedded copy must match byte for byte.
TOKENIZER_JSON = '{"version": "1.0", "model": {"type": "BPE", "vocab": {"é": 0}, "merges": []}}\n'

# --------------------------------------------------------------------------
# Tiny Hugging Face checkpoint
# --------------------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 (nearest even); return the 16-bit patterns."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write uint16 arrays as BF16 tensors in the safetensors format."""
    header, offset = {}, 0
    for name, bits in tensors.items():
        size = bits.nbytes
        header[name] = {"dtype": "BF16", "shape": list(bits.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # align data to 8 bytes
    with path.open("wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for bits in tensors.values():
            f.write(np.ascontiguousarray(bits, dtype="<u2").tobytes())


def hf_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for a Qwen2/Dream checkpoint."""
    h, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ff, h),
            p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        })
    return shapes


def random_weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if "norm" in name:
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name.endswith(".bias"):
        return 0.1 * rng.standard_normal(shape)
    return 0.02 * rng.standard_normal(shape)


def make_hf_dir(root: Path, config: dict, seed: int) -> dict[str, np.ndarray]:
    """Write a two-shard BF16 checkpoint; return HF name -> exact f32 values."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    bits = {name: f32_to_bf16_bits(random_weight(name, shape, rng))
            for name, shape in hf_tensor_shapes(config).items()}
    names = list(bits)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, shard_names in shards.items():
        write_safetensors(root / shard, {n: bits[n] for n in shard_names})
        weight_map.update({n: shard for n in shard_names})
    index = {"metadata": {"total_size": sum(b.nbytes for b in bits.values())},
             "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "tokenizer.json").write_bytes(TOKENIZER_JSON.encode())
    return {name: bf16_bits_to_f32(b) for name, b in bits.items()}


# --------------------------------------------------------------------------
# GGUF writing (reference layout, with optional defects)
# --------------------------------------------------------------------------

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def reference_metadata(config: dict) -> dict[str, tuple[str, object]]:
    """GGUF key -> (GGUFWriter add_* suffix, value) for a correct file."""
    vocab = config["vocab_size"]
    return {
        "dream.context_length": ("uint32", config["max_position_embeddings"]),
        "dream.embedding_length": ("uint32", config["hidden_size"]),
        "dream.block_count": ("uint32", config["num_hidden_layers"]),
        "dream.feed_forward_length": ("uint32", config["intermediate_size"]),
        "dream.attention.head_count": ("uint32", config["num_attention_heads"]),
        "dream.attention.head_count_kv": ("uint32", config["num_key_value_heads"]),
        "dream.rope.freq_base": ("float32", config["rope_theta"]),
        "dream.attention.layer_norm_rms_epsilon": ("float32", config["rms_norm_eps"]),
        "dream.attention.causal": ("bool", False),
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", "qwen2"),
        "tokenizer.ggml.tokens": ("array", [f"tok{i}" for i in range(vocab)]),
        "tokenizer.ggml.token_type": ("array", [1] * vocab),
        "tokenizer.ggml.merges": ("array", ["t o", "to k"]),
        "tokenizer.ggml.bos_token_id": ("uint32", config["bos_token_id"]),
        "tokenizer.ggml.eos_token_id": ("uint32", config["eos_token_id"]),
        "tokenizer.ggml.padding_token_id": ("uint32", config["pad_token_id"]),
        "tokenizer.ggml.mask_token_id": ("uint32", config["mask_token_id"]),
        "unmask.tokenizer_json": ("string", TOKENIZER_JSON),
    }


def is_norm_or_bias(name: str) -> bool:
    return name.endswith("_norm.weight") or name.endswith(".bias")


def encode(values: np.ndarray, qtype: QT) -> tuple[np.ndarray, QT | None]:
    """Array to hand to GGUFWriter.add_tensor, and its raw_dtype."""
    if qtype == QT.F32:
        return values.astype(np.float32), None
    if qtype == QT.F16:
        return values.astype(np.float16), None
    return quantize(values.astype(np.float32), qtype), qtype


@dataclass
class Variant:
    """How to write one GGUF: weight types plus optional defects."""

    weight_type: Callable[[str], QT] = lambda name: QT.F32
    norm_type: QT = QT.F32
    metadata: dict[str, tuple[str, object]] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    perturb: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    transpose: set[str] = field(default_factory=set)


def write_gguf(path: Path, config: dict, weights: dict[str, np.ndarray], variant: Variant) -> None:
    writer = GGUFWriter(str(path), "dream")
    meta = reference_metadata(config) | variant.metadata
    for key, (kind, value) in meta.items():
        getattr(writer, f"add_{kind}")(key, value)
    for hf_name, values in weights.items():
        name = gguf_name(hf_name)
        if name in variant.drop:
            continue
        if name in variant.perturb:
            values = variant.perturb[name](values.copy())
        if name in variant.transpose:
            values = values.T
        qtype = variant.norm_type if is_norm_or_bias(name) else variant.weight_type(name)
        array, raw_dtype = encode(np.ascontiguousarray(values), qtype)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def fallback_mix(name: str) -> QT:
    """A q4_k_m-like choice for rows of 64/128 (no k-quant fits)."""
    if name in ("output.weight", "token_embd.weight") or "ffn_down" in name or "attn_v" in name:
        return QT.Q8_0
    return QT.Q5_0


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


@dataclass
class Case:
    """One checker run and what it must report."""

    name: str
    variant: Variant | None  # None: reuse `gguf_file`
    expect_type: str | None
    exit_code: int
    errors_contain: list[str] = field(default_factory=list)
    n_errors: int | None = None  # exact error count, when it is known
    gguf_file: str | None = None
    hf: str = "hf"
    check: Callable[[dict], str | None] | None = None  # extra assertion on the JSON


def perturb_one(values: np.ndarray) -> np.ndarray:
    values.flat[7] += 1e-3
    return values


def add_noise(values: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    return values + 0.2 * values.std() * rng.standard_normal(values.shape)


def max_weight_rmse_below(bound: float) -> Callable[[dict], str | None]:
    def check(report: dict) -> str | None:
        worst = max(t["rel_rmse"] for n, t in report["tensors"].items() if t["type"] != "f32")
        return None if 0 < worst < bound else f"worst quantized rel_rmse {worst} not in (0, {bound})"
    return check


def counts_equal(expected: dict[str, int]) -> Callable[[dict], str | None]:
    def check(report: dict) -> str | None:
        got = report["counts_by_type"]
        return None if got == expected else f"counts_by_type {got} != {expected}"
    return check


def cases() -> list[Case]:
    n_norm_bias = 1 + 2 * 5  # output_norm + per layer (2 norms, 3 biases)
    return [
        Case("good f32", Variant(), "f32", 0, n_errors=0, gguf_file="good_f32"),
        Case("good f32, no --expect-type", None, None, 0, n_errors=0, gguf_file="good_f32"),
        Case("good f16", Variant(lambda n: QT.F16), "f16", 0, n_errors=0, gguf_file="good_f16"),
        Case("good bf16", Variant(lambda n: QT.BF16), "bf16", 0, n_errors=0),
        Case("good q8_0", Variant(lambda n: QT.Q8_0), "q8_0", 0, n_errors=0,
             gguf_file="good_q8_0", check=max_weight_rmse_below(0.01)),
        Case("q8_0 accepted as q6_k fallback (rows of 64/128)", None, "q6_k", 0, n_errors=0,
             gguf_file="good_q8_0"),
        Case("f16 accepted as q4_k fallback (rows of 64/128)", None, "q4_k", 0, n_errors=0,
             gguf_file="good_f16"),
        Case("good q4_k_m fallback mix", Variant(fallback_mix), "q4_k_m", 0, n_errors=0,
             check=counts_equal({"f32": n_norm_bias, "q8_0": 2 + 2 * 2, "q5_0": 2 * 5})),
        Case("tied embeddings", Variant(), "f32", 0, n_errors=0, hf="hf_tied"),
        Case("wrong key value", Variant(metadata={"dream.block_count": ("uint32", 3)}),
             "f32", 1, ["metadata dream.block_count: got 3, expected 2"], n_errors=1),
        Case("wrong key type", Variant(metadata={"dream.context_length": ("uint64", 256)}),
             "f32", 1, ["metadata dream.context_length: type UINT64, expected UINT32"], n_errors=1),
        Case("causal attention", Variant(metadata={"dream.attention.causal": ("bool", True)}),
             "f32", 1, ["metadata dream.attention.causal: got True, expected False"], n_errors=1),
        Case("wrong mask id", Variant(metadata={"tokenizer.ggml.mask_token_id": ("uint32", 298)}),
             "f32", 1, ["metadata tokenizer.ggml.mask_token_id: got 298, expected 299"], n_errors=1),
        Case("short vocab", Variant(metadata={"tokenizer.ggml.tokens": ("array", ["a"] * 299)}),
             "f32", 1, ["metadata tokenizer.ggml.tokens: 299 entries, expected 300"], n_errors=1),
        Case("tokenizer.json differs",
             Variant(metadata={"unmask.tokenizer_json": ("string", TOKENIZER_JSON.replace("é", "e"))}),
             "f32", 1, ["metadata unmask.tokenizer_json: differs from tokenizer.json"], n_errors=1),
        Case("missing tensor", Variant(drop={"blk.1.ffn_up.weight"}), "f32", 1,
             ["missing tensor blk.1.ffn_up.weight"], n_errors=1),
        Case("perturbed f32 tensor", Variant(perturb={"blk.0.attn_q.weight": perturb_one}),
             "f32", 1, ["values blk.0.attn_q.weight (F32 from BF16): not bit-identical"], n_errors=1),
        Case("perturbed q8_0 tensor",
             Variant(lambda n: QT.Q8_0, perturb={"blk.1.ffn_gate.weight": add_noise}),
             "q8_0", 1, ["values blk.1.ffn_gate.weight (Q8_0 from BF16): relative RMSE"], n_errors=1),
        Case("transposed tensor", Variant(transpose={"blk.0.ffn_down.weight"}), "f32", 1,
             ["shape blk.0.ffn_down.weight: GGUF ne [64, 128], expected [128, 64]"], n_errors=1),
        Case("norms not F32", Variant(norm_type=QT.F16), "f32", 1,
             ["type blk.0.attn_norm.weight: F16, norms and biases must be F32"],
             n_errors=n_norm_bias),
        Case("wrong --expect-type", None, "q8_0", 1,
             ["type blk.0.attn_q.weight: F32, expected Q8_0"], gguf_file="good_f32"),
        Case("f32 is not a k-quant fallback", None, "q4_k", 1,
             ["type token_embd.weight: F32, expected Q4_K"], gguf_file="good_f32"),
    ]


# --------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------


def run_checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), *args], capture_output=True, text=True)


def run_case(case: Case, tmp: Path, weights: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Write the case's GGUF (if any), run the checker; return failures."""
    file_stem = case.gguf_file or case.name
    gguf_path = tmp / (file_stem.replace(" ", "_") + ".gguf")
    if case.variant is not None:
        config = json.loads((tmp / case.hf / "config.json").read_text())
        write_gguf(gguf_path, config, weights[case.hf], case.variant)
    args = ["--gguf", str(gguf_path), "--hf", str(tmp / case.hf), "--json"]
    if case.expect_type:
        args += ["--expect-type", case.expect_type]
    proc = run_checker(*args)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return [f"no JSON output (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"]
    return judge(case, proc.returncode, report)


def judge(case: Case, exit_code: int, report: dict) -> list[str]:
    failures = []
    errors = report["errors"]
    if exit_code != case.exit_code:
        failures.append(f"exit code {exit_code}, expected {case.exit_code}")
    if report["ok"] != (case.exit_code == 0):
        failures.append(f"ok={report['ok']} disagrees with the exit code")
    for text in case.errors_contain:
        if not any(text in e for e in errors):
            failures.append(f"no error containing {text!r}")
    if case.n_errors is not None and len(errors) != case.n_errors:
        failures.append(f"{len(errors)} error(s), expected {case.n_errors}")
    if case.check is not None and (problem := case.check(report)):
        failures.append(problem)
    if failures:
        failures += [f"  checker said: {e}" for e in errors[:5]]
    return failures


def usage_cases(tmp: Path) -> list[tuple[str, list[str], int, str]]:
    """(name, argv, expected exit code, text expected in stdout+stderr)."""
    good = str(tmp / "good_f32.gguf")
    hf = str(tmp / "hf")
    return [
        ("text report", ["--gguf", good, "--hf", hf, "--expect-type", "f32"], 0, "Result: OK"),
        ("missing GGUF file", ["--gguf", str(tmp / "nope.gguf"), "--hf", hf], 2, "GGUF file not found"),
        ("HF dir without config", ["--gguf", good, "--hf", str(tmp)], 2, "config.json not found"),
        ("unknown --expect-type", ["--gguf", good, "--hf", hf, "--expect-type", "q3_k"], 2, "invalid choice"),
        ("missing --hf", ["--gguf", good], 2, "required"),
        ("not a GGUF", ["--gguf", str(tmp / "hf" / "config.json"), "--hf", hf], 1, "cannot read GGUF"),
    ]


def main() -> int:
    failed = 0
    with tempfile.TemporaryDirectory(prefix="check_gguf_selftest_") as tmp_name:
        tmp = Path(tmp_name)
        weights = {
            "hf": make_hf_dir(tmp / "hf", CONFIG, seed=0),
            "hf_tied": make_hf_dir(tmp / "hf_tied", CONFIG | {"tie_word_embeddings": True}, seed=1),
        }
        for case in cases():
            failures = run_case(case, tmp, weights)
            failed += bool(failures)
            print(f"{'FAIL' if failures else 'ok  '}  {case.name}")
            for line in failures:
                print(f"        {line}")
        for name, argv, code, text in usage_cases(tmp):
            proc = run_checker(*argv)
            output = proc.stdout + proc.stderr
            bad = proc.returncode != code or text not in output
            failed += bad
            print(f"{'FAIL' if bad else 'ok  '}  {name} (exit {proc.returncode})")
            if bad:
                print(f"        expected exit {code} and {text!r}; got:\n{output[-800:]}")
    total = len(cases()) + len(usage_cases(Path(".")))
    print(f"\n{total - failed}/{total} self-test cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
