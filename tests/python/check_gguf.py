#!/usr/bin/env python3
"""Independent checker for GGUF files written by `unmask`.

Given a GGUF file and the Hugging Face DiffuCoder/Dream checkpoint it was
converted from, this script verifies, without using any code from the Rust
tool, that:

* the metadata matches the checkpoint's ``config.json`` and ``tokenizer.json``
  (architecture ``dream``, hyper-parameters, non-causal attention, tokenizer
  keys, special token ids, the embedded tokenizer.json);
* the GGUF holds exactly the expected tensors, named as llama.cpp expects,
  with shapes reversed relative to Hugging Face (HF ``[out, in]`` is GGUF
  ``ne = [in, out]``);
* tensor types follow the requested output type (norms and biases are F32;
  k-quants may fall back on rows whose length is not a multiple of 256);
* the tensor values, dequantized with PyPI ``gguf``'s numpy code, match the
  source weights: exactly for lossless types, within a relative-RMSE bound
  for quantized types.

The source weights are read by a small safetensors parser in this file (no
``safetensors`` or ``torch`` dependency).

Usage::

    python check_gguf.py --gguf OUT.gguf --hf HF_DIR [--expect-type TYPE] [--json]

Exit status: 0 if every check passed, 1 if any check failed, 2 on usage
errors (bad arguments, missing input files).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

ARCH = "dream"

# Q5_1 / Q4_1 only occur as k-quant fallbacks and share the bound of their symmetric sibling.
# Bounds on rmse(dequantized - source) / rms(source). Measured with ggml's quantizers on Gaussian
# rows: q8_0 0.005, q6_k 0.018, q5_k 0.036, q4_k 0.071, q4_0 0.086, q5_0 0.043; heavy-tailed
# (Student t, 3 dof) rows reach 0.0085 / 0.026 / 0.047 / 0.093 / 0.128 / 0.066. The bounds sit
# about 1.5x above the Gaussian values: loose enough for real weights, tight enough that a wrong
# block layout, scale or row order (errors of order 1) fails.
REL_RMSE_BOUNDS: dict[QT, float] = {
    QT.Q8_0: 0.015,
    QT.Q6_K: 0.03,
    QT.Q5_K: 0.06,
    QT.Q4_K: 0.12,
    QT.Q4_0: 0.15,
    QT.Q4_1: 0.15,
    QT.Q5_0: 0.075,
    QT.Q5_1: 0.075,
}

# Tolerances for the lossless-but-rounded float types (np.allclose style).
F16_RTOL, F16_ATOL = 1e-3, 1e-6
F16_MAX = 65504.0
BF16_RTOL, BF16_ATOL = 2.0**-8, 1e-6  # only used for a non-BF16 source

K_QUANTS = (QT.Q4_K, QT.Q5_K, QT.Q6_K)
QK_K = 256
# Types a k-quant may fall back to on rows that are not a multiple of 256.
K_FALLBACKS = (QT.Q8_0, QT.Q5_0, QT.Q5_1, QT.Q4_0, QT.Q4_1, QT.F16)

# --expect-type -> (allowed 2-D weight types, base type required in a mix).
EXPECT_TYPES: dict[str, tuple[tuple[QT, ...], QT | None]] = {
    "f32": ((QT.F32,), None),
    "f16": ((QT.F16,), None),
    "bf16": ((QT.BF16,), None),
    "q8_0": ((QT.Q8_0,), None),
    "q4_0": ((QT.Q4_0,), None),
    "q4_k": ((QT.Q4_K,), None),
    "q5_k": ((QT.Q5_K,), None),
    "q6_k": ((QT.Q6_K,), None),
    "q4_k_m": ((QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_0), QT.Q4_K),
    "q5_k_m": ((QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_0), QT.Q5_K),
}

# Types a 2-D weight may have at all when no --expect-type is given.
KNOWN_WEIGHT_TYPES = (QT.F32, QT.F16, QT.BF16) + tuple(REL_RMSE_BOUNDS)

# Rows are compared in chunks of about this many elements (bounded memory).
CHUNK_ELEMENTS = 1 << 24


class UsageError(Exception):
    """Bad command line or missing input; exit status 2."""


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


@dataclass
class Report:
    """Collects errors, notes and per-tensor results."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts_by_type: dict[str, int] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "notes": self.notes,
            "tensors": {
                name: {k: _json_number(v) for k, v in info.items()}
                for name, info in self.tensors.items()
            },
            "counts_by_type": self.counts_by_type,
        }

    def print_text(self, gguf_path: Path, hf_dir: Path) -> None:
        print(f"GGUF: {gguf_path}")
        print(f"HF:   {hf_dir}")
        print("\nTensors (type, relative RMSE vs source):")
        width = max((len(n) for n in self.tensors), default=0)
        for name, info in self.tensors.items():
            rel = info.get("rel_rmse")
            rel_s = "n/a" if rel is None else f"{rel:.3e}"
            bound = info.get("bound")
            bound_s = "" if bound is None else f"  (bound {bound})"
            print(f"  {name:<{width}}  {info['type']:<5}  {rel_s}{bound_s}")
        counts = ", ".join(f"{t}: {n}" for t, n in sorted(self.counts_by_type.items()))
        print(f"\nCounts by type: {counts}")
        for message in self.notes:
            print(f"note: {message}")
        for message in self.errors:
            print(f"ERROR: {message}")
        status = "OK" if self.ok else f"FAILED ({len(self.errors)} error(s))"
        print(f"\nResult: {status}")


