#!/usr/bin/env python3
"""Independent PyTorch reference for DiffuCoder / Dream (spec: docs/model.md).

The Rust runtime is tested against this file, so it is written for exactness, not
speed. Everything runs on the CPU in float32 and is deterministic for a given seed.

Model. A Dream checkpoint is a Qwen2 transformer whose attention is fully
bidirectional. We build a stock ``transformers.Qwen2ForCausalLM`` (eager attention)
from the Dream ``config.json``, load the bf16 safetensors shards upcast exactly to
float32, and make every forward pass bidirectional by handing the model an explicit
4-D additive attention mask of zeros (``[1, 1, L, L]``): with a 4-D mask
transformers does not build its causal mask, and eager attention adds our zeros,
i.e. masks nothing. A forward pre-hook on every attention module asserts, on every
call, that the mask that actually reaches attention is all zeros (or absent), so a
future transformers release cannot silently reintroduce causality.

Generation. ``generate`` follows Dream's released ``diffusion_generate``
(``DreamGenerationMixin._sample`` + ``sample_tokens``) operation by operation, in
the same float32 tensor arithmetic and the same order of random draws, with these
documented choices where the original is unspecified:

* top-k commit selection (``alg_temp == 0``) breaks confidence ties by the LOWER
  canvas position (``torch.topk``'s order among ties is unspecified);
* the top-p filter's descending sort is stable (ties: lower token id first), so
  which of two equal logits survives at the nucleus boundary is defined;
* greedy ``x0`` (temperature 0) is ``argmax`` over the probabilities, first index
  on ties (as ``probs.max(dim=-1)`` does on CPU);
* ``--top-k 0`` means "no top-k filter" (in Dream it would crash);
* an optional block mode (``--block-length``), described in ``generate``.

Quirk kept on purpose (Dream does the same): nothing forbids the sampler from
predicting the mask token itself. Writing the mask id "commits" a position that is
then still masked and is predicted again at the next step. The JSON output lists
such events under ``"mask_commits"`` (normally empty) so tests can tell.

Output of ``generate --json``: {"tokens": generated ids only, "canvas": prompt ++
generated, "steps": S, "commits": for each step the ABSOLUTE canvas positions written
at that step (ascending; prompt positions count), "mask_commits": [[step, position]]
where the written token was the mask id}.

Subcommands (run ``reference.py SUBCOMMAND --help``):
  logits    raw (unshifted) logits [L, V] of a sequence, float32 .npy
  generate  the denoising loop, JSON with tokens, canvas and per-step commits
  linspace  float32 torch.linspace(1, eps, S+1) with bit patterns, JSON
  schedule  tokens committed per step by the plain algorithm, JSON
  dist      the distribution sample_tokens samples from at one position, float64 .npy
  check     bidirectionality / all-attend self-check of a model folder
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributions as dists
import torch.nn.functional as F

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")

# ---------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------


def read_config(hf_dir: Path) -> dict:
    """The Dream ``config.json`` as a dict, after checking it is a Dream model."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") != "Dream" and "DreamModel" not in cfg.get("architectures", []):
        raise SystemExit(f"{hf_dir}: not a Dream checkpoint (model_type={cfg.get('model_type')!r})")
    if cfg.get("rope_scaling"):
        raise SystemExit(f"{hf_dir}: rope_scaling {cfg['rope_scaling']!r} is not supported (spec: none)")
    return cfg


def qwen2_config(cfg: dict):
    """A ``transformers.Qwen2Config`` with the Dream hyper-parameters.

    Only the architecture-defining values are copied; everything that could change
    the computation (rope scaling, dropout, sliding window) is pinned off.
    """
    from transformers import Qwen2Config

    qc = Qwen2Config(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        # transformers 5 keeps RoPE settings in rope_parameters; "default" = plain
        # (unscaled) RoPE with inv_freq = theta^(-2j/head_dim).
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg["rope_theta"])},
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_dropout=0.0,
        use_sliding_window=False,
        use_cache=False,
    )
    # Dream configs carry no head_dim; Qwen2 derives hidden_size // heads. Make it
    # explicit so a transformers default can never differ.
    qc.head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert qc.rope_parameters["rope_type"] == "default"
    assert qc.rope_parameters["rope_theta"] == float(cfg["rope_theta"])
    assert qc.sliding_window is None and all(t == "full_attention" for t in qc.layer_types)
    return qc


