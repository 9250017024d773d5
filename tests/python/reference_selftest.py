#!/usr/bin/env python3
"""Self-test for reference.py: shows the reference is right before it is used to judge
the Rust implementation.

It needs a Dream-style Hugging Face folder. Pass one as the first argument, or the
test writes a tiny one into a temporary folder with
``target/release/unmask-quantize synth --preset tiny --hf DIR --seed 1`` (building
that binary with cargo if it is missing; ``UNMASK_QUANTIZE`` overrides its path).
From it the test also derives a tied-embeddings variant (no ``lm_head.weight``).

What it proves:
  * the transformers model agrees with a small hand-written pure-torch forward pass
    (embedding, f32 RMSNorm, biased q/k/v, NeoX RoPE, GQA by repeat_interleave,
    unmasked softmax attention, SwiGLU, final norm, lm_head) to ~1e-5, tied or not;
  * attention is bidirectional and all-attend, and the guard hook really catches a
    causal mask (negative control);
  * the float32 schedule has the docs/model.md quirk at N = S = 256 (0, 1 x 254, 2);
  * generation: deterministic at temperature 0 (seed-independent for confidence
    algorithms) and for a fixed seed; per-step commits match the schedule and sum
    to N; every new position is committed exactly once; the prompt never changes;
    every alg (also with alg_temp > 0 and in block mode) runs; greedy runs match an
    independent straightforward re-implementation of Dream's loop;
  * the sampling filters (top-p, top-k, tie rule) and ``dist`` agree with a float64
    re-derivation;
  * every subcommand works from the command line.

Run ``python reference_selftest.py [HF_DIR]``; exit status 0 means all passed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import reference as R  # noqa: E402

FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
    if not ok:
        FAILURES.append(name)


# ---------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------


def quantize_binary() -> Path:
    env = os.environ.get("UNMASK_QUANTIZE")
    if env:
        return Path(env)
    binary = REPO / "target" / "release" / "unmask-quantize"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "unmask-quantize"], cwd=REPO, check=True)
    return binary


def synth_model(dest: Path) -> Path:
    subprocess.run([str(quantize_binary()), "synth", "--preset", "tiny", "--hf", str(dest),
                    "--seed", "1", "--quiet"], check=True)
    return dest


def tied_variant(src: Path, dest: Path) -> Path:
    """Copy of ``src`` with tie_word_embeddings = true and lm_head.weight removed."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    index_path = dest / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop("lm_head.weight")
    tensors = load_file(str(dest / shard))
    del tensors["lm_head.weight"]
    if tensors:
        save_file(tensors, str(dest / shard), metadata={"format": "pt"})
    else:
        (dest / shard).unlink()
    index_path.write_text(json.dumps(index, indent=2))
    return dest


# ---------------------------------------------------------------------------
# Hand-written forward pass (independent of transformers)
# ---------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def manual_forward(hf_dir: Path, ids: list[int], dtype=torch.float32) -> torch.Tensor:
    """Dream forward pass written from docs/model.md §3 alone; raw logits [L, V]."""
    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    w: dict[str, torch.Tensor] = {}
    for shard in sorted(hf_dir.glob("*.safetensors")):
        w.update({k: v.to(dtype) for k, v in load_file(str(shard)).items()})
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // heads
    eps, theta = cfg["rms_norm_eps"], float(cfg["rope_theta"])
    L = len(ids)

    # RoPE tables: inv_freq[j] = theta^(-2j/d); angle = position * inv_freq (f32).
    inv_freq = torch.tensor([theta ** (-2.0 * j / d) for j in range(d // 2)], dtype=torch.float64).to(torch.float32)
    angles = torch.arange(L, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(dtype)[:, None, :]  # [L, 1, d]
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(dtype)[:, None, :]

    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).view(L, heads, d)
        k = (h @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]).view(L, kv_heads, d)
        v = (h @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).view(L, kv_heads, d)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA: query head j uses KV head j // (heads / kv_heads).
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)  # no mask at all
        attn = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v).reshape(L, heads * d)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        mlp = (F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T))
        x = x + mlp @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    lm_head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ lm_head.T


