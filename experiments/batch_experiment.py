"""
What does the batch size buy a small model at a fixed budget of tokens? Batch sizes 4 to
128 sequences of 64 characters, each trained on the same 614,400 tokens (600 steps at
batch 16, 75 steps at batch 128), so a bigger batch means fewer, less noisy steps. The
learning rate follows a stated rule, the square root of the batch ratio from the rate tuned
at batch 16 (configs/hparam_char.py's learning_rate, the widths experiment's optimum at
width 128; or --lr), and a small sweep checks
the rule: half of it, it, and twice it. Warmup is 5% of each run's steps, the decay cosine;
the model is configs/hparam_char.py (2 layers, 128 wide, fp32). Then gradient accumulation:
batch 16 x 4 micro-steps against batch 64 at the same rates and tokens (the sampler draws the
same 64 windows either way, so only the order of the sums differs).

    python experiments/batch_experiment.py               # 20 runs, ~8 min on 2 CPU cores
    python experiments/batch_experiment.py --lr 4e-3     # another tuned rate at batch 16

Columns: steps, the rule's rate, the best of the three, val loss at each, loss spikes in
the best run (harness.spikes: a step more than 0.3 nats above the median of the 10 before),
and the cost of each doubling (best val at 2B minus best at B). McCandlish et al. (2018)
call the batch beyond which a doubling no longer halves the steps at the same loss the
critical batch size; here, at equal tokens, it is where a doubling starts to cost loss.
The plot (docs/batch.png): best val loss against batch size. Sweeps: out-hparam/batch-*.
"""

import math
import os

from harness import REPO, finish, parse_args, pyplot, read_metrics, run_sweep, spikes
from config import read_config_file
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-hparam")
CONFIG = "configs/hparam_char.py"
TOKENS = 600 * 16 * 64  # the base config's budget
BATCHES = [4, 8, 16, 32, 64, 128]
MULTS = [0.5, 1.0, 2.0]
ROWS = {f"b{b}": [] for b in BATCHES} | {"accum": []}


def steps_for(batch):
    return TOKENS // (batch * 64)


def rule(batch, lr16):
    return lr16 * math.sqrt(batch / 16)  # the square-root rule (Adam's noise scale; Malladi et al. 2022)


def run(row, lr16, dtype):
    batch = 64 if row == "accum" else int(row[1:])
    steps = steps_for(batch)
    fixed = [f"--max_iters={steps}", f"--warmup_iters={max(1, steps // 20)}", f"--eval_interval={steps}",
             "--log_interval=1"] + ([f"--dtype={dtype}"] if dtype != "auto" else [])
    if row == "accum":  # batch 64 made of 4 micro-batches of 16: at half the rule's rate and at it
        fixed += ["--batch_size=16", "--gradient_accumulation_steps=4"]
        lrs = [rule(64, lr16) * m for m in MULTS[:2]]
    else:
        fixed += [f"--batch_size={batch}"]
        lrs = [rule(batch, lr16) * m for m in MULTS]
    out = os.path.join(ROOT, f"batch-{row}")
    trials = run_sweep(out, CONFIG, ["--grid", "learning_rate=" + ",".join(f"{lr:.4g}" for lr in lrs)] + fixed)
    results = []
    for tid, t in sorted(trials.items()):
        train = [r["loss"] for r in read_metrics(os.path.join(out, "trials", tid)) if "loss" in r]
        results.append({"lr": t["params"]["learning_rate"], "val_loss": t["val_loss"], "spikes": spikes(train)})
    return {"row": row, "batch": batch, "steps": steps, "rule_lr": rule(batch, lr16), "trials": results}


def table(rows):
    lines = ["| batch | steps | rule's lr | best lr | val at 0.5x / 1x / 2x the rule | best val | spikes | "
             "cost of the doubling |", "|---:|---:|---:|---:|---|---:|---:|---:|"]
    prev = None
    for r in (x for x in rows if x["row"] != "accum"):
        best = min(r["trials"], key=lambda t: t["val_loss"])
        vals = " / ".join(f"{t['val_loss']:.4f}" if math.isfinite(t["val_loss"]) else "diverged" for t in r["trials"])
        cost = f"{best['val_loss'] - prev:+.4f}" if prev is not None else "-"
        lines.append(f"| {r['batch']} | {r['steps']} | {r['rule_lr']:.3g} | {best['lr']:.3g} | {vals} | "
                     f"{best['val_loss']:.4f} | {best['spikes']} | {cost} |")
        prev = best["val_loss"]
    accum = next((x for x in rows if x["row"] == "accum"), None)
    b64 = next((x for x in rows if x["row"] == "b64"), None)
    if accum and b64:
        lines += ["", "| lr | batch 64, one micro-batch | 4 micro-batches of 16 | difference |", "|---:|---:|---:|---:|"]
        for t in accum["trials"]:
            one = next(x for x in b64["trials"] if math.isclose(x["lr"], t["lr"], rel_tol=1e-3))
            lines.append(f"| {t['lr']:.3g} | {one['val_loss']:.4f} | {t['val_loss']:.4f} | "
                         f"{t['val_loss'] - one['val_loss']:+.5f} |")
    return "\n".join(lines)


def plot(rows, path):
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in rows if r["row"] != "accum"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, m in enumerate(MULTS):
        ax.plot([r["batch"] for r in rows], [min(r["trials"][i]["val_loss"], 3.5) for r in rows], marker="o",
                label=f"{m:g} x the rule's lr")
    ax.plot([r["batch"] for r in rows], [min(t["val_loss"] for t in r["trials"]) for r in rows], "k--", lw=1,
            label="best of the three")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences of 64), equal tokens")
    ax.set_ylabel("val loss")
    ax.set_title(f"{TOKENS:,} tokens at every batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    tuned = read_config_file(os.path.join(REPO, CONFIG))["learning_rate"]
    extra = lambda p: p.add_argument("--lr", type=float, default=tuned,
                                     help=f"the tuned learning rate at batch 16 (default: {CONFIG}'s, {tuned:g})")
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "batch.png"), extra=extra)
    results = [run(row, args.lr, args.dtype) for row in rows]
    finish(results, table(results), plot, args.plot, os.path.join(ROOT, "batch.json"))


if __name__ == "__main__":
    main()
