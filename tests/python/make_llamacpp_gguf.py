#!/usr/bin/env python3
"""Write a GGUF file the way llama.cpp's ``convert_hf_to_gguf.py`` does for a DreamModel.

llama.cpp's converter needs torch, transformers and its own ``conversion``
package, none of which is available to this project's tests. This script
reproduces, with only PyPI ``gguf`` and numpy, what that converter writes for
a Hugging Face checkpoint whose ``config.json`` names ``DreamModel`` (the
DiffuCoder / Dream family, ``MODEL_ARCH.DREAM``), so that ``unmask`` can be
tested on files it did not write itself. It follows the converter step by
step and uses the same ``gguf`` helpers it uses:

* tensors (``prepare_tensors``): shards ``model*.safetensors`` in sorted file
  order, tensors within a shard sorted by name (``safe_open().keys()``);
  BF16 sources become F32, F16/F32 stay as they are; names come from
  ``gguf.get_tensor_name_map(MODEL_ARCH.DREAM, n_layers)``; 1-D tensors,
  ``*_norm.weight`` and biases are F32, other weights take the output type
  via ``gguf.quants.quantize`` (falling back to F16 on ``QuantError``);
* metadata (``prepare_metadata``): ``general.type``, the model-card metadata
  of ``gguf.Metadata`` (name falls back to the folder name, size label from
  the parameter count), the ``TextModel`` hyper-parameters and file type,
  Dream's ``dream.attention.causal = false`` and mask token id, the
  vocabulary, then ``general.quantization_version``;
* vocabulary (``DreamModel.get_vocab_base`` + ``_set_vocab_gpt2``): token
  list and types built from ``tokenizer.json`` as transformers' tokenizer
  would present them, ``tokenizer.ggml.pre = "qwen2"`` (the converter derives
  it by hashing the tokenization of a probe text; every Qwen2 tokenizer gives
  ``qwen2``), and ``gguf.SpecialVocab(dir, load_merges=True)`` for merges,
  special token ids, ``add_*_token`` flags and the chat template.

Unlike ``unmask``, the result has no ``unmask.*`` keys and no embedded
tokenizer.json. One deliberate deviation: when ``tie_word_embeddings`` is
true, a stored ``lm_head.weight`` is dropped (llama.cpp would copy it).
Tensors are held in memory until written, so this is meant for small test
checkpoints.

Usage::

    python make_llamacpp_gguf.py HF_DIR OUT.gguf [--outtype f16|f32|bf16|q8_0]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import LlamaFileType, TokenType

ARCH = gguf.MODEL_ARCH.DREAM

# --outtype -> (general.file_type, tensor type for quantizable weights)
OUTTYPES: dict[str, tuple[LlamaFileType, QT]] = {
    "f32": (LlamaFileType.ALL_F32, QT.F32),
    "f16": (LlamaFileType.MOSTLY_F16, QT.F16),
    "bf16": (LlamaFileType.MOSTLY_BF16, QT.BF16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, QT.Q8_0),
}

# Tensors the converter skips outright.
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


# ---------------------------------------------------------------- safetensors


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def shard_paths(hf_dir: Path) -> list[Path]:
    """The safetensors parts, in the converter's order (sorted file names)."""
    parts = sorted(p for p in hf_dir.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    if not parts:
        raise FileNotFoundError(f"no model*.safetensors in {hf_dir}")
    return parts


def decode_tensor(dtype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """Safetensors bytes -> numpy, with the converter's dtype rule (BF16 -> F32)."""
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").reshape(shape)
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    raise ValueError(f"unsupported safetensors dtype {dtype}")


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for one shard, names sorted as ``safe_open().keys()`` does."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        for name in sorted(k for k in header if k != "__metadata__"):
            info = header[name]
            start, end = info["data_offsets"]
            f.seek(base + start)
            yield name, decode_tensor(info["dtype"], info["shape"], f.read(end - start))


def checkpoint_tensors(hf_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """All tensors of the checkpoint, checked against the index when there is one."""
    index_file = hf_dir / "model.safetensors.index.json"
    expected = set(read_json(index_file)["weight_map"]) if index_file.is_file() else None
    seen: set[str] = set()
    for part in shard_paths(hf_dir):
        for name, data in read_safetensors(part):
            seen.add(name)
            yield name, data
    if expected is not None and seen != expected:
        raise ValueError(f"index and shards disagree: missing {sorted(expected - seen)}, extra {sorted(seen - expected)}")


# -------------------------------------------------------------------- tensors


def tensor_qtype(new_name: str, n_dims: int, weight_qtype: QT) -> QT:
    """The converter's choice: norms, 1-D tensors and non-weights stay F32."""
    if n_dims <= 1 or new_name.endswith("_norm.weight") or not new_name.endswith(".weight"):
        return QT.F32
    return weight_qtype


def quantize(data: np.ndarray, qtype: QT) -> tuple[np.ndarray, QT]:
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError as e:
        print(f"warning: {e}, falling back to F16", file=sys.stderr)
        return gguf.quants.quantize(data, QT.F16), QT.F16


def add_tensors(writer: gguf.GGUFWriter, hf_dir: Path, hparams: dict[str, Any], weight_qtype: QT) -> None:
    tensor_map = gguf.get_tensor_name_map(ARCH, hparams["num_hidden_layers"])
    tied = bool(hparams.get("tie_word_embeddings", False))
    for name, data in checkpoint_tensors(hf_dir):
        if name.endswith(SKIPPED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        new_name = tensor_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"Can not map tensor {name!r}")
        squeezed = data.squeeze()
        if squeezed.ndim == 0:
            squeezed = data
        out, qtype = quantize(squeezed, tensor_qtype(new_name, squeezed.ndim, weight_qtype))
        writer.add_tensor(new_name, out, raw_dtype=qtype)


# ------------------------------------------------------------------- metadata


def add_model_metadata(writer: gguf.GGUFWriter, hf_dir: Path) -> None:
    """``general.type`` and the model-card metadata, as ``prepare_metadata`` writes them."""
    total, shared, expert, expert_count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, hf_dir, None, total)
    if metadata.name is None:
        metadata.name = hf_dir.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, expert_count)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def add_hparams(writer: gguf.GGUFWriter, hparams: dict[str, Any], file_type: LlamaFileType) -> None:
    """``TextModel.set_gguf_parameters`` followed by ``DreamModel``'s additions."""
    writer.add_block_count(hparams["num_hidden_layers"])
    if (n_ctx := hparams.get("max_position_embeddings")) is not None:
        writer.add_context_length(n_ctx)
    writer.add_embedding_length(hparams["hidden_size"])
    if (n_ff := hparams.get("intermediate_size")) is not None:
        writer.add_feed_forward_length(n_ff)
    writer.add_head_count(hparams["num_attention_heads"])
    if (n_head_kv := hparams.get("num_key_value_heads")) is not None:
        writer.add_head_count_kv(n_head_kv)
    if (rope_theta := hparams.get("rope_theta")) is not None:
        writer.add_rope_freq_base(rope_theta)
    if (rms_eps := hparams.get("rms_norm_eps")) is not None:
        writer.add_layer_norm_rms_eps(rms_eps)
    if (head_dim := hparams.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_causal_attention(False)
    if (mask_token_id := hparams.get("mask_token_id")) is not None:
        writer.add_mask_token_id(mask_token_id)


# ---------------------------------------------------------------- vocabulary


def vocab_tokens(hf_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """``DreamModel.get_vocab_base``: tokens 0..vocab_size-1 and their types."""
    tokenizer = read_json(hf_dir / "tokenizer.json")
    added = {t["id"]: t for t in tokenizer.get("added_tokens", [])}
    vocab: dict[str, int] = dict(tokenizer["model"]["vocab"])
    vocab.update({t["content"]: i for i, t in added.items()})  # as tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"tokenizer has ids >= vocab_size {vocab_size}")
    added_contents = {t["content"] for t in added.values()}
    reverse = {i: tok for tok, i in vocab.items()}

    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tokens.append(reverse[i])
        if reverse[i] not in added_contents:
            types.append(TokenType.NORMAL)
        elif i not in added or added[i].get("special", False):
            types.append(TokenType.CONTROL)
        else:
            types.append(TokenType.USER_DEFINED)
    return tokens, types


def add_vocab(writer: gguf.GGUFWriter, hf_dir: Path, hparams: dict[str, Any]) -> None:
    """``TextModel._set_vocab_gpt2`` (Dream checkpoints have no tokenizer.model)."""
    tokens, types = vocab_tokens(hf_dir, hparams["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(writer)


# ----------------------------------------------------------------------- main


def convert(hf_dir: Path, out: Path, outtype: str) -> None:
    hparams = read_json(hf_dir / "config.json")
    if "DreamModel" not in hparams.get("architectures", []):
        raise ValueError(f"{hf_dir}/config.json does not name DreamModel")
    file_type, weight_qtype = OUTTYPES[outtype]

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[ARCH])
    add_tensors(writer, hf_dir, hparams, weight_qtype)
    add_model_metadata(writer, hf_dir)
    add_hparams(writer, hparams, file_type)
    add_vocab(writer, hf_dir, hparams)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", type=Path, help="Hugging Face DreamModel checkpoint folder")
    parser.add_argument("out", type=Path, help="output GGUF file")
    parser.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16", help="weight type (default: f16)")
    args = parser.parse_args(argv)
    convert(args.hf_dir, args.out, args.outtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
