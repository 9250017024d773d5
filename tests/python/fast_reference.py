#!/usr/bin/env python3
"""Independent PyTorch reference for unmask's FAST decoding modes (spec: docs/fast-decoding.md).

The Rust fast modes (prefix / dual KV cache, confidence-threshold parallel decoding) are tested
against this file, so it is written for exactness, not speed. It transcribes the published
algorithm of Fast-dLLM (NVlabs; ``dream/model/generation_utils_block.py::_sample`` for the block
loop, the ``dual_cache`` / ``replace_position`` path of ``dream/model/modeling_dream.py`` for the
cached attention, and alg ``confidence_threshold`` of ``dream/model/generation_utils.py`` as
summarised in docs/fast-decoding.md §5). No code of Fast-dLLM is copied; every part says which
published behaviour it follows.

It reuses ``reference.py`` (next to this file) for loading the model and for Dream's sampling
primitives: load_model, sample_tokens, filtered_probs, shift_logits, timesteps, commit_count,
choose_topk_positions, parse_ids, optional_top_p, optional_top_k.

Model and KV cache
------------------
A manual layer loop over the weights of the loaded transformers ``Qwen2ForCausalLM`` (embedding;
per layer input RMSNorm, q/k/v projections with biases, NeoX "rotate-half" RoPE with theta from
config.json, grouped-query attention with NO mask, o projection, post-attention RMSNorm, SwiGLU
MLP; final RMSNorm; lm_head). ``selftest`` proves it equals ``reference.py``'s transformers
forward (``ref.logits``) within 1e-5 relative max-abs in float32, which ties the loop to the
transformers model. All forward passes of this script (refresh, cached, and the no-cache "full"
passes of mode 3) use this loop, in float32 by default or float64 with ``--dtype float64``
(weights upcast exactly, RoPE frequencies, cos/sin, attention softmax and scoring all in float64;
used to detect fragile cases).

The cache holds, per layer, K AFTER RoPE and V, for every canvas position (shape
[kv_heads, L, head_dim]). Fast-dLLM caches K before RoPE and rotates the whole key set at use with
the key's own canvas position; RoPE is elementwise, so that is the same arithmetic.

* refresh (full forward over the canvas x, L rows): logits [L, V] and every layer's K/V.
* prefix pass for block start lo: rows lo..L-1 (tokens of the current x, RoPE positions lo..L-1)
  attend to the cached K/V of positions 0..lo-1 followed by their own fresh K/V (L keys, canvas
  order) -- Fast-dLLM concatenates ``past_key[:, :lo]`` with the fresh keys and rotates queries
  with positions ``key_len - q_len .. key_len``.
* dual pass for block lo..hi-1: rows lo..hi-1 attend to all L positions, the cached K/V outside
  lo..hi-1 and the fresh K/V inside -- Fast-dLLM writes the fresh rows into the cache at
  ``replace_position`` and rotates queries with positions ``block_end - q_len .. block_end``.
* the logits of a run are shifted WITHIN the run (run row j predicts run position j+1); the run's
  first position (lo) keeps its own row (quirk of the original, ``torch.cat([logits[:, :1],
  logits[:, :-1]])`` on the run's logits; harmless since x[lo] is committed at the refresh).

Generation modes (``generate``)
-------------------------------
1. ``--cache prefix|dual --threshold T`` (docs/fast-decoding.md §3, threshold branch). Per block: a
   refresh; x[lo] = x0[lo] from the refresh's shifted logits (sample_tokens with the filters,
   whatever its confidence); then cached passes until the block has no mask. Candidates: masked
   positions of the block; confidence = probability of x0 (maskgit_plus, whatever --alg says);
   ranked by confidence descending, ties by LOWER position; the first is committed always, every
   other one whose confidence >= T.
2. ``--cache prefix|dual`` without threshold (§3 fixed-step branch): steps_per_block =
   steps / n_blocks (must be >= 2, Fast-dLLM issue 66), ts = float32 linspace(1, eps,
   steps_per_block + 1); i = 1 after the refresh; each cached iteration first runs its forward,
   then stops the block if i == steps_per_block; k = commit_count (float32 int(n * (1 - s/t)),
   all remaining when i == steps_per_block - 1); the k most confident commit (ties: lower
   position); confidence follows --alg (maskgit_plus / topk_margin / entropy). DELIBERATE
   DIFFERENCE: the published code always scores with the entropy confidence here; unmask follows
   --alg, and both agree for --alg entropy (the default). The block also stops when it has no mask.
3. ``--cache none --threshold T`` (§5): full forwards, no blocks; n = N / steps due per step plus
   the carried-over ``left``; the `due` most confident masked positions of the whole canvas in
   order, the first committed always, every further one with conf < T not committed and counted
   in ``left``; on the last step (i == steps - 1) the first such rejection sets n = 0 and
   steps += 1 (an extension step). The loop exits early when no mask is left at the top of a step.
   Confidence = probability of x0. N % steps == 0 is required.
4. ``--cache none`` without threshold: not this script's job (use reference.py generate).

Dead-loop rule (ours, docs/fast-decoding.md §4; modes 1 and 3 only): a committed prediction equal to the
mask token leaves its position masked. If ALL the positions an iteration commits received the
mask token, the first-ranked candidate instead takes its highest-logit token other than the mask
token (argmax over its shifted RAW logits row with the mask id excluded, first index on ties).
Each such event is listed in "forced" as [pass_index, position, token]. Mode 2 has no rule (mask
predictions simply leave positions masked, exactly as the original, including the extra forward
at i == steps_per_block). The refresh's x[lo] commit has no rule either: if x0[lo] is the mask
token, lo stays masked and becomes a candidate in the cached passes (predicted by run row 0).

Documented choices where the spec is silent
-------------------------------------------
* Ties in every ranking: lower canvas position first (torch.topk's order is unspecified).
* Threshold comparisons are done in the scoring dtype, as torch compares a float32 tensor with a
  python float (T is rounded to float32 in float32 runs; exact in float64 runs).
* RNG (only for --temperature > 0; seed --seed, default 0, torch.manual_seed at the start): the
  refresh scores all L rows of the canvas and the prefix threshold branch scores all masked run
  positions lo..L-1 (then keeps only the block's), as the published code does, so the draw order
  follows the original. At temperature 0 this changes nothing.
* --alg-temp > 0 is rejected in every mode (the threshold branches ignore it in the original; the
  fixed-step cached branch would sample positions, which we do not support).
* --alg is ignored by the threshold modes (confidence is always the probability of x0).
* --block-length is only valid with a cache (default 32 there); with --cache none it is an error.
* The schedule (ts, k) is float32 in both dtypes (it is defined in float32 by the original).
* A block whose only mask was lo (block length 1) still runs one cached pass, committing nothing,
  as the published loop does (its forward precedes its checks).
* Pass indices ("forced", "mask_commits") are 0-based indices into "passes".
* Mode 3: a due candidate that is committed with the mask token counts as committed, not as a
  rejection, so it neither adds to ``left`` nor extends the steps; a run can therefore end with
  masks left (as exact Dream decoding can). The dead-loop rule still guarantees one real token per
  step in which every commit was the mask token.
* ``due`` is capped at the number of masked positions (never reached in practice; defensive).
* The threshold modes need ``steps`` only for the checks: N % steps == 0 (mode 3, §5) or
  steps % n_blocks == 0 (modes 1, 2, as the published assert).
* Torch runs on ONE CPU thread unless the environment variable FAST_REF_THREADS says otherwise
  (tiny models run fastest that way and results do not depend on thread scheduling).
* ``cached-logits`` writes float32 .npy by default, float64 with --dtype float64; ``--method``
  picks the construction (cache: refresh + cached pass; replaced: ``cached_logits_by_full_forward``;
  full: the uncached rows of a full forward over --run-ids, to measure staleness; ``--full`` =
  ``--method full``).

Selftest (``selftest --hf DIR [--dtype]``): manual forward == transformers forward (f32 within
1e-5 relative max-abs, f64 within 1e-4); a prefix / dual pass right after a refresh with nothing
changed == the full forward's rows (1e-5); cached pass == the replaced-K/V full forward (1e-5, f32
and f64) on a run canvas that differs from the refresh canvas, and != an uncached forward (the test
is not vacuous); with one block, prefix and dual runs agree exactly; every mode runs and
terminates; thresholds above 1 / below 0 commit one per pass / a block per pass; with the mask
token forced to be every row's argmax, modes 1 and 3 terminate with one forced real token per pass
and mode 2 keeps its masks; invalid settings are rejected. Prints JSON {"ok": ..., ...}; exit 1 on
failure.

JSON of ``generate``: {"tokens": generated ids, "canvas": prompt ++ generated, "passes":
["refresh"|"cached"|"full", ...] one per forward pass, "commits": per pass the ABSOLUTE canvas
positions committed in it (ascending; a refresh's entry is [lo], also when the token is the mask
id), "block_starts": [lo per block] ([] for mode 3), "forward_passes": len(passes), "rows": rows
computed per pass (L for refresh/full, L-lo for prefix, B for dual), "forced": [[pass, position,
token]], "mask_commits": [[pass, position]] committed positions that received the mask token
(after the dead-loop rule), "steps_used": mode 3: the final step count including extensions
(null in cached modes), "margin": the smallest decision margin of the run (null when there was no
decision), "margin_committed": the same over the decisions that can change the output only,
"margin_at": where "margin" was attained {"pass", "kind", "position"}}.

Margins (float-order fragility). Recorded decisions and their margin:
* "argmax": for every scored candidate at temperature 0, top-1 minus top-2 filtered probability
  (the x0 flip). Scored candidates: block masks (modes 1, 2), all masks (mode 3), row lo of a
  refresh (only x0[lo] is used). Not measured at temperature > 0 (sampling).
* "threshold": |conf - T| for every candidate compared with T (ranks 2..due).
* "first": conf1 - conf2 when which candidate is ranked first decides the outcome (i.e. unless the
  second-ranked would be committed anyway: due >= 2 and conf2 >= T).
* "due_cut" (mode 3): conf_due - conf_(due+1) unless both are below T.
* "topk_cut" (mode 2): conf_k - conf_(k+1) when 0 < k < number of candidates.
* "forced": gap between the two highest raw logits (mask excluded) of a forced row.
"margin" takes the minimum over all of them (as the brief asks: every scored candidate);
"margin_committed" counts "argmax" only for candidates that were committed (a flip of an
uncommitted x0 cannot change the output: every confidence used is continuous in the logits).
Not measured: top-p / top-k filter boundaries.

Subcommands (``fast_reference.py SUBCOMMAND --help``):
  generate       one decoding run, JSON on stdout
  generate-many  a JSON list of generate argument lists, one model load, JSON list on stdout
  cached-logits  raw logits of a cached pass (refresh on --refresh-ids, run on --run-ids), .npy
  selftest       ties the manual loop to transformers and checks the cache and every mode
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # leave no __pycache__ in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as R  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
FAST_ALGS = ("maskgit_plus", "topk_margin", "entropy")
CACHES = ("none", "prefix", "dual")
DEFAULT_BLOCK = 32

# ---------------------------------------------------------------------------
# Manual Qwen2 layer loop with a KV cache
# ---------------------------------------------------------------------------


@dataclass
class KVCache:
    """Per layer K (after RoPE) and V of every canvas position: lists of [kv_heads, L, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


# An attention "key provider": given the layer index and the fresh K, V of the rows being run
# ([kv_heads, R, head_dim] each), return the K, V of all L canvas positions the queries attend to.
KeyProvider = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ManualQwen2:
    """The Dream forward pass written out layer by layer over the transformers model's weights."""

    def __init__(self, ref: R.ReferenceModel, dtype: torch.dtype = torch.float32):
        cfg = ref.config
        m = ref.model
        self.dtype = dtype
        self.mask_token_id = ref.mask_token_id
        self.vocab_size = ref.vocab_size
        if cfg.get("hidden_act", "silu") != "silu":
            raise SystemExit(f"hidden_act {cfg.get('hidden_act')!r} is not supported (spec: silu)")

        def w(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype)  # f32 -> f64 is exact

        self.n_heads = int(cfg["num_attention_heads"])
        self.n_kv = int(cfg["num_key_value_heads"])
        self.head_dim = int(cfg["hidden_size"]) // self.n_heads
        assert self.n_heads % self.n_kv == 0
        self.groups = self.n_heads // self.n_kv
        self.embed = w(m.model.embed_tokens.weight)
        self.layers = []
        for layer in m.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            self.layers.append({
                "ln1": w(layer.input_layernorm.weight), "ln1_eps": float(layer.input_layernorm.variance_epsilon),
                "wq": w(at.q_proj.weight), "bq": w(at.q_proj.bias),
                "wk": w(at.k_proj.weight), "bk": w(at.k_proj.bias),
                "wv": w(at.v_proj.weight), "bv": w(at.v_proj.bias),
                "wo": w(at.o_proj.weight),
                "ln2": w(layer.post_attention_layernorm.weight),
                "ln2_eps": float(layer.post_attention_layernorm.variance_epsilon),
                "wg": w(mlp.gate_proj.weight), "wu": w(mlp.up_proj.weight), "wd": w(mlp.down_proj.weight),
            })
            assert at.o_proj.bias is None
        self.norm = w(m.model.norm.weight)
        self.norm_eps = float(m.model.norm.variance_epsilon)
        self.lm_head = w(m.lm_head.weight)
        # RoPE (docs/model.md §3): inv_freq[j] = theta^(-2j/head_dim), computed like transformers'
        # default rope init, in the run dtype.
        theta = float(cfg["rope_theta"])
        hd = self.head_dim
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=dtype) / hd))
        if dtype == torch.float32:
            buf = m.model.rotary_emb.inv_freq
            assert torch.equal(self.inv_freq, buf.to(torch.float32)), "inv_freq differs from transformers'"
        # Test hook: applied to the raw logits of every computed row (selftest's dead-loop case).
        self.logits_hook: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    # -- pieces --------------------------------------------------------------

    @staticmethod
    def rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        variance = h.pow(2).mean(-1, keepdim=True)
        return weight * (h * torch.rsqrt(variance + eps))

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [R, head_dim] for canvas positions [R] (NeoX: both halves share the angles)."""
        freqs = positions.to(self.dtype)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    @staticmethod
    def rotate_half(t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        return torch.cat((-t[..., half:], t[..., :half]), dim=-1)

    def apply_rope(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """t [heads, R, head_dim] rotated at the rows' own positions."""
        return t * cos + self.rotate_half(t) * sin

    # -- the core loop ---------------------------------------------------------

    @torch.no_grad()
    def run(self, ids: torch.Tensor, positions: torch.Tensor,
            keys_for: Optional[KeyProvider]) -> tuple[torch.Tensor, KVCache]:
        """Run the rows ``ids`` [R] at canvas ``positions`` [R] through every layer.

        ``keys_for`` supplies, per layer, the K/V of all the keys the queries attend to (None: the
        rows' own fresh K/V, i.e. a full forward when the rows are the whole canvas). No mask: every
        query attends to every key. Returns the raw logits [R, V] and the rows' fresh K/V.
        """
        rows = ids.shape[0]
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        scale = hd ** -0.5
        cos, sin = self.rope_tables(positions)
        h = self.embed[ids]
        fresh_k: list[torch.Tensor] = []
        fresh_v: list[torch.Tensor] = []
        for li, lw in enumerate(self.layers):
            xn = self.rms_norm(h, lw["ln1"], lw["ln1_eps"])
            q = F.linear(xn, lw["wq"], lw["bq"]).view(rows, nh, hd).transpose(0, 1)
            k = F.linear(xn, lw["wk"], lw["bk"]).view(rows, nkv, hd).transpose(0, 1)
            v = F.linear(xn, lw["wv"], lw["bv"]).view(rows, nkv, hd).transpose(0, 1)
            q = self.apply_rope(q, cos, sin)
            k = self.apply_rope(k, cos, sin)  # cached AFTER RoPE
            fresh_k.append(k)
            fresh_v.append(v)
            keys, values = (k, v) if keys_for is None else keys_for(li, k, v)
            # GQA: query head j uses kv head j // groups (transformers' repeat_kv order).
            keys = keys.repeat_interleave(self.groups, dim=0)
            values = values.repeat_interleave(self.groups, dim=0)
            scores = torch.matmul(q, keys.transpose(1, 2)) * scale  # [nh, R, L]
            probs = torch.softmax(scores, dim=-1, dtype=self.dtype)
            att = torch.matmul(probs, values).transpose(0, 1).reshape(rows, nh * hd)
            h = h + F.linear(att, lw["wo"])
            xn = self.rms_norm(h, lw["ln2"], lw["ln2_eps"])
            h = h + F.linear(F.silu(F.linear(xn, lw["wg"])) * F.linear(xn, lw["wu"]), lw["wd"])
        h = self.rms_norm(h, self.norm, self.norm_eps)
        logits = F.linear(h, self.lm_head)
        if self.logits_hook is not None:
            logits = self.logits_hook(logits)
        return logits, KVCache(fresh_k, fresh_v)

    # -- the passes --------------------------------------------------------------

    def full(self, x: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Full forward over the canvas (refresh / no-cache step): logits [L, V] and all K/V."""
        return self.run(x, torch.arange(x.shape[0]), None)

    def prefix_pass(self, x: torch.Tensor, lo: int, cache: KVCache) -> torch.Tensor:
        """Rows lo..L-1 of x; keys = cached 0..lo-1 then the rows' fresh ones. Raw logits [L-lo, V]."""
        length = x.shape[0]
        assert cache.length == length and 0 <= lo < length

        def keys_for(li, k, v):
            return (torch.cat([cache.keys[li][:, :lo], k], dim=1),
                    torch.cat([cache.values[li][:, :lo], v], dim=1))

        logits, _ = self.run(x[lo:], torch.arange(lo, length), keys_for)
        return logits

    def dual_pass(self, x: torch.Tensor, lo: int, hi: int, cache: KVCache) -> torch.Tensor:
        """Rows lo..hi-1 of x; keys = cached everywhere but lo..hi-1 (fresh). Raw logits [hi-lo, V]."""
        length = x.shape[0]
        assert cache.length == length and 0 <= lo < hi <= length

        def keys_for(li, k, v):
            keys = cache.keys[li].clone()
            values = cache.values[li].clone()
            keys[:, lo:hi] = k
            values[:, lo:hi] = v
            return keys, values

        logits, _ = self.run(x[lo:hi], torch.arange(lo, hi), keys_for)
        return logits

    def replaced_full(self, x: torch.Tensor, lo: int, hi: int, cache: KVCache) -> torch.Tensor:
        """Second construction of a cached pass: a FULL forward over x where, at every layer, the
        K/V rows of positions outside lo..hi-1 are overwritten by the cached ones; returns the
        raw logits of rows lo..hi-1. (The non-run rows' own outputs are discarded.)"""
        length = x.shape[0]
        assert cache.length == length and 0 <= lo < hi <= length
        outside = torch.ones(length, dtype=torch.bool)
        outside[lo:hi] = False

        def keys_for(li, k, v):
            keys, values = k.clone(), v.clone()
            keys[:, outside] = cache.keys[li][:, outside]
            values[:, outside] = cache.values[li][:, outside]
            return keys, values

        logits, _ = self.run(x, torch.arange(length), keys_for)
        return logits[lo:hi]


def cached_logits(model: ManualQwen2, refresh_ids: list[int], run_ids: list[int], cache: str,
                  lo: int, hi: Optional[int]) -> torch.Tensor:
    """Raw logits of a cached pass's run rows: refresh on refresh_ids, then the pass on run_ids."""
    x_ref, x_run, hi = _check_cached_args(refresh_ids, run_ids, cache, lo, hi)
    _, kv = model.full(x_ref)
    if cache == "prefix":
        return model.prefix_pass(x_run, lo, kv)
    return model.dual_pass(x_run, lo, hi, kv)


def cached_logits_by_full_forward(model: ManualQwen2, refresh_ids: list[int], run_ids: list[int],
                                  cache: str, lo: int, hi: Optional[int]) -> torch.Tensor:
    """The same quantity as ``cached_logits``, constructed as a full forward over run_ids with the
    non-run K/V rows replaced, at every layer, by the refresh's cached rows."""
    x_ref, x_run, hi = _check_cached_args(refresh_ids, run_ids, cache, lo, hi)
    _, kv = model.full(x_ref)
    return model.replaced_full(x_run, lo, hi, kv)


def _check_cached_args(refresh_ids, run_ids, cache, lo, hi):
    length = len(refresh_ids)
    if len(run_ids) != length:
        raise SystemExit(f"--run-ids has {len(run_ids)} ids, --refresh-ids {length}: they must be the same length")
    if cache == "prefix":
        hi = length  # prefix: the run is lo..L-1, --hi ignored
    elif cache == "dual":
        if hi is None:
            raise SystemExit("--cache dual needs --hi")
    else:
        raise SystemExit(f"--cache must be prefix or dual, not {cache!r}")
    if not 0 <= lo < hi <= length:
        raise SystemExit(f"need 0 <= lo < hi <= L: lo={lo} hi={hi} L={length}")
    return (torch.tensor(refresh_ids, dtype=torch.long), torch.tensor(run_ids, dtype=torch.long), hi)


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class FastParams:
    max_new_tokens: int
    steps: int
    cache: str = "none"
    block_length: Optional[int] = None
    threshold: Optional[float] = None
    alg: str = "entropy"
    temperature: float = 0.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    alg_temp: float = 0.0
    eps: float = 1e-3
    seed: int = 0


@dataclass
class Record:
    """What a run did, pass by pass, plus its decision margins."""

    passes: list[str] = field(default_factory=list)
    commits: list[list[int]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    forced: list[list[int]] = field(default_factory=list)
    mask_commits: list[list[int]] = field(default_factory=list)
    block_starts: list[int] = field(default_factory=list)
    margin: Optional[float] = None
    margin_committed: Optional[float] = None
    margin_at: Optional[dict] = None

    def new_pass(self, kind: str, rows: int) -> int:
        self.passes.append(kind)
        self.commits.append([])
        self.rows.append(rows)
        return len(self.passes) - 1

    def decision(self, value: float, kind: str, position: Optional[int], counts_for_output: bool = True) -> None:
        value = float(value)
        if self.margin is None or value < self.margin:
            self.margin = value
            self.margin_at = {"pass": len(self.passes) - 1, "kind": kind, "position": position}
        if counts_for_output and (self.margin_committed is None or value < self.margin_committed):
            self.margin_committed = value


def argmax_gaps(rows: torch.Tensor, p: FastParams) -> list[float]:
    """Top-1 minus top-2 filtered probability per row (the argmax decision's margin)."""
    probs = R.filtered_probs(rows, p.temperature, p.top_p, p.top_k)
    if probs.shape[-1] < 2:
        return [math.inf] * probs.shape[0]
    top2 = torch.topk(probs, 2, dim=-1).values.to(torch.float64)
    return (top2[:, 0] - top2[:, 1]).tolist()


def rank(positions: list[int], conf: list[float]) -> list[int]:
    """Indices into positions by confidence descending, ties by the LOWER position."""
    return sorted(range(len(positions)), key=lambda j: (-conf[j], positions[j]))


def threshold_selection(conf_t: torch.Tensor, order: list[int], due: int, threshold: float,
                        rec: Record, positions: list[int]) -> tuple[list[int], list[int]]:
    """The threshold rule over the first ``due`` ranked candidates (Fast-dLLM: ``transfer_index``
    set for ``select_index[0]``, then cleared for every k >= 1 with ``selected_confidence < threshold``).

    Returns (committed indices in rank order, rejected indices in rank order); records margins.
    The comparison is a torch tensor-vs-scalar comparison in the scoring dtype, as in the original.
    """
    take = order[:due]
    committed, rejected = [take[0]], []
    for j in take[1:]:
        below = bool(conf_t[j] < threshold)
        rec.decision(abs(float(conf_t[j]) - threshold), "threshold", positions[j])
        (rejected if below else committed).append(j)
    c = [float(conf_t[j]) for j in order]
    if len(order) >= 2 and not (due >= 2 and bool(conf_t[order[1]] >= threshold)):
        rec.decision(c[0] - c[1], "first", positions[order[0]])
    if len(order) > due >= 2 and not (bool(conf_t[order[due - 1]] < threshold) and bool(conf_t[order[due]] < threshold)):
        rec.decision(c[due - 1] - c[due], "due_cut", positions[order[due - 1]])
    return committed, rejected


def commit_with_rule(x: torch.Tensor, positions: list[int], tokens: list[int], ranked: list[int],
                     raw_rows: dict[int, torch.Tensor], mask_id: int, rec: Record, pass_idx: int,
                     dead_loop_rule: bool) -> None:
    """Write tokens[j] at positions[j] for j in ``ranked`` (rank order).

    Dead-loop rule (ours): if every one of them is the mask token, the first-ranked takes its
    highest-logit non-mask token instead (argmax of its shifted raw logits row, mask excluded).
    """
    if not ranked:
        return
    tokens = list(tokens)
    if dead_loop_rule and all(tokens[j] == mask_id for j in ranked):
        first = ranked[0]
        row = raw_rows[positions[first]].clone()
        row[mask_id] = -math.inf
        tok = int(torch.argmax(row))  # first index on ties
        if row.shape[0] > 2:
            top2 = torch.topk(row.to(torch.float64), 2).values
            rec.decision(float(top2[0] - top2[1]), "forced", positions[first])
        tokens[first] = tok
        rec.forced.append([pass_idx, positions[first], tok])
    for j in ranked:
        x[positions[j]] = tokens[j]
        if tokens[j] == mask_id:
            rec.mask_commits.append([pass_idx, positions[j]])
    rec.commits[pass_idx] = sorted(positions[j] for j in ranked)


def validate(prompt: list[int], p: FastParams, mask_id: int) -> None:
    if mask_id in prompt:
        raise SystemExit("the prompt must not contain the mask token")
    if p.max_new_tokens <= 0 or p.steps <= 0:
        raise SystemExit("--max-new-tokens and --steps must be > 0")
    if p.alg not in FAST_ALGS:
        raise SystemExit(f"--alg must be one of {FAST_ALGS}")
    if p.alg_temp:
        raise SystemExit("--alg-temp > 0 is not supported by the fast modes (use 0)")
    if p.cache not in CACHES:
        raise SystemExit(f"--cache must be one of {CACHES}")
    if p.cache == "none":
        if p.threshold is None:
            raise SystemExit("--cache none without --threshold is exact decoding: use reference.py generate")
        if p.block_length is not None:
            raise SystemExit("--block-length needs a cache (--cache prefix|dual)")
        if p.max_new_tokens % p.steps != 0:
            raise SystemExit(f"--cache none --threshold: max_new_tokens {p.max_new_tokens} must be divisible by steps {p.steps}")
        return
    block = p.block_length
    if block <= 0 or p.max_new_tokens % block != 0:
        raise SystemExit(f"block length {block} must divide max_new_tokens {p.max_new_tokens} (both > 0)")
    n_blocks = p.max_new_tokens // block
    if p.steps % n_blocks != 0:
        raise SystemExit(f"steps {p.steps} must be divisible by the number of blocks {n_blocks}")
    if p.threshold is None and p.steps // n_blocks < 2:
        raise SystemExit(
            f"steps per block = {p.steps} / {n_blocks} blocks = {p.steps // n_blocks} < 2: the fixed-step cached "
            "loop would stop before committing anything but each block's first token (Fast-dLLM issue 66); "
            f"pass --threshold, or --steps >= {2 * n_blocks}")


def generate(model: ManualQwen2, prompt: list[int], p: FastParams) -> dict:
    mask_id = model.mask_token_id
    if p.cache != "none" and p.block_length is None:
        p.block_length = DEFAULT_BLOCK
    validate(prompt, p, mask_id)
    torch.manual_seed(p.seed)
    x = torch.tensor(list(prompt) + [mask_id] * p.max_new_tokens, dtype=torch.long)
    rec = Record()
    steps_used = None
    if p.cache == "none":
        steps_used = _generate_parallel(model, x, p, rec)
    else:
        _generate_cached(model, x, len(prompt), p, rec)
    canvas = x.tolist()
    assert canvas[:len(prompt)] == list(prompt), "the prompt changed"
    return {
        "tokens": canvas[len(prompt):],
        "canvas": canvas,
        "passes": rec.passes,
        "commits": rec.commits,
        "block_starts": rec.block_starts,
        "forward_passes": len(rec.passes),
        "rows": rec.rows,
        "forced": rec.forced,
        "mask_commits": rec.mask_commits,
        "steps_used": steps_used,
        "margin": rec.margin,
        "margin_committed": rec.margin_committed,
        "margin_at": rec.margin_at,
    }


def _generate_cached(model: ManualQwen2, x: torch.Tensor, start: int, p: FastParams, rec: Record) -> None:
    """Modes 1 and 2: Fast-dLLM's block loop (generation_utils_block.py::_sample)."""
    mask_id = model.mask_token_id
    length = x.shape[0]
    block = p.block_length
    n_blocks = p.max_new_tokens // block
    steps_per_block = p.steps // n_blocks
    # Published: timesteps = torch.linspace(1, eps, steps_per_block + 1) (float32).
    ts = R.timesteps(steps_per_block, p.eps)
    for b in range(n_blocks):
        lo = start + b * block  # current_block_start
        hi = lo + block  # current_block_end
        rec.block_starts.append(lo)

        # Refresh: full forward with use_cache=True; shift; sample_tokens over EVERY position (the
        # published call scores the whole canvas, default confidence = probability); x[lo] = x0[lo].
        logits, kv = model.full(x)
        pi = rec.new_pass("refresh", length)
        shifted = R.shift_logits(logits)
        _, x0 = R.sample_tokens(shifted, p.temperature, p.top_p, p.top_k, "maskgit_plus")
        if p.temperature == 0:
            rec.decision(argmax_gaps(shifted[lo:lo + 1], p)[0], "argmax", lo)
        tok = int(x0[lo])
        x[lo] = tok  # whatever its confidence; if it is the mask id, lo stays masked (no rule)
        rec.commits[pi] = [lo]
        if tok == mask_id:
            rec.mask_commits.append([pi, lo])

        i = 1
        while True:
            # Cached forward. Prefix: model(x[:, lo:], past_key_values = cache[:, :lo]). Dual:
            # model(x[:, lo:hi], past_key_values = full cache, replace_position = lo..hi-1).
            if p.cache == "prefix":
                run_logits = model.prefix_pass(x, lo, kv)
            else:
                run_logits = model.dual_pass(x, lo, hi, kv)
            pi = rec.new_pass("cached", run_logits.shape[0])
            # Shift WITHIN the run: run row j -> run position j+1; the run's first row keeps its own.
            run_shifted = R.shift_logits(run_logits)

            if p.threshold is not None:
                _threshold_iteration(model, x, lo, hi, run_shifted, p, rec, pi)
            else:
                # Published: `if i == steps_per_block: break` after the forward, before scoring.
                if i == steps_per_block:
                    break
                _fixed_iteration(model, x, lo, hi, run_shifted, ts[i], ts[i + 1],
                                 i == steps_per_block - 1, p, rec)
                i += 1
            # Published: break when (x[:, lo:hi] == mask_token_id).sum() == 0.
            if not bool((x[lo:hi] == mask_id).any()):
                break


def _threshold_iteration(model: ManualQwen2, x: torch.Tensor, lo: int, hi: int, run_shifted: torch.Tensor,
                         p: FastParams, rec: Record, pi: int) -> None:
    """Mode 1, one cached iteration (the ``alg == 'confidence_threshold'`` branch of _sample)."""
    mask_id = model.mask_token_id
    block_masked = [pos for pos in range(lo, hi) if int(x[pos]) == mask_id]
    if not block_masked:
        return  # published: topk over 0 tokens, nothing transferred
    # Published: mask_logits = logits[mask_index] with mask_index over the whole run (prefix: lo..L-1,
    # dual: lo..hi-1); those later positions get confidence -inf (full_confidence[:, B:] = -inf), so
    # they only matter for the RNG stream at temperature > 0. Block positions come first (ascending).
    run_end = lo + run_shifted.shape[0]
    scored = [pos for pos in range(lo, run_end) if int(x[pos]) == mask_id]
    rows = run_shifted[[pos - lo for pos in scored]]
    conf_all, x0_all = R.sample_tokens(rows, p.temperature, p.top_p, p.top_k, "maskgit_plus")
    nc = len(block_masked)
    assert scored[:nc] == block_masked
    conf_t, x0 = conf_all[:nc], x0_all[:nc].tolist()
    conf = conf_t.tolist()
    gaps = argmax_gaps(rows[:nc], p) if p.temperature == 0 else None
    # topk(full_confidence, number of masks in the block): every block candidate is ranked.
    order = rank(block_masked, conf)
    committed, _ = threshold_selection(conf_t, order, nc, p.threshold, rec, block_masked)
    if gaps is not None:
        chosen = set(committed)
        for j, gap in enumerate(gaps):
            rec.decision(gap, "argmax", block_masked[j], counts_for_output=j in chosen)
    raw_rows = {pos: run_shifted[pos - lo] for pos in block_masked}
    commit_with_rule(x, block_masked, x0, committed, raw_rows, mask_id, rec, pi, dead_loop_rule=True)


def _fixed_iteration(model: ManualQwen2, x: torch.Tensor, lo: int, hi: int, run_shifted: torch.Tensor,
                     t: torch.Tensor, s: torch.Tensor, last: bool, p: FastParams, rec: Record) -> None:
    """Mode 2, one cached iteration (the fixed-step branch of _sample): k most confident commit."""
    mask_id = model.mask_token_id
    pi = len(rec.passes) - 1
    # Published: mask_index[:, block_length:] = False -- only the block's masks are scored.
    cand = [pos for pos in range(lo, hi) if int(x[pos]) == mask_id]
    in_block = torch.zeros(x.shape[0], dtype=torch.bool)
    in_block[cand] = True
    # num_mask_token * (1 - s / t) in float32, int(); all remaining on the last iteration.
    k = R.commit_count(in_block, t, s, last)
    if not cand:
        return
    rows = run_shifted[[pos - lo for pos in cand]]
    # DELIBERATE DIFFERENCE: the published code passes neg_entropy=True whatever alg is; we follow --alg.
    conf_t, x0_t = R.sample_tokens(rows, p.temperature, p.top_p, p.top_k, p.alg)
    conf, x0 = conf_t.tolist(), x0_t.tolist()
    order = rank(cand, conf)
    chosen = order[:k] if k > 0 else []
    if p.temperature == 0:
        chosen_set = set(chosen)
        for j, gap in enumerate(argmax_gaps(rows, p)):
            rec.decision(gap, "argmax", cand[j], counts_for_output=j in chosen_set)
    if 0 < k < len(cand):
        rec.decision(conf[order[k - 1]] - conf[order[k]], "topk_cut", cand[order[k - 1]])
    # No dead-loop rule here: a mask prediction just leaves its position masked, as published.
    commit_with_rule(x, cand, x0, chosen, {}, mask_id, rec, pi, dead_loop_rule=False)


def _generate_parallel(model: ManualQwen2, x: torch.Tensor, p: FastParams, rec: Record) -> int:
    """Mode 3: docs/fast-decoding.md §5 (alg confidence_threshold of generation_utils.py, no cache)."""
    mask_id = model.mask_token_id
    length = x.shape[0]
    n = p.max_new_tokens // p.steps
    steps = p.steps
    left = 0
    i = 0
    while i < steps:
        masked = [pos for pos in range(length) if int(x[pos]) == mask_id]
        if not masked:
            break  # early exit: nothing left to decode
        logits, _ = model.full(x)
        pi = rec.new_pass("full", length)
        shifted = R.shift_logits(logits)
        rows = shifted[masked]
        conf_t, x0_t = R.sample_tokens(rows, p.temperature, p.top_p, p.top_k, "maskgit_plus")
        conf, x0 = conf_t.tolist(), x0_t.tolist()
        due = min(n + left, len(masked))
        left = 0
        order = rank(masked, conf)
        committed, rejected = threshold_selection(conf_t, order, due, p.threshold, rec, masked)
        # Rejections are carried over; on the last step the first one adds an extension step.
        for _ in rejected:
            left += 1
            if i == steps - 1:
                n = 0
                steps += 1
        if p.temperature == 0:
            chosen = set(committed)
            for j, gap in enumerate(argmax_gaps(rows, p)):
                rec.decision(gap, "argmax", masked[j], counts_for_output=j in chosen)
        raw_rows = {pos: shifted[pos] for pos in masked}
        commit_with_rule(x, masked, x0, committed, raw_rows, mask_id, rec, pi, dead_loop_rule=True)
        i += 1
    return steps


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], ManualQwen2] = {}
_REFS: dict[str, R.ReferenceModel] = {}