def _json_number(value: Any) -> Any:
    """JSON has no inf/NaN: map them to None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------
# Safetensors reading (independent, numpy only)
# --------------------------------------------------------------------------

SAFETENSORS_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


@dataclass(frozen=True)
class SourceTensor:
    """Location and layout of one tensor inside a safetensors file."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_safetensors_header(path: Path) -> dict[str, SourceTensor]:
    """Parse a safetensors header: u64 LE length, JSON, then the data."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = SourceTensor(
            name=name,
            path=path,
            dtype=info["dtype"],
            shape=tuple(int(d) for d in info["shape"]),
            start=data_start + begin,
            end=data_start + end,
        )
    return tensors


def find_safetensors_files(hf_dir: Path) -> list[Path]:
    """The shard files named by the index, or the single model file."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [hf_dir / f for f in sorted(set(weight_map.values()))]
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise UsageError(f"no model.safetensors.index.json or model.safetensors in {hf_dir}")


class SourceWeights:
    """All tensors of a HF checkpoint, read lazily through memory maps."""

    def __init__(self, hf_dir: Path):
        self.tensors: dict[str, SourceTensor] = {}
        for path in find_safetensors_files(hf_dir):
            self.tensors.update(read_safetensors_header(path))
        self._maps: dict[Path, np.memmap] = {}

    def rows(self, tensor: SourceTensor, row_len: int, first: int, last: int) -> np.ndarray:
        """Rows [first, last) of the tensor viewed as (-1, row_len), as float32."""
        np_dtype = np.dtype(SAFETENSORS_DTYPES[tensor.dtype])
        row_bytes = row_len * np_dtype.itemsize
        raw = self._map(tensor.path)[tensor.start + first * row_bytes : tensor.start + last * row_bytes]
        values = raw.view(np_dtype).reshape(last - first, row_len)
        if tensor.dtype == "BF16":
            return bf16_bits_to_f32(values)
        return values.astype(np.float32)

    def _map(self, path: Path) -> np.memmap:
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._maps[path]


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Exact bf16 -> f32: the 16 bits become the upper half of a u32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def validate_source_tensor(tensor: SourceTensor) -> str | None:
    """Return a problem description, or None if the tensor is readable."""
    if tensor.dtype not in SAFETENSORS_DTYPES:
        return f"unsupported safetensors dtype {tensor.dtype}"
    itemsize = np.dtype(SAFETENSORS_DTYPES[tensor.dtype]).itemsize
    expected = math.prod(tensor.shape) * itemsize
    if tensor.end - tensor.start != expected:
        return f"data_offsets span {tensor.end - tensor.start} bytes, shape needs {expected}"
    return None


# --------------------------------------------------------------------------
# Metadata checks
# --------------------------------------------------------------------------