def test_forward(hf_dir: Path, label: str) -> R.ReferenceModel:
    ref = R.load_model(hf_dir)
    vocab = ref.vocab_size
    ids = [(37 * i + 11) % vocab for i in range(40)]
    ids[25] = ref.mask_token_id  # masked positions are ordinary inputs to the model
    ours = ref.logits(torch.tensor(ids))
    hand32 = manual_forward(hf_dir, ids, torch.float32)
    hand64 = manual_forward(hf_dir, ids, torch.float64)
    scale = float(hand64.abs().max())
    d32 = float((ours - hand32).abs().max())
    d64 = float((ours.double() - hand64).abs().max())
    check(f"[{label}] transformers model == hand-written f32 forward", d32 <= 1e-5 * max(1.0, scale),
          f"max |diff| {d32:.2e}, logit scale {scale:.2f}")
    check(f"[{label}] transformers model == hand-written f64 forward", d64 <= 1e-5 * max(1.0, scale),
          f"max |diff| {d64:.2e}")
    check(f"[{label}] logits shape [L, V] float32", tuple(ours.shape) == (len(ids), vocab) and ours.dtype == torch.float32)
    return ref


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------


def test_bidirectional(ref: R.ReferenceModel) -> None:
    report = R.check_bidirectional(ref)
    check("changing the last token changes logits at position 0",
          report["position0_delta_when_last_token_changes"] > 0,
          f"delta {report['position0_delta_when_last_token_changes']:.3g}")
    check("every attention probability above the diagonal is > 0",
          report["min_attention_prob_above_diagonal"] > 0,
          f"min {report['min_attention_prob_above_diagonal']:.3g}")

    # Negative control: without our zero mask transformers builds its causal mask;
    # the guard hook must refuse it (so it would catch a silent regression).
    ids = torch.arange(1, 9).view(1, 8)
    try:
        with torch.no_grad():
            ref.model(input_ids=ids, use_cache=False)
        caught = False
    except AssertionError:
        caught = True
    check("guard hook rejects transformers' default causal mask", caught)

    # Appending a token changes earlier positions' logits only because of bidirectionality;
    # a prefix of a longer sequence must NOT reproduce its own logits.
    short = ref.logits(torch.arange(1, 9))
    long = ref.logits(torch.arange(1, 10))[:8]
    check("prefix logits depend on later tokens", not torch.allclose(short, long))


# ---------------------------------------------------------------------------
# Schedule and filters
# ---------------------------------------------------------------------------


def test_schedule() -> None:
    counts = R.plain_schedule(256, 256, 1e-3)
    check("schedule N=S=256: 0, then 1 x 254, then 2", counts == [0] + [1] * 254 + [2],
          f"first {counts[:3]}, last {counts[-2:]}")
    for n, steps in [(8, 8), (64, 16), (100, 7), (512, 512), (37, 5)]:
        c = R.plain_schedule(n, steps, 1e-3)
        check(f"schedule N={n} S={steps} sums to N", sum(c) == n and min(c) >= 0, str(c if steps <= 16 else ""))
    ts = R.timesteps(256, 1e-3)
    check("linspace is float32, starts at 1, ends at float32(eps)",
          ts.dtype == torch.float32 and float(ts[0]) == 1.0 and float(ts[-1]) == float(np.float32(1e-3)))