def get_ref(hf: Path) -> R.ReferenceModel:
    key = str(Path(hf).resolve())
    if key not in _REFS:
        _REFS[key] = R.load_model(hf)
    return _REFS[key]


def get_model(hf: Path, dtype: str) -> ManualQwen2:
    key = (str(Path(hf).resolve()), dtype)
    if key not in _MODELS:
        _MODELS[key] = ManualQwen2(get_ref(hf), DTYPES[dtype])
    return _MODELS[key]


def fast_params(args) -> FastParams:
    return FastParams(
        max_new_tokens=args.max_new_tokens, steps=args.steps, cache=args.cache,
        block_length=args.block_length, threshold=args.threshold, alg=args.alg,
        temperature=args.temperature, top_p=R.optional_top_p(args.top_p),
        top_k=R.optional_top_k(args.top_k), alg_temp=args.alg_temp, eps=args.eps, seed=args.seed,
    )


def cmd_generate(args) -> None:
    model = get_model(args.hf, args.dtype)
    print(json.dumps(generate(model, R.parse_ids(args.prompt_ids), fast_params(args))))


def cmd_generate_many(args) -> None:
    parser = build_parser()
    results = []
    for case in json.loads(Path(args.cases).read_text()):
        case_args = parser.parse_args(["generate", "--hf", str(args.hf), *case])
        model = get_model(args.hf, case_args.dtype)
        results.append(generate(model, R.parse_ids(case_args.prompt_ids), fast_params(case_args)))
    print(json.dumps(results))