def load_state_dict(hf_dir: Path, tie: bool) -> dict[str, torch.Tensor]:
    """All tensors of the (possibly sharded) checkpoint, upcast to float32.

    bf16 -> f32 is exact (bf16 is the top half of an f32), so these are the
    checkpoint's values bit for bit.
    """
    from safetensors.torch import load_file

    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        for name, tensor in load_file(str(hf_dir / shard)).items():
            state[name] = tensor.to(torch.float32)
    if "lm_head.weight" not in state:
        if not tie:
            raise SystemExit(f"{hf_dir}: lm_head.weight missing and tie_word_embeddings is false")
        # Tied model: the output projection IS the embedding matrix.
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def _assert_all_attend(module, args, kwargs):
    """Forward pre-hook on every attention module: refuse any mask that masks something.

    ``None`` is accepted too: eager attention applies no mask of its own.
    """
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if mask is not None:
        if not torch.is_tensor(mask) or not torch.all(mask == 0):
            raise AssertionError("attention received a mask that is not all-attend (zeros)")
    return None


@dataclass
class ReferenceModel:
    """A Dream model: stock Qwen2ForCausalLM run with bidirectional attention."""

    model: torch.nn.Module
    config: dict

    @property
    def mask_token_id(self) -> int:
        return int(self.config["mask_token_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw (unshifted) float32 logits [L, V] of one sequence of token ids [L]."""
        length = ids.shape[0]
        out = self.model(
            input_ids=ids.view(1, length),
            attention_mask=full_attention_mask(length),
            position_ids=torch.arange(length).view(1, length),
            use_cache=False,
        )
        return out.logits[0].to(torch.float32)


def full_attention_mask(length: int) -> torch.Tensor:
    """The additive 4-D mask [1, 1, L, L] that masks nothing: every query sees every key."""
    return torch.zeros(1, 1, length, length, dtype=torch.float32)


def load_model(hf_dir: Path | str) -> ReferenceModel:
    """Build Qwen2ForCausalLM (float32, eager attention) and load the Dream weights."""
    from transformers import Qwen2ForCausalLM

    hf_dir = Path(hf_dir)
    cfg = read_config(hf_dir)
    qc = qwen2_config(cfg)
    # Eager attention adds the given mask and nothing else; SDPA/flash paths can
    # take an "is_causal" shortcut that would ignore our mask.
    qc._attn_implementation = "eager"
    torch.manual_seed(0)  # random init is overwritten below; seed only for tidiness
    model = Qwen2ForCausalLM(qc).to(torch.float32).eval()
    state = load_state_dict(hf_dir, qc.tie_word_embeddings)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Non-persistent buffers (rotary inv_freq) are never in checkpoints.
    missing = [m for m in missing if not m.endswith("inv_freq")]
    if missing or unexpected:
        raise SystemExit(f"{hf_dir}: weight names do not match Qwen2: missing={missing} unexpected={unexpected}")
    if qc.tie_word_embeddings:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(_assert_all_attend, with_kwargs=True)
    return ReferenceModel(model=model, config=cfg)


def check_bidirectional(ref: ReferenceModel, length: int = 8) -> dict:
    """Prove attention is bidirectional and all-attend on this model.

    1. Changing only the LAST token must change the logits at position 0 (a causal
       model could not).
    2. The attention probabilities (eager, output_attentions) must be strictly
       positive above the diagonal, i.e. no key is masked for any query.
    3. The mask reaching attention is all zeros (the pre-hook would raise otherwise).
    """
    vocab = ref.vocab_size
    ids = torch.arange(1, length + 1) % vocab
    changed = ids.clone()
    changed[-1] = (changed[-1] + 7) % vocab
    a, b = ref.logits(ids), ref.logits(changed)
    delta0 = float((a[0] - b[0]).abs().max())

    with torch.no_grad():
        out = ref.model(
            input_ids=ids.view(1, length),
            attention_mask=full_attention_mask(length),
            position_ids=torch.arange(length).view(1, length),
            output_attentions=True,
            use_cache=False,
        )
    upper = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    min_upper = min(float(att[0][:, upper].min()) for att in out.attentions)
    row_sums_ok = all(torch.allclose(att.sum(-1), torch.ones(()), atol=1e-5) for att in out.attentions)
    return {
        "position0_delta_when_last_token_changes": delta0,
        "min_attention_prob_above_diagonal": min_upper,
        "attention_rows_sum_to_one": row_sums_ok,
        "ok": delta0 > 0 and min_upper > 0 and row_sums_ok,
    }


# ---------------------------------------------------------------------------
# Dream's sampling primitives (generation_utils.py), float32
# ---------------------------------------------------------------------------


def top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter exactly as Dream: remove tokens whose cumulative probability
    (descending order) exceeds top_p, shifted right by one so the first token over
    the threshold is kept; removed logits become finfo(float32).min.

    Note: on CPU torch.cumsum accumulates float32 in double and rounds each prefix
    to float32; the boundary decision compares those rounded prefixes to top_p
    (a float64 python scalar compared against float32 values).
    """
    sorted_logits, sorted_indices = torch.sort(logits, descending=True, stable=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_to_remove = cumulative_probs > top_p
    sorted_to_remove[..., 1:] = sorted_to_remove[..., :-1].clone()
    sorted_to_remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, sorted_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep logits >= the k-th largest (ties at the k-th value all survive)."""
    top_k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def filtered_probs(logits: torch.Tensor, temperature: float, top_p: Optional[float],
                   top_k: Optional[int]) -> torch.Tensor:
    """The distribution sample_tokens draws from: temperature, top-p, top-k, softmax."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None and top_k > 0:
        logits = top_k_logits(logits, top_k)
    return torch.softmax(logits, dim=-1)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: Optional[float],
                  top_k: Optional[int], alg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens``: per row of ``logits`` [M, V] a token x0 and a confidence.

    x0 is a categorical sample when temperature > 0, else the argmax. Confidence:
    maskgit_plus / origin = probability of x0; topk_margin = top1 - top2
    probability; entropy = sum p * log(p + 1e-10) (negative entropy).
    """
    probs = filtered_probs(logits, temperature, top_p, top_k)
    if temperature > 0:
        # Same draw as Dream (Categorical -> torch.multinomial), same RNG stream.
        x0 = dists.Categorical(probs=probs).sample()
    else:
        x0 = torch.argmax(probs, dim=-1)
    confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    if alg == "topk_margin":
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    elif alg == "entropy":
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream's shift: position i is predicted from the hidden state at i-1 (§3)."""
    return torch.cat([logits[:1], logits[:-1]], dim=0)


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------


def timesteps(steps: int, eps: float) -> torch.Tensor:
    """Dream's float32 schedule torch.linspace(1, eps, steps + 1)."""
    return torch.linspace(1, eps, steps + 1, dtype=torch.float32)


def commit_count(candidates: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: bool) -> int:
    """How many of the masked ``candidates`` (bool [L]) a step commits, as Dream computes it.

    ``num_mask_token = mask_index.sum() / mask_index.shape[0]`` over a [1, L] mask is
    a float32 tensor; ``1 - s / t`` is float32; their float32 product is truncated by
    int(). The last step takes everything left.
    """
    mask_index = candidates.view(1, -1)
    num_mask_token = mask_index.sum() / mask_index.shape[0]
    if last:
        return int(num_mask_token)
    return int(num_mask_token * (1 - s / t))


def plain_schedule(n: int, steps: int, eps: float) -> list[int]:
    """Tokens committed per step when all n positions start masked (no mask commits)."""
    ts = timesteps(steps, eps)
    counts: list[int] = []
    for i in range(steps):
        # Which positions are still masked does not matter for the count, only how many.
        masked = torch.arange(n) >= sum(counts)
        counts.append(commit_count(masked, ts[i], ts[i + 1], last=i == steps - 1))
    return counts


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class GenParams:
    max_new_tokens: int
    steps: int
    alg: str = "entropy"
    temperature: float = 0.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    alg_temp: float = 0.0
    eps: float = 1e-3
    block_length: Optional[int] = None
    seed: int = 0


def choose_topk_positions(full_confidence: torch.Tensor, k: int) -> list[int]:
    """The k positions of highest confidence, ties broken by the LOWER position.

    Done in python on exact float values so the tie rule is explicit rather than
    depending on torch.topk's unspecified order.
    """
    values = full_confidence.tolist()
    order = sorted(range(len(values)), key=lambda pos: (-values[pos], pos))
    return order[:k]


def denoise_step(ref: ReferenceModel, x: torch.Tensor, candidates: torch.Tensor,
                 t: torch.Tensor, s: torch.Tensor, last: bool, p: GenParams) -> list[int]:
    """One step of Dream's loop over the masked ``candidates`` (bool [L]); edits x in place.

    Returns the positions written at this step (ascending).
    """
    logits = shift_logits(ref.logits(x))
    mask_logits = logits[candidates]
    positions = torch.nonzero(candidates).flatten()

    if p.alg == "origin":
        # Every candidate independently with probability p_transfer gets a sample.
        p_transfer = 1 - s / t if not last else 1
        transfer = torch.rand(positions.shape[0]) < p_transfer
        # Called even when nothing transfers, as Dream does (an empty batch draws nothing).
        _, sampled = sample_tokens(mask_logits[transfer], p.temperature, p.top_p, p.top_k, p.alg)
        x[positions[transfer]] = sampled
        return sorted(positions[transfer].tolist())

    confidence, x0 = sample_tokens(mask_logits, p.temperature, p.top_p, p.top_k, p.alg)
    k = commit_count(candidates, t, s, last)
    if k <= 0:
        return []
    full_confidence = torch.full((x.shape[0],), -torch.inf, dtype=logits.dtype)
    full_confidence[candidates] = confidence
    if p.alg_temp is None or p.alg_temp == 0:
        chosen = choose_topk_positions(full_confidence, k)
    else:
        weights = F.softmax(full_confidence / p.alg_temp, dim=-1)
        chosen = torch.multinomial(weights, num_samples=k).tolist()
    proposal = torch.full_like(x, ref.mask_token_id)
    proposal[candidates] = x0
    chosen_t = torch.tensor(chosen, dtype=torch.long)
    x[chosen_t] = proposal[chosen_t]
    return sorted(chosen)


def generate(ref: ReferenceModel, prompt: list[int], p: GenParams) -> dict:
    """Dream's diffusion_generate for one prompt (docs/model.md §4).

    Plain mode: ``steps`` steps over the whole canvas with one schedule
    ``linspace(1, eps, steps + 1)``.

    Block mode (``block_length`` B < N): the N new positions form N/B blocks,
    denoised left to right, each with steps/(N/B) steps and its own schedule
    ``linspace(1, eps, steps_per_block + 1)``. During block b only the still-masked
    positions inside block b are candidates (and only they count in
    num_mask_token); the forward pass always sees the whole canvas.
    """
    n, mask_id = p.max_new_tokens, ref.mask_token_id
    if mask_id in prompt:
        raise SystemExit("the prompt must not contain the mask token")
    if p.alg not in ALGS:
        raise SystemExit(f"unknown alg {p.alg!r}")
    block = p.block_length or n
    if n <= 0 or p.steps <= 0 or n % block != 0:
        raise SystemExit(f"block length {block} must divide max_new_tokens {n} (both > 0)")
    num_blocks = n // block
    if p.steps % num_blocks != 0:
        raise SystemExit(f"steps {p.steps} must be divisible by the number of blocks {num_blocks}")
    steps_per_block = p.steps // num_blocks

    torch.manual_seed(p.seed)
    x = torch.tensor(list(prompt) + [mask_id] * n, dtype=torch.long)
    start = len(prompt)
    ts = timesteps(steps_per_block, p.eps)
    commits: list[list[int]] = []
    mask_commits: list[list[int]] = []
    for b in range(num_blocks):
        in_block = torch.zeros(x.shape[0], dtype=torch.bool)
        in_block[start + b * block: start + (b + 1) * block] = True
        for i in range(steps_per_block):
            candidates = (x == mask_id) & in_block
            last = i == steps_per_block - 1
            written = denoise_step(ref, x, candidates, ts[i], ts[i + 1], last, p)
            commits.append(written)
            step = len(commits) - 1
            mask_commits += [[step, pos] for pos in written if int(x[pos]) == mask_id]

    canvas = x.tolist()
    assert canvas[:start] == list(prompt), "the prompt changed"
    return {
        "tokens": canvas[start:],
        "canvas": canvas,
        "steps": p.steps,
        "commits": commits,
        "mask_commits": mask_commits,
    }


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_ids(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v != ""]


def f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def optional_top_p(value: Optional[float]) -> Optional[float]:
    return None if value is None or value >= 1.0 else value


def optional_top_k(value: Optional[int]) -> Optional[int]:
    return None if value is None or value <= 0 else value


def cmd_logits(args) -> None:
    ref = load_model(args.hf)
    logits = ref.logits(torch.tensor(parse_ids(args.ids), dtype=torch.long))
    np.save(args.out, logits.numpy().astype(np.float32))


def gen_params(args) -> GenParams:
    return GenParams(
        max_new_tokens=args.max_new_tokens, steps=args.steps, alg=args.alg,
        temperature=args.temperature, top_p=optional_top_p(args.top_p),
        top_k=optional_top_k(args.top_k), alg_temp=args.alg_temp, eps=args.eps,
        block_length=args.block_length, seed=args.seed,
    )


def cmd_generate_many(args) -> None:
    """Several generations with one model load (loading transformers dominates a call)."""
    ref = load_model(args.hf)
    parser = build_parser()
    results = []
    for case in json.loads(Path(args.cases).read_text()):
        case_args = parser.parse_args(["generate", "--hf", str(args.hf), *case])
        results.append(generate(ref, parse_ids(case_args.prompt_ids), gen_params(case_args)))
    print(json.dumps(results))


def cmd_generate(args) -> None:
    ref = load_model(args.hf)
    result = generate(ref, parse_ids(args.prompt_ids), gen_params(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(" ".join(map(str, result["tokens"])))


def cmd_linspace(args) -> None:
    runs = []
    for steps in args.steps:
        values = timesteps(steps, args.eps).tolist()
        runs.append({"steps": steps, "eps": args.eps, "values": values,
                     "bits": [f32_bits(v) for v in values]})
    print(json.dumps(runs[0] if len(runs) == 1 else runs))


def cmd_schedule(args) -> None:
    runs = []
    for n, steps in zip(args.n, args.steps, strict=True):
        counts = plain_schedule(n, steps, args.eps)
        runs.append({"n": n, "steps": steps, "eps": args.eps, "counts": counts, "total": sum(counts)})
    print(json.dumps(runs[0] if len(runs) == 1 else runs))


def cmd_dist(args) -> None:
    ids = parse_ids(args.ids)
    if not 0 <= args.position < len(ids):
        raise SystemExit(f"position {args.position} outside the sequence of {len(ids)}")
    ref = load_model(args.hf)
    shifted = shift_logits(ref.logits(torch.tensor(ids, dtype=torch.long)))
    probs = filtered_probs(shifted[args.position:args.position + 1], args.temperature,
                           optional_top_p(args.top_p), optional_top_k(args.top_k))[0]
    np.save(args.out, probs.numpy().astype(np.float64))


def cmd_check(args) -> None:
    report = check_bidirectional(load_model(args.hf))
    print(json.dumps(report))
    if not report["ok"]:
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_model(p):
        p.add_argument("--hf", type=Path, required=True, help="Hugging Face Dream checkpoint folder")

    def with_filters(p, temperature_default):
        p.add_argument("--temperature", type=float, default=temperature_default)
        p.add_argument("--top-p", type=float, default=None, help="omitted or >= 1: no nucleus filter")
        p.add_argument("--top-k", type=int, default=None, help="omitted or 0: no top-k filter")

    p = sub.add_parser("logits", help="raw (unshifted) float32 logits [L, V] as .npy")
    with_model(p)
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_logits)

    p = sub.add_parser("generate", help="Dream's denoising loop; prints JSON with --json")
    with_model(p)
    p.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--alg", choices=ALGS, default="entropy")
    with_filters(p, 0.0)
    p.add_argument("--alg-temp", type=float, default=0.0)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("generate-many", help="several `generate` runs (JSON list of argument lists) with one model load")
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--cases", type=Path, required=True, help="JSON file: a list of generate argument lists")
    p.set_defaults(func=cmd_generate_many)

    p = sub.add_parser("linspace", help="float32 torch.linspace(1, eps, S+1) and its bit patterns")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="one or more step counts (several: JSON list)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.set_defaults(func=cmd_linspace)

    p = sub.add_parser("schedule", help="tokens committed per step, plain algorithm, all masked")
    p.add_argument("--n", type=int, nargs="+", required=True)
    p.add_argument("--steps", type=int, nargs="+", required=True, help="paired with --n (several: JSON list)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("dist", help="sampling distribution at one position (shifted logits), float64 .npy")
    with_model(p)
    p.add_argument("--ids", required=True)
    p.add_argument("--position", type=int, required=True)
    with_filters(p, 1.0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_dist)

    p = sub.add_parser("check", help="prove bidirectional, all-attend attention on a model")
    with_model(p)
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    torch.use_deterministic_algorithms(True)
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
