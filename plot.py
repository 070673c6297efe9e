"""
Loss curves of one or more runs, from their metrics.jsonl, into one PNG.

    python plot.py out-shakespeare-char-cpu                        # -> loss.png
    python plot.py out-a out-b --labels=fp32,bf16 --out=docs/compare.png --title="fp32 vs bf16"

Left panel: training loss (thin) and eval train/val loss (markers) against the optimizer
step; right panel: the eval losses against wall-clock seconds, which is where a faster
but noisier method shows whether it is really ahead. matplotlib is optional for the
repo; this script says so and exits if it is missing.
"""

import argparse
import json
import os

from errors import UserError, cli


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise UserError(f"{path} not found (is '{run_dir}' a train.py out_dir?)")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    return train, evals


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="plot loss curves of train.py runs")
    p.add_argument("runs", nargs="+", help="out_dir folders holding metrics.jsonl")
    p.add_argument("--labels", help="comma-separated names for the runs (default: folder names)")
    p.add_argument("--out", default="loss.png", help="PNG to write")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plot.py needs matplotlib, which is optional: pip install matplotlib")
    labels = args.labels.split(",") if args.labels else [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"{len(labels)} labels for {len(args.runs)} runs")

    fig, (ax_it, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (run, label) in enumerate(zip(args.runs, labels)):
        color = f"C{i}"
        train, evals = read_metrics(run)
        if train:
            ax_it.plot([r["iter"] for r in train], [r["loss"] for r in train], color=color, alpha=0.3, lw=0.8)
        if evals:
            it = [r["iter"] for r in evals]
            ax_it.plot(it, [r["val_loss"] for r in evals], "o-", color=color, ms=3, label=f"{label} val")
            ax_it.plot(it, [r["train_loss"] for r in evals], "x--", color=color, ms=3, lw=0.8,
                       label=f"{label} train (eval)")
            ax_t.plot([r["time"] for r in evals], [r["val_loss"] for r in evals], "o-", color=color, ms=3,
                      label=f"{label} val")
    ax_it.set_xlabel("optimizer step")
    ax_t.set_xlabel("wall-clock seconds (training and evals)")
    for ax in (ax_it, ax_t):
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
