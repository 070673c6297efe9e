"""
The sparse-attention experiment as one table and one plot: on character-level tiny
shakespeare, what a sliding window or the block-sparse pattern costs in loss at a context
where full attention is cheap, and what it buys in speed and memory at long contexts.

    python experiments/attention_experiment.py --dtype=float32    # every row, 15-18 min on 2 CPU cores
    python experiments/attention_experiment.py --rows quality     # the block-256 rows only
    python experiments/attention_experiment.py --rows seeds       # four block-256 rows again at seed 2 (~10 min)
    python experiments/attention_experiment.py --fresh            # delete out-attention/ and run everything again

Rows (configs/attention_shakespeare.py plus the row's keys, each in its own process):
  quality, at block 256 (4 layers, 128 wide, batch 4, 3000 steps; the same data order):
    full             every earlier position
    sliding32/64/128 the last 32, 64 or 128 positions
    blocksparse      blocks of 64, plus the last 8 positions of every earlier block
  length (2 layers, 128 wide, 4,096 tokens a step, 150 steps; 20 at 16384):
    full-1024, sliding128-1024      block 1024, batch 4
    full-4096, sliding128-4096      block 4096, batch 1
    full-16384, sliding128-16384    block 16384, batch 1 (speed and memory only)
  seeds (not in the default run): full, sliding32, sliding128, blocksparse with --seed=2

Columns: val loss after the same steps; the val loss the other kind had reached at the same
wall time (length rows: full's curve read at the time its sliding twin finished); tokens/s
(median of the training rows); peak RSS of the process; train time. The plot
(docs/attention.png, needs matplotlib) shows val loss against wall time for the quality rows
and tokens/s against block size for the length rows.
"""

import os
import statistics

from harness import REPO, parse_args, pyplot, read_json, read_metrics, run_rows, val_at_time
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-attention")
CONFIG = "configs/attention_shakespeare.py"
LONG = ["--n_layer=2", "--eval_interval=50", "--eval_iters=10", "--warmup_iters=15"]
ROWS = {
    "full": [],
    "sliding32": ["--attention=sliding", "--attn_window=32"],
    "sliding64": ["--attention=sliding", "--attn_window=64"],
    "sliding128": ["--attention=sliding", "--attn_window=128"],
    "blocksparse": ["--attention=blocksparse", "--attn_block=64", "--attn_summary=8"],
}
for T, batch, steps in ((1024, 4, 150), (4096, 1, 150), (16384, 1, 20)):
    shape = LONG + [f"--block_size={T}", f"--batch_size={batch}", f"--max_iters={steps}", f"--lr_decay_iters={steps}"]
    if steps < 50:
        shape += [f"--eval_interval={steps}", "--eval_iters=2"]
    ROWS[f"full-{T}"] = shape
    ROWS[f"sliding128-{T}"] = shape + ["--attention=sliding", "--attn_window=128"]
GROUPS = {"quality": [r for r in ROWS if "-" not in r], "length": [r for r in ROWS if "-" in r]}  # no seeds yet
GROUPS["default"] = GROUPS["quality"] + GROUPS["length"]
for name in ("full", "sliding32", "sliding128", "blocksparse"):  # differences below ~0.02 nats need a second seed
    ROWS[f"{name}-seed2"] = ROWS[name] + ["--seed=2"]
GROUPS["seeds"] = [r for r in ROWS if "-seed" in r]


def summarize(name, out_dir):
    rows = read_metrics(out_dir)
    evals = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    config = read_json(os.path.join(out_dir, "config.json"))
    run = read_json(os.path.join(out_dir, "run.json"))
    return {"row": name, "block": config["block_size"], "attention": config["attention"],
            "val_loss": evals[-1]["val_loss"], "evals": [(r["time"], r["val_loss"]) for r in evals],
            "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train_rows[1:] or train_rows),
            "peak_rss_mib": run["peak_rss_mib"], "train_time_s": evals[-1]["time"], "steps": evals[-1]["iter"]}


def twin(name, by):
    """The row a row is compared with at equal wall time: at block 256, full at the same
    seed; at a long block, the other kind at the same block."""
    base, _, tail = name.partition("-")
    if tail.startswith("seed") or not tail:  # block 256
        return by.get("full" + (f"-{tail}" if tail else "")) if base != "full" else None
    return by.get(f"{'full' if base != 'full' else 'sliding128'}-{tail}")


def long_block(name):
    return "-" in name and "-seed" not in name


def table(results):
    by = {r["row"]: r for r in results}
    lines = ["| row | block | steps | val loss | val loss of the other at this one's end time | tokens/s | "
             "× full's tokens/s | peak RSS | train time |", "|---" * 9 + "|"]
    for r in results:
        other = twin(r["row"], by)
        at_t = "-"
        if other is not None:
            v = val_at_time([{"time": t, "val_loss": v} for t, v in other["evals"]], r["train_time_s"])
            at_t = f"{v:.4f} ({other['row']})" if v is not None else f"- ({other['row']} had not evaluated yet)"
        base, _, tail = r["row"].partition("-")
        full = by.get(f"full-{tail}" if tail else "full")
        speed = f"{r['tokens_per_sec'] / full['tokens_per_sec']:.2f}x" if full else "-"
        lines.append(f"| {r['row']} | {r['block']} | {r['steps']} | {r['val_loss']:.4f} | {at_t} | "
                     f"{r['tokens_per_sec']:,.0f} | {speed} | {r['peak_rss_mib']:,.0f} MiB | {r['train_time_s']:.0f} s |")
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if not long_block(r["row"]) and "-seed" not in r["row"]:
            ax1.plot([t for t, _ in r["evals"]], [v for _, v in r["evals"]], marker="o", ms=3, label=r["row"])
    ax1.set_ylim(top=2.7)  # past the first eval: where the rows part
    ax1.set_xlabel("wall time (s)")
    ax1.set_ylabel("val loss")
    ax1.set_title("block 256: val loss against wall time")
    ax1.legend(fontsize=8)
    for kind in ("full", "sliding128"):
        pts = sorted((r["block"], r["tokens_per_sec"]) for r in results if r["row"].startswith(kind + "-"))
        if pts:
            ax2.plot([b for b, _ in pts], [t for _, t in pts], marker="o", label=kind)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("block size")
    ax2.set_ylabel("training tokens/s")
    ax2.set_title("2 layers, 128 wide: speed against context")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "attention.png"),
                            groups=GROUPS)
    run_rows(args, rows, ROWS, ROOT, CONFIG, summarize, table, plot)


if __name__ == "__main__":
    main()