def test_filters() -> None:
    conf = torch.tensor([-math.inf, 0.5, 0.7, 0.5, 0.7, 0.1])
    check("top-k commit selection breaks ties by lower position",
          R.choose_topk_positions(conf, 3) == [2, 4, 1])

    # Probabilities 0.5, 0.3, 0.15, 0.05 (already sorted in the order 2, 0, 3, 1).
    probs = torch.tensor([0.3, 0.05, 0.5, 0.15])
    logits = probs.log()
    kept = lambda lg: sorted(torch.nonzero(lg > torch.finfo(torch.float32).min).flatten().tolist())
    check("top-p 0.5 keeps only the first token whose cumulative prob exceeds it",
          kept(R.top_p_logits(logits, 0.5)) == [0, 2])  # cum 0.5 (not > 0.5), 0.8 -> keep 2 tokens
    check("top-p 0.4 keeps the single top token", kept(R.top_p_logits(logits, 0.4)) == [2])
    check("top-p 0.81 keeps three tokens", kept(R.top_p_logits(logits, 0.81)) == [0, 2, 3])
    check("top-p tiny always keeps the top token", kept(R.top_p_logits(logits, 1e-9)) == [2])
    check("top-k 2 keeps the two largest", kept(R.top_k_logits(logits, 2)) == [0, 2])
    tied = torch.tensor([1.0, 3.0, 2.0, 2.0])
    check("top-k keeps every logit tied with the k-th", kept(R.top_k_logits(tied, 2)) == [1, 2, 3])

    # Sampling never leaves the filtered support.
    torch.manual_seed(5)
    row = torch.randn(1, 64) * 3
    support = R.filtered_probs(row, 0.8, 0.9, 20)[0] > 0
    _, x0 = R.sample_tokens(row.repeat(4000, 1), 0.8, 0.9, 20, "maskgit_plus")
    check("sampled tokens always lie in the filtered support", bool(support[x0].all()),
          f"support size {int(support.sum())}")


def float64_dist(raw: np.ndarray, temperature: float, top_p: float, top_k: int | None) -> np.ndarray:
    """sample_tokens' distribution re-derived in numpy float64 from one row of logits."""
    z = raw.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    over = np.cumsum(p) > top_p
    keep_sorted = np.ones_like(over)
    keep_sorted[1:] = ~over[:-1]  # keep up to and including the first token over top_p
    keep = np.zeros(z.shape, dtype=bool)
    keep[order] = keep_sorted
    if top_k is not None:
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    out = np.where(keep, np.exp(z - z[keep].max()), 0.0)
    return out / out.sum()


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def independent_greedy(ref: R.ReferenceModel, prompt: list[int], n: int, steps: int, alg: str) -> tuple[list[int], list[list[int]]]:
    """Dream's loop at temperature 0, top_p/top_k off, written plainly for comparison."""
    mask = ref.mask_token_id
    x = list(prompt) + [mask] * n
    counts = R.plain_schedule(n, steps, 1e-3)
    commits = []
    for step in range(steps):
        raw = ref.logits(torch.tensor(x))
        shifted = torch.cat([raw[:1], raw[:-1]])  # pred[i] = logits[i-1]
        probs = torch.softmax(shifted, dim=-1)
        masked = [i for i, tok in enumerate(x) if tok == mask]
        score = {}
        for i in masked:
            pr = probs[i]
            if alg == "maskgit_plus":
                score[i] = float(pr.max())
            elif alg == "topk_margin":
                top2 = torch.topk(pr, 2).values
                score[i] = float(top2[0] - top2[1])
            else:
                score[i] = float(torch.sum(pr * torch.log(pr + 1e-10)))
        chosen = sorted(masked, key=lambda i: (-score[i], i))[:counts[step]]
        for i in chosen:
            x[i] = int(torch.argmax(probs[i]))
        commits.append(sorted(chosen))
    return x, commits