# (GGUF key, config.json key) for u32 hyper-parameters.
U32_PARAMS = [
    (f"{ARCH}.context_length", "max_position_embeddings"),
    (f"{ARCH}.embedding_length", "hidden_size"),
    (f"{ARCH}.block_count", "num_hidden_layers"),
    (f"{ARCH}.feed_forward_length", "intermediate_size"),
    (f"{ARCH}.attention.head_count", "num_attention_heads"),
    (f"{ARCH}.attention.head_count_kv", "num_key_value_heads"),
]
# (GGUF key, config.json key) for f32 hyper-parameters.
F32_PARAMS = [
    (f"{ARCH}.rope.freq_base", "rope_theta"),
    (f"{ARCH}.attention.layer_norm_rms_epsilon", "rms_norm_eps"),
]
# (GGUF key, config.json key) for special token ids, checked when configured.
TOKEN_ID_PARAMS = [
    ("tokenizer.ggml.bos_token_id", "bos_token_id"),
    ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ("tokenizer.ggml.mask_token_id", "mask_token_id"),
]


def typed_field(reader: GGUFReader, key: str, vtype: GGUFValueType, report: Report):
    """Return the field if present with the given (outer) type, else report."""
    fld = reader.get_field(key)
    if fld is None:
        report.error(f"metadata {key}: missing")
        return None
    if not fld.types or fld.types[0] != vtype:
        got = "/".join(t.name for t in fld.types)
        report.error(f"metadata {key}: type {got}, expected {vtype.name}")
        return None
    return fld


def check_scalar(reader, key, vtype, expected, report, source="", as_f32=False) -> None:
    fld = typed_field(reader, key, vtype, report)
    if fld is None:
        return
    value = fld.contents()
    equal = np.float32(value) == np.float32(expected) if as_f32 else value == expected
    if not equal:
        report.error(f"metadata {key}: got {value!r}, expected {expected!r}{source}")


def check_array(reader, key, report, expected_len=None, elem=GGUFValueType.STRING):
    """Check an array key's element type and (optionally) length; return the length."""
    fld = typed_field(reader, key, GGUFValueType.ARRAY, report)
    if fld is None:
        return None
    if fld.types[-1] != elem:
        report.error(f"metadata {key}: array of {fld.types[-1].name}, expected {elem.name}")
    n = len(fld.data)
    if expected_len is not None and n != expected_len:
        report.error(f"metadata {key}: {n} entries, expected {expected_len} (config vocab_size)")
    return n


def check_hparams(reader: GGUFReader, config: dict, report: Report) -> None:
    defaults = {"num_key_value_heads": config.get("num_attention_heads")}
    for key, cfg_key in U32_PARAMS:
        expected = config.get(cfg_key, defaults.get(cfg_key))
        if expected is None:
            report.error(f"config.json lacks {cfg_key} (needed for {key})")
            continue
        check_scalar(reader, key, GGUFValueType.UINT32, int(expected), report, f" (config {cfg_key})")
    for key, cfg_key in F32_PARAMS:
        if cfg_key not in config:
            report.error(f"config.json lacks {cfg_key} (needed for {key})")
            continue
        check_scalar(reader, key, GGUFValueType.FLOAT32, float(config[cfg_key]), report,
                     f" (config {cfg_key}, compared as float32)", as_f32=True)
    check_scalar(reader, f"{ARCH}.attention.causal", GGUFValueType.BOOL, False, report)


def check_tokenizer(reader: GGUFReader, config: dict, hf_dir: Path, report: Report,
                    tokenizer_json: bool = True) -> None:
    check_scalar(reader, "tokenizer.ggml.model", GGUFValueType.STRING, "gpt2", report)
    check_scalar(reader, "tokenizer.ggml.pre", GGUFValueType.STRING, "qwen2", report)
    vocab = config.get("vocab_size")
    if vocab is None:
        report.error("config.json lacks vocab_size")
    check_array(reader, "tokenizer.ggml.tokens", report, vocab)
    check_array(reader, "tokenizer.ggml.token_type", report, vocab, GGUFValueType.INT32)
    n_merges = check_array(reader, "tokenizer.ggml.merges", report)
    if n_merges is not None:
        report.note(f"tokenizer.ggml.merges: {n_merges} merges")
    for key, cfg_key in TOKEN_ID_PARAMS:
        if config.get(cfg_key) is not None:
            check_scalar(reader, key, GGUFValueType.UINT32, int(config[cfg_key]), report,
                         f" (config {cfg_key})")
    if tokenizer_json:
        check_tokenizer_json(reader, hf_dir, report)
    elif reader.get_field("unmask.tokenizer_json") is not None:
        report.error("unmask.tokenizer_json present in a file expected to come from llama.cpp")


