#!/usr/bin/env python3
"""The PyTorch side of scripts/bench-train.sh: a plain CPU training loop of the same model, batch,
loss and optimizer as ``unmask-train sft``, timed per update.

Model: the Dream checkpoint in --model as transformers' Qwen2ForCausalLM (reference.py's
``qwen2_config`` and weights, SDPA attention with an all-zero additive mask, so attention is
bidirectional), float32. Data: --batch sequences of --len random token ids per update (seeded),
token 0 the prompt, every other token masked with probability t ~ U(t_eps, 1) per sequence, as
``unmask-train sft`` does for text windows. Loss: Dream's masked-diffusion loss with the logits
shift, ``sum_masked CE / t`` over the batch's response tokens. Update: backward,
``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (lr 1e-4, betas 0.9/0.99, eps 1e-8, weight decay
0.1). --make-model writes a fresh checkpoint of a given shape (Qwen2's initialisation) over a
template folder instead.

Prints one JSON line: updates, seconds per update (each), tokens per second (median), threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference as R  # noqa: E402


def make_model(template: Path, out: Path, shape: dict, seed: int) -> None:
    """A fresh checkpoint in ``out``: the template's config.json with ``shape`` applied, its
    tokenizer files, and float32 weights initialised as transformers initialises Qwen2."""
    import shutil

    from safetensors.torch import save_file
    from transformers import Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((template / "config.json").read_text())
    cfg.update(shape)
    cfg["torch_dtype"] = "float32"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (template / name).exists():
            shutil.copy(template / name, out / name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(R.qwen2_config(cfg)).to(torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight")  # the embedding is the output projection
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    save_file(state, str(out / "model.safetensors"))
    count = sum(v.numel() for v in state.values())
    print(json.dumps({"model": str(out), "parameters": count}))


def load(model_dir: Path):
    from transformers import Qwen2ForCausalLM

    cfg = R.read_config(model_dir)
    qc = R.qwen2_config(cfg)
    qc._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(qc).to(torch.float32)
    state = R.load_state_dict(model_dir, qc.tie_word_embeddings)
    model.load_state_dict(state, strict=False)
    return model, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="Dream checkpoint folder")
    ap.add_argument("--batch", type=int, default=8, help="sequences per update")
    ap.add_argument("--len", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--updates", type=int, default=5, help="timed updates (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--vocab-limit", type=int, default=None, help="draw token ids below this")
    ap.add_argument("--t-eps", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--make-model", type=Path, default=None,
                    help="write a fresh checkpoint with the shape of --shape here (template: --model)")
    ap.add_argument("--shape", type=str, default="{}", help="JSON config values for --make-model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.make_model is not None:
        make_model(args.model, args.make_model, json.loads(args.shape), args.seed)
        return
    model, cfg = load(args.model)
    model.train()
    mask_id = int(cfg["mask_token_id"])
    vocab = args.vocab_limit or int(cfg["vocab_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    b, n = args.batch, args.len
    zero_mask = torch.zeros(b, 1, n, n)
    seconds = []
    for update in range(args.updates + 1):
        started = time.perf_counter()
        tokens = torch.randint(0, vocab, (b, n), generator=gen)
        t = args.t_eps + (1 - args.t_eps) * torch.rand(b, 1, generator=gen)
        masked = torch.rand(b, n, generator=gen) < t
        masked[:, 0] = False  # the prompt
        x = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
        logits = model(input_ids=x, attention_mask=zero_mask).logits
        # Shift: row k-1 predicts token k.
        logits = logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
        ).view(b, n - 1)
        weight = masked[:, 1:].float() / t
        loss = (ce * weight).sum() / (b * (n - 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = time.perf_counter() - started
        if update > 0:
            seconds.append(elapsed)
    tps = [b * n / s for s in seconds]
    print(json.dumps({
        "side": "pytorch",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": b,
        "len": n,
        "updates": len(seconds),
        "seconds": [round(s, 4) for s in seconds],
        "tokens_per_s": round(statistics.median(tps), 1),
    }))


if __name__ == "__main__":
    main()
