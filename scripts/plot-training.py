"""Draws the loss curves of a training run as a PNG (the model card's plot).

    python scripts/plot-training.py --pretrain RUN/metrics.jsonl [--sft RUN2/metrics.jsonl] --out loss.png

Reads the trainer's metrics.jsonl files (one JSON object per update: step, loss, tokens, lr, ...).
A resumed run may have logged an update twice (once before the interruption, once after); the
last record of each step wins. Each panel shows the loss of every update (faint) and its moving
average over 50 updates, against the tokens trained on; the learning rate is on a second axis.
Needs matplotlib (pip install matplotlib).
"""
import argparse
import json
import sys


def read(path):
    by_step = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def moving_average(values, width):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def panel(ax, records, title):
    tokens, seen = [], 0
    for r in records:
        seen += r.get("tokens", 0)
        tokens.append(seen / 1e6)
    loss = [r["loss"] for r in records]
    ax.plot(tokens, loss, color="tab:blue", alpha=0.25, linewidth=0.6, label="loss per update")
    ax.plot(tokens, moving_average(loss, 50), color="tab:blue", linewidth=1.8,
            label="moving average (50 updates)")
    ax.set_title(f"{title}: {len(records)} updates, {seen / 1e6:.1f} M tokens")
    ax.set_xlabel("tokens trained on (millions)")
    ax.set_ylabel("masked-diffusion loss")
    ax.grid(alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(tokens, [r["lr"] for r in records], color="tab:orange", linewidth=1.0,
                 label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    lr_axis.tick_params(axis="y", colors="tab:orange")
    lines = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(lines, [l.get_label() for l in lines], loc="upper right", fontsize=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", required=True, help="metrics.jsonl of pretraining")
    parser.add_argument("--sft", help="metrics.jsonl of SFT")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot-training.py needs matplotlib: pip install matplotlib")
    runs = [("Pretraining", read(args.pretrain))]
    if args.sft:
        runs.append(("SFT (function bodies)", read(args.sft)))
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.2), squeeze=False)
    for ax, (title, records) in zip(axes[0], runs):
        panel(ax, records, title)
    fig.tight_layout()
    tmp = args.out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    import os
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