def check_tokenizer_json(reader: GGUFReader, hf_dir: Path, report: Report) -> None:
    key = "unmask.tokenizer_json"
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        report.error(f"{path} missing: cannot check {key}")
        return
    fld = typed_field(reader, key, GGUFValueType.STRING, report)
    if fld is None:
        return
    stored = fld.parts[-1].tobytes()
    source = path.read_bytes()
    if stored != source:
        first = next((i for i, (a, b) in enumerate(zip(stored, source)) if a != b),
                     min(len(stored), len(source)))
        report.error(f"metadata {key}: differs from tokenizer.json "
                     f"({len(stored)} vs {len(source)} bytes, first difference at byte {first})")


def check_metadata(reader: GGUFReader, config: dict, hf_dir: Path, report: Report,
                   tokenizer_json: bool = True) -> None:
    check_scalar(reader, "general.architecture", GGUFValueType.STRING, ARCH, report)
    check_hparams(reader, config, report)
    check_tokenizer(reader, config, hf_dir, report, tokenizer_json)


# --------------------------------------------------------------------------
# Tensor names, shapes and types
# --------------------------------------------------------------------------

LAYER_MAP = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
]

# HF buffers that are legitimately not converted.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


def expected_tensor_map(config: dict) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name, for every tensor the GGUF must hold."""
    mapping = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
    }
    if not config.get("tie_word_embeddings", False):
        mapping["output.weight"] = "lm_head.weight"
    for i in range(int(config.get("num_hidden_layers", 0))):
        for hf_suffix, gguf_suffix in LAYER_MAP:
            mapping[f"blk.{i}.{gguf_suffix}"] = f"model.layers.{i}.{hf_suffix}"
    return mapping


def check_tensor_set(gguf_names: set[str], mapping: dict[str, str],
                     source: SourceWeights, config: dict, report: Report) -> None:
    for name in sorted(set(mapping) - gguf_names, key=natural_key):
        report.error(f"missing tensor {name} (from {mapping[name]})")
    for name in sorted(gguf_names - set(mapping), key=natural_key):
        report.error(f"unexpected tensor {name}")
    for gguf_name, hf_name in mapping.items():
        if hf_name not in source.tensors:
            report.error(f"HF checkpoint lacks {hf_name} (needed for {gguf_name})")
    mapped = set(mapping.values())
    if config.get("tie_word_embeddings", False):
        mapped.add("lm_head.weight")  # tied: may be present in HF, not converted
    for hf_name in sorted(set(source.tensors) - mapped, key=natural_key):
        if hf_name.endswith(IGNORED_HF_SUFFIXES):
            report.note(f"HF tensor {hf_name} ignored")
        else:
            report.error(f"HF tensor {hf_name} has no GGUF counterpart")


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that orders blk.2 before blk.10."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def check_shape(name: str, ne: list[int], hf_shape: tuple[int, ...], report: Report) -> bool:
    expected = list(reversed(hf_shape))
    if ne != expected:
        report.error(f"shape {name}: GGUF ne {ne}, expected {expected} (HF {list(hf_shape)} reversed)")
        return False
    return True


def is_norm_or_bias(name: str) -> bool:
    return name.endswith("_norm.weight") or name.endswith(".bias")


def check_type(name: str, qtype: QT, ne: list[int], expect: str | None, report: Report) -> None:
    if is_norm_or_bias(name):
        if qtype != QT.F32:
            report.error(f"type {name}: {qtype.name}, norms and biases must be F32")
        return
    if expect is None:
        if qtype not in KNOWN_WEIGHT_TYPES:
            report.error(f"type {name}: {qtype.name} is not a supported weight type")
        return
    allowed, _ = EXPECT_TYPES[expect]
    if qtype in allowed:
        return
    wants_k_quant = any(t in K_QUANTS for t in allowed)
    if wants_k_quant and ne[0] % QK_K != 0 and qtype in K_FALLBACKS:
        report.note(f"fallback {name}: {qtype.name} (row length {ne[0]} is not a multiple of {QK_K})")
        return
    names = "/".join(t.name for t in allowed)
    hint = "" if not wants_k_quant else f"; fallbacks only when row length % {QK_K} != 0"
    report.error(f"type {name}: {qtype.name}, expected {names} for --expect-type {expect} "
                 f"(row length {ne[0]}{hint})")


def check_mix_base_type(weights: list[tuple[str, QT, list[int]]], expect: str | None,
                        report: Report) -> None:
    """A q4_k_m / q5_k_m file must use its base k-quant where it can."""
    if expect is None:
        return
    _, base = EXPECT_TYPES[expect]
    if base is None:
        return
    eligible = [w for w in weights if w[2][0] % QK_K == 0]
    if eligible and not any(q == base for _, q, _ in weights):
        report.error(f"--expect-type {expect}: no tensor is {base.name} although "
                     f"{len(eligible)} weight(s) have rows that are a multiple of {QK_K}")


# --------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------


@dataclass
class DiffStats:
    """Running comparison of dequantized values against the source.

    ``tolerance`` (rtol, atol) enables an np.allclose check and
    ``compare_bits`` a bit-for-bit check; both are only computed when the
    tensor type needs them.
    """

    tolerance: tuple[float, float] | None = None
    compare_bits: bool = False
    sq_diff: float = 0.0
    sq_src: float = 0.0
    count: int = 0
    max_abs_diff: float = 0.0
    src_max_abs: float = 0.0
    bit_identical: bool = True
    close: bool = True
    finite: bool = True

    def update(self, deq: np.ndarray, src: np.ndarray) -> None:
        diff = deq.astype(np.float64) - src.astype(np.float64)
        self.sq_diff += float(np.sum(diff * diff))
        self.sq_src += float(np.sum(np.square(src, dtype=np.float64)))
        self.count += src.size
        if diff.size:
            self.max_abs_diff = max(self.max_abs_diff, float(np.nanmax(np.abs(diff))))
            self.src_max_abs = max(self.src_max_abs, float(np.nanmax(np.abs(src))))
        self.finite &= bool(np.all(np.isfinite(deq)))
        if self.compare_bits:
            same = np.ascontiguousarray(deq).view(np.uint32) == np.ascontiguousarray(src).view(np.uint32)
            self.bit_identical &= bool(np.all(same))
        if self.tolerance is not None:
            rtol, atol = self.tolerance
            self.close &= bool(np.allclose(deq, src, rtol=rtol, atol=atol))

    @property
    def rel_rmse(self) -> float:
        if self.count == 0:
            return 0.0
        if self.sq_src == 0.0:
            return 0.0 if self.sq_diff == 0.0 else math.inf
        return math.sqrt(self.sq_diff / self.sq_src)


def stats_for(qtype: QT, src: SourceTensor) -> DiffStats:
    """The comparison a GGUF type needs against a source of a given dtype."""
    if qtype == QT.F32:
        return DiffStats(compare_bits=True)
    if qtype == QT.F16:
        return DiffStats(tolerance=(F16_RTOL, F16_ATOL))
    if qtype == QT.BF16:
        if src.dtype == "BF16":
            return DiffStats(compare_bits=True)
        return DiffStats(tolerance=(BF16_RTOL, BF16_ATOL))
    return DiffStats()


def dequantize_rows(raw: np.ndarray, qtype: QT) -> np.ndarray:
    """GGUF tensor rows (as the reader exposes them) -> float32 values."""
    if qtype == QT.F32:
        return np.asarray(raw, dtype=np.float32)
    if qtype == QT.F16:
        return np.asarray(raw).astype(np.float32)
    if qtype == QT.BF16:
        return bf16_bits_to_f32(np.ascontiguousarray(raw).view(np.uint16))
    return dequantize(np.asarray(raw), qtype).astype(np.float32, copy=False)


def compare_values(tensor, src: SourceTensor, source: SourceWeights) -> DiffStats:
    """Stream both tensors row-chunk by row-chunk and accumulate statistics."""
    row_len = int(tensor.shape[0])
    n_rows = int(tensor.n_elements) // row_len
    data = tensor.data.reshape(n_rows, -1)
    step = max(1, CHUNK_ELEMENTS // row_len)
    stats = stats_for(tensor.tensor_type, src)
    for first in range(0, n_rows, step):
        last = min(n_rows, first + step)
        deq = dequantize_rows(data[first:last], tensor.tensor_type).reshape(last - first, row_len)
        stats.update(deq, source.rows(src, row_len, first, last))
    return stats


def judge_values(name: str, qtype: QT, src: SourceTensor, stats: DiffStats,
                 report: Report) -> float | None:
    """Apply the per-type acceptance rule; return the bound used (if any)."""
    rel = stats.rel_rmse
    where = f"values {name} ({qtype.name} from {src.dtype})"
    if qtype == QT.F32:
        if not stats.bit_identical:
            report.error(f"{where}: not bit-identical to the source "
                         f"(max abs diff {stats.max_abs_diff:.3e})")
        return None
    if qtype == QT.F16:
        if stats.src_max_abs > F16_MAX:
            report.error(f"{where}: source max |x| {stats.src_max_abs:.6g} exceeds f16 range")
        elif not stats.close:
            report.error(f"{where}: not within f16 rounding (rtol {F16_RTOL}, atol {F16_ATOL}; "
                         f"max abs diff {stats.max_abs_diff:.3e})")
        return None
    if qtype == QT.BF16:
        if src.dtype == "BF16" and not stats.bit_identical:
            report.error(f"{where}: not bit-identical to the BF16 source "
                         f"(max abs diff {stats.max_abs_diff:.3e})")
        elif src.dtype != "BF16" and not stats.close:
            report.error(f"{where}: not within bf16 rounding (rtol {BF16_RTOL}; "
                         f"max abs diff {stats.max_abs_diff:.3e})")
        return None
    if not stats.finite:
        report.error(f"{where}: dequantized values contain inf/NaN")
    bound = REL_RMSE_BOUNDS.get(qtype)
    if bound is not None and not rel <= bound:
        report.error(f"{where}: relative RMSE {rel:.4e} exceeds bound {bound}")
    return bound


def check_tensors(reader: GGUFReader, config: dict, source: SourceWeights,
                  expect: str | None, report: Report) -> None:
    mapping = expected_tensor_map(config)
    by_name = {t.name: t for t in reader.tensors}
    check_tensor_set(set(by_name), mapping, source, config, report)

    weights = []
    for tensor in reader.tensors:
        qtype = QT(tensor.tensor_type)
        type_name = qtype.name.lower()
        report.counts_by_type[type_name] = report.counts_by_type.get(type_name, 0) + 1
        info: dict[str, Any] = {"type": type_name, "rel_rmse": None}
        report.tensors[tensor.name] = info
        ne = [int(d) for d in tensor.shape]
        if tensor.name not in mapping:
            continue
        check_type(tensor.name, qtype, ne, expect, report)
        if not is_norm_or_bias(tensor.name):
            weights.append((tensor.name, qtype, ne))
        src = source.tensors.get(mapping[tensor.name])
        if src is None or not check_shape(tensor.name, ne, src.shape, report):
            continue
        problem = validate_source_tensor(src)
        if problem is not None:
            report.error(f"source {src.name}: {problem}")
            continue
        try:
            stats = compare_values(tensor, src, source)
        except (NotImplementedError, ValueError) as exc:
            report.error(f"values {tensor.name}: cannot dequantize {qtype.name}: {exc}")
            continue
        info["rel_rmse"] = stats.rel_rmse
        info["max_abs_diff"] = stats.max_abs_diff
        bound = judge_values(tensor.name, qtype, src, stats, report)
        if bound is not None:
            info["bound"] = bound
    check_mix_base_type(weights, expect, report)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def run_checks(gguf_path: Path, hf_dir: Path, expect: str | None,
               tokenizer_json: bool = True) -> Report:
    """Run every check and return the report (errors are collected)."""
    if not gguf_path.is_file():
        raise UsageError(f"GGUF file not found: {gguf_path}")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise UsageError(f"config.json not found in {hf_dir}")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise UsageError(f"cannot parse {config_path}: {exc}") from exc
    try:
        source = SourceWeights(hf_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read HF weights in {hf_dir}: {exc}") from exc

    report = Report()
    try:
        reader = GGUFReader(gguf_path)
    except Exception as exc:  # any parse failure is a failed check
        report.error(f"cannot read GGUF: {exc}")
        return report
    check_metadata(reader, config, hf_dir, report, tokenizer_json)
    check_tensors(reader, config, source, expect, report)
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", required=True, type=Path, help="GGUF file to check")
    parser.add_argument("--hf", required=True, type=Path, help="Hugging Face checkpoint folder")
    parser.add_argument("--expect-type", choices=sorted(EXPECT_TYPES),
                        help="output type the GGUF was requested with")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-tokenizer-json", action="store_true",
                        help="the file descends from a llama.cpp GGUF: expect no unmask.tokenizer_json")
    return parser.parse_args(argv)  # exits with status 2 on usage errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = run_checks(args.gguf, args.hf, args.expect_type, not args.no_tokenizer_json)
    except UsageError as exc:
        print(f"usage error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=None))
    else:
        report.print_text(args.gguf, args.hf)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
