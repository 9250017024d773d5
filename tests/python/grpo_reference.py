#!/usr/bin/env python3
"""Independent PyTorch autograd reference for the training losses (spec: docs/training.md).

The Rust trainer (``unmask-train``) is checked against this file tensor by tensor: loss value,
per-token log-probabilities of each forward pass, and the gradient of every parameter. Written for
exactness, not speed; CPU, deterministic, float32 by default (``--dtype float64`` available).

Model: reference.py's ``load_model`` (stock transformers Qwen2ForCausalLM, eager attention, made
bidirectional by an explicit all-zero 4-D additive mask, weights upcast exactly from bf16), run here
WITH autograd on a batch of rows. Logits shift (docs/model.md §3): the logit row predicting the token at
position ``k`` is row ``k-1``; the prompt (position 0 included) is never masked, so ``k >= 1``.

Subcommands (``grpo_reference.py SUBCOMMAND --help``):
  coupled-grpo  coupled-GRPO loss (docs/training.md §1 and §4) and its parameter gradients
  sft           masked-diffusion SFT loss (§6) and its parameter gradients
  make-inputs   a deterministic example input file for either loss

File formats are described in GRPO_REFERENCE.md next to this file.

coupled-grpo, for one mask seed (one inner iteration; ``t`` is the batch's masking ratio):
  input_X   = seq with completion positions masked in pass X replaced by mask_id
              (full: whole completion; a: mask_a; b: completion AND NOT mask_a)
  lp_X(k)   = log_softmax(logits(input_X)[row P+k-1])[seq[P+k]]      (k = 0..K-1)
  logp(k)   = 0.5 * (lp_full(k) + (lp_a(k)/t if mask_a[k] else lp_b(k)/(1-t)))
  ratio     = exp(logp - old)                (old = logp.detach() when old_logp is absent)
  per_token = -min(ratio*A, clamp(ratio, 1-eps, 1+eps)*A) + beta*(exp(ref-logp) - (ref-logp) - 1)
  loss      = sum(per_token * completion_mask) / max(1, sum(completion_mask))   (whole batch)

sft (normalisation ``tokens``, the default):
  loss = sum_{rows i} sum_{masked k} CE_i(k) / t_i  /  sum_i (L - prompt_len_i)
``--norm rows`` (LLaDA's SFT code): mean over rows of  sum_{masked k} CE_i(k) / t_i / (L - prompt_len_i).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference as R  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def load_inputs(path: Path | str) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` or ``.safetensors`` input file."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    raise SystemExit(f"{path}: expected a .npz or .safetensors file")


def save_arrays(path: Path | str, arrays: dict[str, np.ndarray], metadata: Optional[dict] = None) -> None:
    path = Path(path)
    arrays = {k: np.asarray(v, order="C") for k, v in arrays.items()}  # keeps 0-d scalars 0-d
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    else:
        raise SystemExit(f"{path}: expected a .npz or .safetensors file")


def scalar(inputs: dict, name: str, default=None):
    """A scalar input stored with any shape of one element (0-d or [1])."""
    if name not in inputs:
        if default is None:
            raise SystemExit(f"input file lacks {name!r}")
        return default
    value = np.asarray(inputs[name])
    if value.size != 1:
        raise SystemExit(f"{name!r} must hold one value, has shape {value.shape}")
    return value.reshape(()).item()


def as_bool(value: np.ndarray) -> np.ndarray:
    """A mask stored as bool or as any integer / float type (nonzero = true)."""
    value = np.asarray(value)
    return value if value.dtype == np.bool_ else value != 0


# ---------------------------------------------------------------------------
# Forward pass with autograd
# ---------------------------------------------------------------------------


EXACT_ATTENTION = "unmask_eager_exact"


def _eager_attention_exact(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention with the softmax in the query's dtype when that is wider than
    float32 (stock eager always takes the softmax in float32, which caps a float64 model at float32
    precision). Registered only for float64 models; identical operations otherwise."""
    from transformers.models.qwen2.modeling_qwen2 import repeat_kv

    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    softmax_dtype = torch.promote_types(query.dtype, torch.float32)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=softmax_dtype).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _rms_norm_exact(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """Qwen2RMSNorm computing in max(input dtype, float32) instead of always float32."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.promote_types(input_dtype, torch.float32))
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


def make_exact(ref: R.ReferenceModel) -> R.ReferenceModel:
    """Make a float64 model really float64: transformers' Qwen2 computes RMSNorm and the attention
    softmax in float32 whatever the model dtype. Patches only this model's instances (the norm
    modules' forward and this model's attention implementation); float32 models are untouched."""
    import types

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if EXACT_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(EXACT_ATTENTION, _eager_attention_exact)
        ALL_MASK_ATTENTION_FUNCTIONS.register(EXACT_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    ref.model.config._attn_implementation = EXACT_ATTENTION
    for module in ref.model.modules():
        if type(module).__name__ == "Qwen2RMSNorm":
            module.forward = types.MethodType(_rms_norm_exact, module)
    return ref


def load_train_model(hf_dir: Path | str, dtype: torch.dtype = torch.float32) -> R.ReferenceModel:
    """reference.py's bidirectional model, in ``dtype``, parameters requiring grad.

    float64 also gets ``make_exact`` (RMSNorm and attention softmax in float64)."""
    ref = R.load_model(hf_dir)
    ref.model.to(dtype)
    for p in ref.model.parameters():
        p.requires_grad_(True)
    if dtype == torch.float64:
        make_exact(ref)
    return ref


def model_dtype(ref: R.ReferenceModel) -> torch.dtype:
    return next(ref.model.parameters()).dtype


def bidirectional_logits(ref: R.ReferenceModel, ids: torch.Tensor) -> torch.Tensor:
    """Raw (unshifted) logits [B, L, V] of a batch of rows [B, L], with autograd.

    Every row is an independent sequence with positions 0..L-1 and no padding; the all-zero
    additive mask [B, 1, L, L] makes attention bidirectional (reference.py's guard hook checks it).
    """
    batch, length = ids.shape
    dtype = model_dtype(ref)
    out = ref.model(
        input_ids=ids,
        attention_mask=torch.zeros(batch, 1, length, length, dtype=dtype),
        position_ids=torch.arange(length).view(1, length).expand(batch, length),
        use_cache=False,
    )
    return out.logits


def token_logprobs(ref: R.ReferenceModel, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """lp[i, k] = log_softmax(logits(inputs)[i, k-1])[targets[i, k]] for k >= 1, [B, L].

    Column 0 is 0 (position 0 is never predicted: it is prompt). The shift is docs/model.md §3.
    """
    logits = bidirectional_logits(ref, inputs)
    logprobs = torch.log_softmax(logits[:, :-1, :], dim=-1)
    picked = torch.gather(logprobs, -1, targets[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


# ---------------------------------------------------------------------------
# Coupled-GRPO
# ---------------------------------------------------------------------------


def coupled_pass_masks(mask_a: torch.Tensor, prompt_len: int) -> dict[str, torch.Tensor]:
    """The three masks over the full length L = P + K (True = replaced by mask_id).

    full: the whole completion; a: mask_a; b: the completion positions NOT in mask_a.
    The prompt is never masked.
    """
    n, k = mask_a.shape
    prompt = torch.zeros(n, prompt_len, dtype=torch.bool)
    completion = torch.ones(n, k, dtype=torch.bool)
    return {
        "full": torch.cat([prompt, completion], dim=1),
        "a": torch.cat([prompt, mask_a], dim=1),
        "b": torch.cat([prompt, completion & ~mask_a], dim=1),
    }


def t_per_row(t: np.ndarray | float, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``t`` given as one value for the batch (0-d or [1]) or one per row [N], as [N, 1]."""
    t = torch.as_tensor(np.asarray(t, dtype=np.float64)).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise SystemExit(f"t must hold 1 or N={n} values, has {t.numel()}")
    return t.to(dtype).reshape(n, 1)


def coupled_logp(ref: R.ReferenceModel, seqs: torch.Tensor, prompt_len: int, mask_a: torch.Tensor,
                 t: torch.Tensor, mask_id: int) -> dict[str, torch.Tensor]:
    """docs/training.md §4: the three passes' per-token log-probs and the coupled logp, all [N, K]."""
    if prompt_len < 1:
        raise SystemExit("prompt_len must be >= 1 (position 0 has no shifted logit row)")
    masks = coupled_pass_masks(mask_a, prompt_len)
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        inputs = torch.where(mask, torch.full_like(seqs, mask_id), seqs)
        out[f"lp_{name}"] = token_logprobs(ref, inputs, seqs)[:, prompt_len:]
    # Only the selected pass of each token carries gradient (torch.where routes it).
    partner = torch.where(mask_a, out["lp_a"] / t, out["lp_b"] / (1 - t))
    out["logp"] = 0.5 * (out["lp_full"] + partner)
    return out


def grpo_objective(logp: torch.Tensor, old_logp: Optional[torch.Tensor], ref_logp: Optional[torch.Tensor],
                   advantages: torch.Tensor, completion_mask: torch.Tensor, beta: float,
                   clip_eps: float) -> dict[str, torch.Tensor]:
    """docs/training.md §1: per-token loss and the batch loss (sum over tokens / token count)."""
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    adv = advantages.reshape(-1, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.min(unclipped, clipped)
    if beta != 0:
        if ref_logp is None:
            raise SystemExit("beta != 0 needs ref_logp in the input file or --ref-model")
        diff = ref_logp - logp
        per_token = per_token + beta * (torch.exp(diff) - diff - 1)
    count = torch.clamp(completion_mask.sum(), min=1)
    loss = (per_token * completion_mask).sum() / count
    return {"loss": loss, "per_token": per_token, "ratio": ratio}


def surrogate_grad_factor(ratio: np.ndarray, adv: np.ndarray, clip_eps: float) -> np.ndarray:
    """Fraction of -A*ratio that torch's autograd routes to logp through -min(ratio*A, clamp(ratio)*A).

    Derived from torch's backward rules (checked by the selftest): ``torch.min`` of two equal values
    sends half the gradient to each operand; ``torch.clamp`` passes the gradient only strictly
    inside (lo, hi) (zero exactly at a bound, torch 2.15). Hence:
      unclipped strictly smaller -> 1;  clipped strictly smaller -> 0;
      equal (ratio inside the clip interval, or A == 0): 1/2 + 1/2 * [lo < ratio < hi],
      i.e. 1 strictly inside, 1/2 exactly at a bound.
    Comparisons are done in ratio's dtype, as the autograd route does.
    """
    ratio = np.asarray(ratio)
    dt = ratio.dtype.type
    lo, hi = dt(1 - clip_eps), dt(1 + clip_eps)
    adv = np.asarray(adv, dtype=ratio.dtype)
    a = ratio * adv
    b = np.clip(ratio, lo, hi) * adv
    inside = ((ratio > lo) & (ratio < hi)).astype(ratio.dtype)
    return np.where(a < b, 1.0, np.where(a > b, 0.0, 0.5 + 0.5 * inside)).astype(ratio.dtype)


def run_coupled_grpo(ref: R.ReferenceModel, inputs: dict[str, np.ndarray],
                     ref_model: Optional[R.ReferenceModel] = None) -> dict[str, torch.Tensor]:
    """Loss, per-token tensors and parameter gradients (named ``grad.<hf name>``) for one input file."""
    dtype = model_dtype(ref)
    seqs = torch.as_tensor(np.asarray(inputs["seqs"], dtype=np.int64))
    n, length = seqs.shape
    prompt_len = int(scalar(inputs, "prompt_len"))
    k = length - prompt_len
    mask_a = torch.as_tensor(as_bool(inputs["mask_a"]))
    if tuple(mask_a.shape) != (n, k):
        raise SystemExit(f"mask_a has shape {tuple(mask_a.shape)}, expected [N, K] = [{n}, {k}]")
    cmask = torch.as_tensor(np.asarray(inputs["completion_mask"], dtype=np.float64)).to(dtype)
    adv = torch.as_tensor(np.asarray(inputs["advantages"], dtype=np.float64)).to(dtype).reshape(n)
    t = t_per_row(scalar(inputs, "t"), n, dtype)  # one t for the batch (docs/training.md §4)
    mask_id = int(scalar(inputs, "mask_id", ref.mask_token_id))
    beta = float(scalar(inputs, "beta"))
    clip_eps = float(scalar(inputs, "clip_eps"))

    def opt(name):
        if name not in inputs:
            return None
        return torch.as_tensor(np.asarray(inputs[name], dtype=np.float64)).to(dtype)

    old_logp, ref_logp = opt("old_logp"), opt("ref_logp")
    out: dict[str, torch.Tensor] = {}
    if ref_model is not None:
        if ref_logp is not None:
            raise SystemExit("give either ref_logp in the input file or --ref-model, not both")
        with torch.no_grad():
            ref_logp = coupled_logp(ref_model, seqs, prompt_len, mask_a, t, mask_id)["logp"].to(dtype)
        out["ref_logp"] = ref_logp

    ref.model.zero_grad(set_to_none=True)
    passes = coupled_logp(ref, seqs, prompt_len, mask_a, t, mask_id)
    for tensor in passes.values():
        tensor.retain_grad()
    obj = grpo_objective(passes["logp"], old_logp, ref_logp, adv, cmask, beta, clip_eps)
    obj["loss"].backward()

    out["loss"] = obj["loss"].detach().reshape(1)
    for name in ("logp", "lp_full", "lp_a", "lp_b"):
        out[name] = passes[name].detach()
    out["ratio"] = obj["ratio"].detach()
    out["per_token"] = obj["per_token"].detach()
    # dLoss/dlogp and the §5 per-token weights dLoss/dlp_X (zero where X does not predict k).
    out["dlogp"] = passes["logp"].grad.detach()
    for name in ("full", "a", "b"):
        out[f"w_{name}"] = passes[f"lp_{name}"].grad.detach()
    for name, param in ref.model.named_parameters():
        out[f"grad.{name}"] = param.grad.detach().clone()
    return out


# ---------------------------------------------------------------------------
# Masked-diffusion SFT
# ---------------------------------------------------------------------------


def prompt_lens_per_row(value, n: int) -> torch.Tensor:
    value = np.asarray(value, dtype=np.int64).reshape(-1)
    if value.size == 1:
        value = np.repeat(value, n)
    if value.size != n:
        raise SystemExit(f"prompt_len must hold 1 or N={n} values, has {value.size}")
    return torch.as_tensor(value)


def sft_objective(lp: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, response: torch.Tensor,
                  norm: str) -> dict[str, torch.Tensor]:
    """CE/t on masked tokens; normalised by response tokens of the batch (``tokens``) or per row (``rows``)."""
    ce = torch.where(mask, -lp, torch.zeros_like(lp))
    weighted = ce / t
    n_resp = response.sum(dim=1).to(lp.dtype)
    if norm == "tokens":
        loss = weighted.sum() / torch.clamp(n_resp.sum(), min=1)
    elif norm == "rows":
        loss = (weighted.sum(dim=1) / torch.clamp(n_resp, min=1)).mean()
    else:
        raise SystemExit(f"unknown normalisation {norm!r}")
    return {"loss": loss, "ce": ce}


def sft_tensors(inputs: dict[str, np.ndarray], n_expected: Optional[int] = None):
    seqs = torch.as_tensor(np.asarray(inputs["seqs"], dtype=np.int64))
    n, length = seqs.shape
    plens = prompt_lens_per_row(inputs["prompt_len"], n)
    if int(plens.min()) < 1 or int(plens.max()) >= length:
        raise SystemExit("every prompt_len must be in 1..L-1")
    mask = torch.as_tensor(as_bool(inputs["mask"]))
    if tuple(mask.shape) != (n, length):
        raise SystemExit(f"mask has shape {tuple(mask.shape)}, expected [N, L] = [{n}, {length}]")
    response = torch.arange(length).view(1, length) >= plens.view(n, 1)
    if bool((mask & ~response).any()):
        raise SystemExit("mask marks a prompt position; the prompt is never masked")
    return seqs, plens, mask, response


def run_sft(ref: R.ReferenceModel, inputs: dict[str, np.ndarray], norm: str = "tokens") -> dict[str, torch.Tensor]:
    dtype = model_dtype(ref)
    seqs, _plens, mask, response = sft_tensors(inputs)
    n = seqs.shape[0]
    t = t_per_row(inputs["t"], n, dtype)
    mask_id = int(scalar(inputs, "mask_id", ref.mask_token_id))
    ref.model.zero_grad(set_to_none=True)
    lp = token_logprobs(ref, torch.where(mask, torch.full_like(seqs, mask_id), seqs), seqs)
    obj = sft_objective(lp, mask, t, response, norm)
    obj["loss"].backward()
    out = {"loss": obj["loss"].detach().reshape(1), "lp": lp.detach(), "ce": obj["ce"].detach()}
    for name, param in ref.model.named_parameters():
        out[f"grad.{name}"] = param.grad.detach().clone()
    return out


# ---------------------------------------------------------------------------
# Example inputs
# ---------------------------------------------------------------------------


def special_ids(hf_dir: Path, cfg: dict) -> dict[str, int]:
    """Added tokens of the tokenizer by content (empty when there is no tokenizer.json)."""
    path = hf_dir / "tokenizer.json"
    found: dict[str, int] = {}
    if path.exists():
        for tok in json.loads(path.read_text()).get("added_tokens", []):
            found[tok["content"]] = int(tok["id"])
    return found


def ordinary_limit(hf_dir: Path, cfg: dict) -> int:
    """Token ids below this are ordinary (below every special token)."""
    specials = list(special_ids(hf_dir, cfg).values()) + [int(cfg["mask_token_id"])]
    return min(specials + [int(cfg["vocab_size"])])


def draw_log_ratio(rng: np.random.Generator, clip_eps: float, margin: float = 0.05) -> float:
    """log(ratio) in [-1.2, 1.2] at least ``margin`` away from log(1 -+ eps), so an implementation
    whose logp differs by rounding cannot land on the other side of a clip bound."""
    bounds = [math.log(1 + clip_eps)] + ([math.log(1 - clip_eps)] if clip_eps < 1 else [])
    while True:
        d = float(rng.uniform(-1.2, 1.2))
        if all(abs(d - b) > margin for b in bounds):
            return d


def make_grpo_inputs(ref: R.ReferenceModel, hf_dir: Path, seed: int, n: int, prompt_len: int, k: int,
                     beta: float, clip_eps: float, with_old: bool, with_ref: bool) -> dict[str, np.ndarray]:
    cfg = ref.config
    rng = np.random.default_rng(seed)
    specials = special_ids(hf_dir, cfg)
    limit = ordinary_limit(hf_dir, cfg)
    im_end = specials.get("<|im_end|>", int(cfg.get("eos_token_id", limit - 1)))
    pad = specials.get("<|dlm_pad|>", im_end)
    prompt = rng.integers(0, limit, size=prompt_len)  # G completions of one prompt
    seqs = np.zeros((n, prompt_len + k), dtype=np.int64)
    cmask = np.zeros((n, k), dtype=np.float32)
    for i in range(n):
        completion = rng.integers(0, limit, size=k)
        if i % 3 != 0:  # rows 0, 3, ...: no <|im_end|> (all K tokens count)
            end = int(rng.integers(0, k))
            completion[end] = im_end
            completion[end + 1:] = pad
            cmask[i, :end + 1] = 1
        else:
            cmask[i, :] = 1
        seqs[i] = np.concatenate([prompt, completion])
    rewards = rng.normal(size=n)
    adv = (rewards - rewards.mean()).astype(np.float32)
    if n > 2:
        adv[2] = 0.0  # an A == 0 row (both branches tie at 0)
    t = float(rng.uniform(0.2, 0.8))
    mask_a = rng.uniform(size=(n, k)) < t
    data = {
        "seqs": seqs, "prompt_len": np.array(prompt_len, dtype=np.int64), "completion_mask": cmask,
        "advantages": adv, "t": np.array(t, dtype=np.float64), "mask_a": mask_a,
        "beta": np.array(beta, dtype=np.float64), "clip_eps": np.array(clip_eps, dtype=np.float64),
        "mask_id": np.array(ref.mask_token_id, dtype=np.int64),
    }
    if with_old or with_ref:
        with torch.no_grad():
            logp = coupled_logp(ref, torch.as_tensor(seqs), prompt_len, torch.as_tensor(mask_a),
                                t_per_row(t, n, model_dtype(ref)), ref.mask_token_id)["logp"]
        logp = logp.double().numpy()
        if with_old:
            d = np.array([[draw_log_ratio(rng, clip_eps) for _ in range(k)] for _ in range(n)])
            data["old_logp"] = (logp - d).astype(np.float32)
        if with_ref:
            data["ref_logp"] = (logp + rng.normal(scale=0.5, size=(n, k))).astype(np.float32)
    return data


def make_sft_inputs(ref: R.ReferenceModel, hf_dir: Path, seed: int, n: int, prompt_len: int,
                    k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    limit = ordinary_limit(hf_dir, ref.config)
    length = prompt_len + k
    seqs = rng.integers(0, limit, size=(n, length)).astype(np.int64)
    plens = rng.integers(1, prompt_len + 1, size=n).astype(np.int64)  # varying prompt lengths
    t = rng.uniform(0.1, 1.0, size=n)
    mask = np.zeros((n, length), dtype=bool)
    for i in range(n):
        resp = np.arange(plens[i], length)
        mask[i, resp] = rng.uniform(size=resp.size) < t[i]
        if not mask[i].any():
            mask[i, resp[int(rng.integers(0, resp.size))]] = True
    return {"seqs": seqs, "prompt_len": plens, "t": t.astype(np.float64), "mask": mask,
            "mask_id": np.array(ref.mask_token_id, dtype=np.int64)}


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def to_numpy_outputs(out: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, np.ndarray]:
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return {k: v.detach().to(torch.float64).numpy().astype(np_dtype) for k, v in out.items()}


def cmd_coupled_grpo(args) -> None:
    dtype = DTYPES[args.dtype]
    ref = load_train_model(args.hf, dtype)
    ref_model = None
    if args.ref_model is not None:
        ref_model = load_train_model(args.ref_model, dtype)
    out = run_coupled_grpo(ref, load_inputs(args.inputs), ref_model)
    save_arrays(args.out, to_numpy_outputs(out, dtype), {"loss": "coupled-grpo", "dtype": args.dtype})
    print(json.dumps({"loss": float(out["loss"][0])}))


def cmd_sft(args) -> None:
    dtype = DTYPES[args.dtype]
    ref = load_train_model(args.hf, dtype)
    out = run_sft(ref, load_inputs(args.inputs), args.norm)
    save_arrays(args.out, to_numpy_outputs(out, dtype), {"loss": "sft", "norm": args.norm, "dtype": args.dtype})
    print(json.dumps({"loss": float(out["loss"][0])}))


def cmd_make_inputs(args) -> None:
    ref = load_train_model(args.hf, torch.float32)
    if args.kind == "coupled-grpo":
        data = make_grpo_inputs(ref, args.hf, args.seed, args.n, args.prompt_len, args.completion_len,
                                args.beta, args.clip_eps, not args.no_old, not args.no_ref)
    else:
        data = make_sft_inputs(ref, args.hf, args.seed, args.n, args.prompt_len, args.completion_len)
    save_arrays(args.out, data, {"kind": args.kind, "seed": args.seed})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--hf", type=Path, required=True, help="Hugging Face Dream checkpoint folder (the policy)")
        p.add_argument("--inputs", type=Path, required=True, help=".npz or .safetensors input file")
        p.add_argument("--out", type=Path, required=True, help=".safetensors (or .npz) output file")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="compute dtype; outputs are written in it (default float32)")

    p = sub.add_parser("coupled-grpo", help="coupled-GRPO loss and parameter gradients")
    common(p)
    p.add_argument("--ref-model", type=Path, default=None,
                   help="reference policy folder: its coupled logp (same masks, no grad) replaces ref_logp")
    p.set_defaults(func=cmd_coupled_grpo)

    p = sub.add_parser("sft", help="masked-diffusion SFT loss and parameter gradients")
    common(p)
    p.add_argument("--norm", choices=("tokens", "rows"), default="tokens",
                   help="tokens: divide by the batch's response-token count (default); "
                        "rows: per-row response length, then mean over rows (LLaDA SFT)")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("make-inputs", help="a deterministic example input file")
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help=".safetensors or .npz")
    p.add_argument("--kind", choices=("coupled-grpo", "sft"), default="coupled-grpo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=4, help="rows")
    p.add_argument("--prompt-len", type=int, default=6, help="P (sft: the largest prompt length)")
    p.add_argument("--completion-len", type=int, default=10, help="K (sft: L - P)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--clip-eps", type=float, default=0.5)
    p.add_argument("--no-old", action="store_true", help="omit old_logp (mu == 1: old = logp.detach())")
    p.add_argument("--no-ref", action="store_true", help="omit ref_logp (use --ref-model or beta 0)")
    p.set_defaults(func=cmd_make_inputs)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    torch.use_deterministic_algorithms(True)
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
