"""
The MoE experiment as one table and one plot: on character-level tiny shakespeare, a dense
model against MoE models with the same active parameters per token, the same steps and the
same data order.

    python experiments/moe_experiment.py --input ../shared/data/tinyshakespeare/input.txt   # ~15 min on 2 CPU cores
    python experiments/moe_experiment.py --rows dense,top2        # some rows only (finished runs are reused)
    python experiments/moe_experiment.py --fresh                  # delete out-moe/ and run everything again

Rows (configs/moe_shakespeare.py plus the row's keys, each run in its own process):
  dense            moe_num_experts=0: the 4-layer, 128-wide CPU recipe model
  top2             8 experts, top-2, each expert 256 wide (half the dense MLP): equal active parameters
  switch           8 experts, Switch top-1 with capacity factor 1.25 (eval 2.0), each expert 512 wide
  top2-no-balance  top2 with moe_aux_loss_coef=0: what the balancing loss prevents

Columns: total and active parameters; val loss after the same number of steps, and at the
dense run's wall time (interpolated between evals, the "equal compute on this CPU" view);
tokens/s; wall time; dropped-token fraction and per-expert load (min and max over experts
and layers) averaged over the last 10% of training. The plot (docs/moe_load.png, needs
matplotlib) shows each expert's share of the tokens over training, per row.
"""

import os
import statistics
import time

from harness import REPO, parse_args, pyplot, read_json, read_metrics, train_run, val_at_time
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-moe")
CONFIG = "configs/moe_shakespeare.py"
ROWS = {
    "dense": ["--moe_num_experts=0"],
    "top2": [],
    "switch": ["--moe_router=switch", "--moe_top_k=1"],
    "top2-no-balance": ["--moe_aux_loss_coef=0"],
}


def summarize(name, out_dir, dense_time):
    rows = read_metrics(out_dir)
    evals = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    tail = train_rows[-max(1, len(train_rows) // 10):]
    config = read_json(os.path.join(out_dir, "config.json"))
    out = {
        "row": name,
        "total_params": None,
        "active_params": None,
        "val_loss": evals[-1]["val_loss"],
        "val_at_dense_time": val_at_time(evals, dense_time) if dense_time else evals[-1]["val_loss"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train_rows),
        "wall_s": read_json(os.path.join(out_dir, "run.json"))["wall_s"],
        "train_time_s": evals[-1]["time"],
    }
    if "load" in train_rows[-1]:
        loads = [f for r in tail for layer in r["load"] for f in layer]
        # per expert and layer, averaged over the tail
        n_layers, n_exp = len(tail[0]["load"]), len(tail[0]["load"][0])
        mean_load = [[statistics.mean(r["load"][i][e] for r in tail) for e in range(n_exp)] for i in range(n_layers)]
        flat = [f for layer in mean_load for f in layer]
        out.update(dropped=statistics.mean(r["dropped"] for r in tail), load_min=min(flat), load_max=max(flat),
                   load_min_step=min(loads), load_max_step=max(loads))
    import torch

    from model import GPT, GPTConfig

    mc = {k: config[k] for k in GPTConfig.__dataclass_fields__ if k in config}
    with torch.device("meta"):
        model = GPT(GPTConfig(**{**mc, "vocab_size": read_json(os.path.join(REPO, "data", config["dataset"],
                                                                                "meta.json"))["vocab_size"]}))
    out["total_params"] = model.get_num_params()
    out["active_params"] = model.get_num_params(active=True)
    return out


def table(results):
    lines = ["| row | params total / active | val loss at 2000 steps | val loss at dense's wall time | "
             "tokens/s | train time | dropped | expert load min-max (last 10%) |", "|---" * 8 + "|"]
    for r in results:
        load = f"{100 * r['load_min']:.1f}%-{100 * r['load_max']:.1f}%" if "load_min" in r else "-"
        dropped = f"{100 * r['dropped']:.2f}%" if "dropped" in r else "-"
        at_t = f"{r['val_at_dense_time']:.4f}" if r["val_at_dense_time"] is not None else "-"
        lines.append(f"| {r['row']} | {r['total_params'] / 1e6:.2f}M / {r['active_params'] / 1e6:.2f}M | "
                     f"{r['val_loss']:.4f} | {at_t} | {r['tokens_per_sec']:,.0f} | {r['train_time_s']:.0f} s | "
                     f"{dropped} | {load} |")
    return "\n".join(lines)


def plot_load(runs, path):
    """Each expert's share of routed tokens over training (layer 0), one panel per MoE row."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, (name, out_dir) in zip(axes[0], runs.items()):
        rows = [r for r in read_metrics(out_dir) if "load" in r]
        iters = [r["iter"] for r in rows]
        n_exp = len(rows[0]["load"][0])
        for e in range(n_exp):
            ax.plot(iters, [r["load"][0][e] for r in rows], lw=0.8, label=f"expert {e}")
        ax.axhline(1 / n_exp, color="k", ls=":", lw=0.8)
        ax.set_title(f"{name}: layer 0")
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("share of routed tokens")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "moe_load.png"))
    t0 = time.perf_counter()
    for name in rows:
        train_run(name, os.path.join(ROOT, name), ROWS[name], CONFIG, args.dtype)
    dense_time = None
    if "dense" in rows:
        dense_time = read_metrics(os.path.join(ROOT, "dense"))[-1]["time"]
    results = [summarize(n, os.path.join(ROOT, n), dense_time) for n in rows]
    md = table(results)
    print()
    print(md)
    by = {r["row"]: r for r in results}
    if "dense" in by and "top2" in by:
        d, m = by["dense"], by["top2"]
        print(f"top2 vs dense at equal steps: {m['val_loss'] - d['val_loss']:+.4f} nats; "
              f"at dense's wall time: {m['val_at_dense_time'] - d['val_loss']:+.4f}; "
              f"speed {m['tokens_per_sec'] / d['tokens_per_sec']:.2f}x dense's tokens/s")
    moe_runs = {n: os.path.join(ROOT, n) for n in rows if n != "dense"}
    if moe_runs and args.plot:
        plot_load(moe_runs, args.plot)
    import json

    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump({"rows": results, "table": md, "total_s": time.perf_counter() - t0}, f, indent=1)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