def cmd_cached_logits(args) -> None:
    model = get_model(args.hf, args.dtype)
    refresh_ids, run_ids = R.parse_ids(args.refresh_ids), R.parse_ids(args.run_ids)
    method = "full" if args.full else args.method
    if method == "cache":
        out = cached_logits(model, refresh_ids, run_ids, args.cache, args.lo, args.hi)
    elif method == "replaced":
        out = cached_logits_by_full_forward(model, refresh_ids, run_ids, args.cache, args.lo, args.hi)
    else:  # the uncached baseline: rows of a plain full forward over run_ids
        _, _, hi = _check_cached_args(refresh_ids, run_ids, args.cache, args.lo, args.hi)
        logits, _ = model.full(torch.tensor(run_ids, dtype=torch.long))
        out = logits[args.lo:hi]
    np_dtype = np.float64 if args.dtype == "float64" else np.float32
    np.save(args.out, out.numpy().astype(np_dtype))


def rel_maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def cmd_selftest(args) -> None:
    t0 = time.time()
    ref = get_ref(args.hf)
    model = get_model(args.hf, "float32")
    model64 = get_model(args.hf, "float64")
    mask_id, vocab = model.mask_token_id, model.vocab_size
    report: dict = {}
    failures: list[str] = []

    def check(name: str, ok: bool, value=None) -> None:
        report[name] = value if value is not None else ok
        if not ok:
            failures.append(name)

    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, vocab, (9,), generator=gen)
    prompt[prompt == mask_id] = 0
    prompt = prompt.tolist()
    L = len(prompt) + 16
    # A canvas with some tokens decoded and some masked, like mid-generation.
    canvas = prompt + [mask_id] * 16
    for pos in (len(prompt) + 1, len(prompt) + 5, len(prompt) + 12):
        canvas[pos] = (7 * pos + 3) % vocab if (7 * pos + 3) % vocab != mask_id else 1
    x = torch.tensor(canvas, dtype=torch.long)

    # 1. manual full forward == transformers (reference.py) forward.
    hf_logits = ref.logits(x)
    own, kv = model.full(x)
    d32 = rel_maxabs(own, hf_logits)
    check("manual_vs_transformers_f32", d32 <= 1e-5, d32)
    own64, _ = model64.full(x)
    d64 = rel_maxabs(own64, hf_logits)
    check("manual_f64_vs_transformers_f32", d64 <= 1e-4, d64)
    ids2 = torch.tensor(prompt + [mask_id] * 3, dtype=torch.long)
    d_short = rel_maxabs(model.full(ids2)[0], ref.logits(ids2))
    check("manual_vs_transformers_f32_short", d_short <= 1e-5, d_short)

    # 2. cached pass right after a refresh, nothing changed == full forward's rows.
    lo, hi = len(prompt) + 4, len(prompt) + 12
    d_pre = rel_maxabs(model.prefix_pass(x, lo, kv), own[lo:])
    d_dual = rel_maxabs(model.dual_pass(x, lo, hi, kv), own[lo:hi])
    check("prefix_after_refresh_eq_full", d_pre <= 1e-5, d_pre)
    check("dual_after_refresh_eq_full", d_dual <= 1e-5, d_dual)

    # 3. the two constructions of a cached pass agree when the run canvas differs (everywhere).
    run = list(canvas)
    for pos in range(len(run)):
        if pos % 3 == 1:
            run[pos] = (run[pos] + 11) % vocab if (run[pos] + 11) % vocab != mask_id else 2
    for mode, (a, b) in {"prefix": (lo, L), "dual": (lo, hi)}.items():
        for m, tag in ((model, "f32"), (model64, "f64")):
            one = cached_logits(m, canvas, run, mode, a, b)
            two = cached_logits_by_full_forward(m, canvas, run, mode, a, b)
            d = rel_maxabs(one, two)
            check(f"{mode}_cache_vs_replaced_full_{tag}", d <= 1e-5, d)
        # and the stale cache really differs from an uncached forward (the test is not vacuous)
        stale = cached_logits(model, canvas, run, mode, a, b)
        fresh = model.full(torch.tensor(run))[0][a:b]
        check(f"{mode}_stale_differs_from_fresh", rel_maxabs(stale, fresh) > 1e-4, rel_maxabs(stale, fresh))

    # 4. every mode runs and terminates (dtype of --dtype).
    gm = get_model(args.hf, args.dtype)
    cases = {
        "prefix_threshold": FastParams(16, 4, cache="prefix", block_length=8, threshold=0.05),
        "dual_threshold": FastParams(16, 4, cache="dual", block_length=8, threshold=0.05),
        "prefix_fixed_entropy": FastParams(16, 8, cache="prefix", block_length=8),
        "dual_fixed_margin": FastParams(16, 8, cache="dual", block_length=8, alg="topk_margin"),
        "dual_fixed_maskgit": FastParams(16, 16, cache="dual", block_length=4, alg="maskgit_plus"),
        "none_threshold": FastParams(16, 4, cache="none", threshold=0.05),
        "prefix_threshold_sampled": FastParams(16, 4, cache="prefix", block_length=8, threshold=0.05,
                                               temperature=0.7, top_p=0.95, top_k=50, seed=3),
    }
    runs = {}
    for name, params in cases.items():
        t1 = time.time()
        out = generate(gm, prompt, params)
        runs[name] = {"passes": out["forward_passes"], "margin": out["margin"],
                      "masks_left": out["tokens"].count(mask_id), "seconds": round(time.time() - t1, 3)}
        ok = out["canvas"][:len(prompt)] == prompt and len(out["tokens"]) == 16
        if params.threshold is not None:
            ok = ok and out["tokens"].count(mask_id) == 0
        check(f"generate_{name}", ok)
    report["runs"] = runs
    # one block: prefix (rows lo..L-1, cached keys concatenated) and dual (rows lo..hi-1 = the same
    # rows, fresh keys written into the cache) are two code paths for the same computation.
    for params in (FastParams(16, 8, block_length=16, threshold=0.05), FastParams(16, 8, block_length=16)):
        a = generate(gm, prompt, FastParams(**{**params.__dict__, "cache": "prefix"}))
        b = generate(gm, prompt, FastParams(**{**params.__dict__, "cache": "dual"}))
        same = a["canvas"] == b["canvas"] and a["commits"] == b["commits"] and a["rows"] == b["rows"]
        check(f"one_block_prefix_eq_dual_{'threshold' if params.threshold is not None else 'fixed'}", same)
    # threshold above 1: exactly one commit per cached pass; threshold -1: a block in one pass.
    one = generate(gm, prompt, FastParams(16, 2, cache="dual", block_length=8, threshold=2.0))
    check("threshold_above_one_commits_one_per_pass",
          all(len(c) == 1 for c in one["commits"]) and one["forward_passes"] == 16, one["forward_passes"])
    allin = generate(gm, prompt, FastParams(16, 2, cache="prefix", block_length=8, threshold=-1.0))
    check("threshold_below_zero_one_pass_per_block", allin["passes"] == ["refresh", "cached"] * 2,
          allin["forward_passes"])

    # 5. dead loop: make the mask token the argmax everywhere; modes 1 and 3 must still finish.
    def mask_wins(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[:, mask_id] = logits.max(dim=-1).values + 5.0
        return logits

    gm.logits_hook = mask_wins
    try:
        dead = {}
        for name, params in {
            "dual_threshold": FastParams(16, 2, cache="dual", block_length=8, threshold=0.9),
            "prefix_threshold": FastParams(16, 2, cache="prefix", block_length=8, threshold=0.9),
            # p(mask) < T: every further candidate is rejected, so the last step extends (§5)
            "none_threshold_extends": FastParams(16, 4, cache="none", threshold=0.999999),
            # T = 0: every due candidate is "committed" with the mask token, none rejected, so no
            # extension: each of the 4 steps forces one real token and 12 masks remain (§5 as written)
            "none_threshold_no_extension": FastParams(16, 4, cache="none", threshold=0.0),
            "dual_fixed_no_rule": FastParams(16, 4, cache="dual", block_length=8),
        }.items():
            out = generate(gm, prompt, params)
            left = out["tokens"].count(mask_id)
            dead[name] = {"forced": len(out["forced"]), "masks_left": left, "passes": out["forward_passes"],
                          "steps_used": out["steps_used"]}
            real_each = all(f[2] != mask_id for f in out["forced"])
            if name == "none_threshold_no_extension":
                ok = left == 12 and len(out["forced"]) == 4 == out["forward_passes"] and real_each
            elif params.threshold is not None:
                # one real token per cached pass / step: every non-refresh pass forced exactly one
                forcing = [ps for ps, kind in enumerate(out["passes"]) if kind != "refresh"]
                ok = left == 0 and [f[0] for f in out["forced"]] == forcing and real_each
                if params.cache == "none":
                    ok = ok and out["steps_used"] == 16
            else:  # no rule: every block keeps its masks, one extra forward per block
                ok = left == 16 and not out["forced"] and out["forward_passes"] == 2 * 3
            check(f"dead_loop_{name}", ok)
        report["dead_loop"] = dead
    finally:
        gm.logits_hook = None

    # 6. argument checks.
    for name, params in {"reject_one_step_per_block": FastParams(16, 2, cache="dual", block_length=8),
                         "reject_none_without_threshold": FastParams(16, 4, cache="none")}.items():
        try:
            generate(gm, prompt, params)
            check(name, False)
        except SystemExit:
            check(name, True)

    report["seconds"] = round(time.time() - t0, 2)
    report["ok"] = not failures
    if failures:
        report["failures"] = failures
    print(json.dumps(report))
    if failures:
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--hf", type=Path, required=True, help="Hugging Face Dream checkpoint folder")
        p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                       help="arithmetic of the whole model and of the scoring (float64: fragility check)")

    p = sub.add_parser("generate", help="one fast decoding run; JSON on stdout")
    common(p)
    p.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--cache", choices=CACHES, required=True)
    p.add_argument("--block-length", type=int, default=None, help=f"only with a cache (default {DEFAULT_BLOCK})")
    p.add_argument("--threshold", type=float, default=None, help="confidence-threshold parallel decoding")
    p.add_argument("--alg", choices=FAST_ALGS, default="entropy",
                   help="confidence of the fixed-step cached mode (threshold modes: probability of x0)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=None, help="omitted or >= 1: no nucleus filter")
    p.add_argument("--top-k", type=int, default=None, help="omitted or 0: no top-k filter")
    p.add_argument("--alg-temp", type=float, default=0.0, help="must be 0")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="torch seed (temperature > 0 only)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("generate-many", help="several generate runs (JSON list of argument lists), one model load")
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--cases", type=Path, required=True, help="JSON file: a list of generate argument lists")
    p.set_defaults(func=cmd_generate_many)

    p = sub.add_parser("cached-logits", help="raw logits [R, V] of a cached pass's run rows, .npy")
    common(p)
    p.add_argument("--refresh-ids", required=True, help="canvas at refresh time (length L)")
    p.add_argument("--run-ids", required=True, help="canvas at the cached pass (length L)")
    p.add_argument("--cache", choices=("prefix", "dual"), required=True)
    p.add_argument("--lo", type=int, required=True)
    p.add_argument("--hi", type=int, default=None, help="dual: block end (exclusive); prefix: ignored (L)")
    p.add_argument("--method", choices=("cache", "replaced", "full"), default="cache",
                   help="cache: refresh + cached pass; replaced: full forward over run-ids with non-run "
                        "K/V replaced by the refresh's; full: uncached rows of a full forward over run-ids")
    p.add_argument("--full", action="store_true", help="same as --method full")
    p.add_argument("--out", type=Path, required=True, help=".npy (float32; float64 with --dtype float64)")
    p.set_defaults(func=cmd_cached_logits)

    p = sub.add_parser("selftest", help="tie the manual loop to transformers, check cache and modes")
    common(p)
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    torch.use_deterministic_algorithms(True)
    # One CPU thread unless FAST_REF_THREADS says otherwise: tiny models run fastest that way, and
    # the arithmetic does not depend on how a loaded machine schedules threads.
    torch.set_num_threads(int(os.environ.get("FAST_REF_THREADS", "1")))
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