def check_run(label: str, result: dict, prompt: list[int], n: int, mask_id: int,
              expected_counts: list[int] | None) -> None:
    commits = result["commits"]
    flat = [pos for step in commits for pos in step]
    problems = []
    if result["mask_commits"]:
        problems.append(f"mask token committed {result['mask_commits']}")
    if result["canvas"][:len(prompt)] != prompt:
        problems.append("prompt changed")
    if result["tokens"] != result["canvas"][len(prompt):] or len(result["tokens"]) != n:
        problems.append("tokens != canvas tail")
    if sorted(flat) != list(range(len(prompt), len(prompt) + n)):
        problems.append("new positions not committed exactly once")
    if mask_id in result["canvas"]:
        problems.append("mask left in canvas")
    if len(commits) != result["steps"]:
        problems.append("one commit list per step")
    if expected_counts is not None and [len(c) for c in commits] != expected_counts:
        problems.append(f"counts {[len(c) for c in commits]} != schedule {expected_counts}")
    check(f"generate {label}: commits sum to N, prompt intact, schedule", not problems, "; ".join(problems))


def test_generation(ref: R.ReferenceModel) -> None:
    mask = ref.mask_token_id
    prompt = [5, 17, 42, 99, 3, 250]
    n, steps = 16, 16
    sched = R.plain_schedule(n, steps, 1e-3)

    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        p = R.GenParams(max_new_tokens=n, steps=steps, alg=alg, seed=1)
        a = R.generate(ref, prompt, p)
        b = R.generate(ref, prompt, R.GenParams(**{**p.__dict__, "seed": 999}))
        check(f"{alg} temperature 0 is deterministic and seed-independent", a == b)
        check_run(f"{alg} greedy", a, prompt, n, mask, sched)
        canvas, commits = independent_greedy(ref, prompt, n, steps, alg)
        check(f"{alg} greedy == independent re-implementation", canvas == a["canvas"] and commits == a["commits"])

        sampled = R.GenParams(max_new_tokens=n, steps=8, alg=alg, temperature=0.7, top_p=0.95, top_k=50, seed=7)
        s1, s2 = R.generate(ref, prompt, sampled), R.generate(ref, prompt, sampled)
        check(f"{alg} sampled run is reproducible for a fixed seed", s1 == s2)
        check_run(f"{alg} T=0.7 top_p=0.95 top_k=50", s1, prompt, n, mask, R.plain_schedule(n, 8, 1e-3))

        at = R.GenParams(max_new_tokens=n, steps=8, alg=alg, temperature=0.5, alg_temp=0.3, seed=3)
        check_run(f"{alg} alg_temp=0.3", R.generate(ref, prompt, at), prompt, n, mask, R.plain_schedule(n, 8, 1e-3))

    for temperature in (0.0, 0.9):
        p = R.GenParams(max_new_tokens=n, steps=8, alg="origin", temperature=temperature, seed=11)
        o1, o2 = R.generate(ref, prompt, p), R.generate(ref, prompt, p)
        check(f"origin T={temperature} reproducible for a fixed seed", o1 == o2)
        check_run(f"origin T={temperature}", o1, prompt, n, mask, None)

    # Block mode: B = N is the plain algorithm; B < N keeps each block's commits inside it.
    plain = R.generate(ref, prompt, R.GenParams(max_new_tokens=n, steps=steps, alg="entropy"))
    whole = R.generate(ref, prompt, R.GenParams(max_new_tokens=n, steps=steps, alg="entropy", block_length=n))
    check("block_length = N equals the plain algorithm", plain == whole)
    for alg in R.ALGS:
        block, bsteps = 4, 8  # 4 blocks of 4 tokens, 2 steps each
        res = R.generate(ref, prompt, R.GenParams(max_new_tokens=n, steps=bsteps, alg=alg, block_length=block,
                                                  temperature=0.6, seed=2))
        per_block = bsteps // (n // block)
        inside = all(
            all(len(prompt) + b * block <= pos < len(prompt) + (b + 1) * block for pos in res["commits"][step])
            for b in range(n // block) for step in range(b * per_block, (b + 1) * per_block))
        expected = None if alg == "origin" else R.plain_schedule(block, per_block, 1e-3) * (n // block)
        check_run(f"{alg} block_length={block}", res, prompt, n, mask, expected)
        check(f"{alg} block mode commits stay inside the current block", inside)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, str(HERE / "reference.py"), *args],
                         check=True, capture_output=True, text=True)
    return out.stdout


def test_cli(hf_dir: Path, ref: R.ReferenceModel, work: Path) -> None:
    ids = [7, 8, 9, 10, ref.mask_token_id, 12, 13, ref.mask_token_id]
    csv = ",".join(map(str, ids))

    run_cli("logits", "--hf", str(hf_dir), "--ids", csv, "--out", str(work / "l.npy"))
    raw = np.load(work / "l.npy")
    check("cli logits == in-process logits (bitwise)",
          raw.dtype == np.float32 and np.array_equal(raw, ref.logits(torch.tensor(ids)).numpy()))

    # First case: top-k is the binding filter; second: top-p alone (low temperature
    # so the nucleus is small).
    for pos, T, top_p, top_k in [(4, 0.7, 0.9, 40), (7, 0.5, 0.8, None)]:
        extra = ["--top-k", str(top_k)] if top_k else []
        run_cli("dist", "--hf", str(hf_dir), "--ids", csv, "--position", str(pos), "--temperature", str(T),
                "--top-p", str(top_p), *extra, "--out", str(work / "d.npy"))
        dist = np.load(work / "d.npy")
        expect = float64_dist(raw[pos - 1], T, top_p, top_k)  # shifted: position i from raw i-1
        check(f"cli dist (T={T}, top_p={top_p}, top_k={top_k}) == float64 re-derivation from raw[position-1]",
              dist.dtype == np.float64 and np.array_equal(dist > 0, expect > 0)
              and np.abs(dist - expect).max() < 1e-6 and abs(dist.sum() - 1) < 1e-6,
              f"support {int((dist > 0).sum())}, max |diff| {np.abs(dist - expect).max():.1e}")

    lin = json.loads(run_cli("linspace", "--steps", "256", "--eps", "0.001"))
    bits_ok = all(np.float32(v).view(np.uint32) == b for v, b in zip(lin["values"], lin["bits"]))
    check("cli linspace: 257 float32 values with matching bit patterns",
          len(lin["values"]) == 257 and bits_ok and lin["bits"][0] == 0x3F800000)

    sched = json.loads(run_cli("schedule", "--n", "256", "--steps", "256", "--eps", "0.001"))
    check("cli schedule N=S=256", sched["counts"] == [0] + [1] * 254 + [2])

    gen = json.loads(run_cli("generate", "--hf", str(hf_dir), "--prompt-ids", "5,17,42", "--max-new-tokens", "8",
                             "--steps", "8", "--alg", "entropy", "--temperature", "0.4", "--top-p", "0.95",
                             "--seed", "4", "--json"))
    same = R.generate(ref, [5, 17, 42], R.GenParams(max_new_tokens=8, steps=8, alg="entropy", temperature=0.4,
                                                     top_p=0.95, seed=4))
    check("cli generate --json == in-process generate", gen == same, f"tokens {gen['tokens']}")

    check_out = json.loads(run_cli("check", "--hf", str(hf_dir)))
    check("cli check", check_out["ok"])


def main() -> int:
    torch.use_deterministic_algorithms(True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="unmask-reference-") as tmp:
        work = Path(tmp)
        hf_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else synth_model(work / "tiny-hf")
        print(f"model folder: {hf_dir}  (torch {torch.__version__}, "
              f"transformers {__import__('transformers').__version__})")
        ref = test_forward(hf_dir, "untied")
        test_forward(tied_variant(hf_dir, work / "tied-hf"), "tied")
        test_bidirectional(ref)
        test_schedule()
        test_filters()
        test_generation(ref)
        test_cli(hf_dir, ref, work)
    print(f"\n{'ALL PASSED' if not FAILURES else f'{len(FAILURES)} FAILED: {FAILURES}'} "
          f"in {time.time() - started:.0f} s")
    return 0 if not FAILURES else 1


if __name__ == "__main__":
    sys.exit(main())
