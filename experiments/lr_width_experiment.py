"""
How sensitive is a small model to its learning rate, and does the best rate move with
width? Two sweeps of nine learning rates (a factor 2 apart, 2.5e-4 to 6.4e-2) at widths
64, 128 and 256 (2 layers, 4 heads): one in the standard parameterization (GPT-2's init,
one Adam rate for every tensor), one under muP with base width 128 (mup.py). Each trial is
configs/hparam_char.py: character-level tiny shakespeare, 600 steps of 16 x 64 tokens,
5% warmup and a cosine decay to 0, fp32; sweep.py runs them two at a time.

    python experiments/lr_width_experiment.py                # both sweeps: 54 runs, 22 min on 2 CPU cores
    python experiments/lr_width_experiment.py --rows sp      # the standard parameterization alone
    python experiments/lr_width_experiment.py --rows mup
    python experiments/lr_width_experiment.py --rows sp,mup,seeds   # + widths 64 and 256 at seed 2 (~6 min more)

For each width the table gives the best rate of the grid, a finer estimate of the optimum
(the vertex of a parabola through the best point and its two neighbours, in log lr), the
best val loss, and the basin's width: the span of rates within 0.05 nats of the best, as
a factor (max / min), where the loss between grid points is read off straight lines in
log lr. "shift" is the widest model's best rate over the narrowest's. The
plot (docs/lr_width.png) shows val loss against learning rate, one curve per width, for
each parameterization. The sweeps live in out-hparam/lr-sp and out-hparam/lr-mup
(`python sweep.py --report out-hparam/lr-sp` prints one's own table).
"""

import math
import os

from harness import REPO, finish, parse_args, pyplot, run_sweep
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-hparam")
CONFIG = "configs/hparam_char.py"
WIDTHS = [64, 128, 256]
LRS = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2]
BASE_WIDTH = 128
ROWS = {"sp": [], "mup": ["--mup=True", f"--mup_base_width={BASE_WIDTH}"], "sp-seed2": ["--seed=2"]}
NAMES = {"sp": "standard", "mup": f"muP (base {BASE_WIDTH})", "sp-seed2": "standard, seed 2"}
GROUPS = {"default": ["sp", "mup"], "seeds": ["sp-seed2"]}
WIDTHS_OF = {"sp-seed2": [64, 256]}  # the narrowest and the widest again, at another seed
BASIN = 0.05  # nats


def sweep_args(row, dtype):
    grid = ["--grid", "n_embd=" + ",".join(map(str, WIDTHS_OF.get(row, WIDTHS))), "--grid", "learning_rate=" + ",".join(map(str, LRS))]
    return grid + ROWS[row] + ([f"--dtype={dtype}"] if dtype != "auto" else [])


def fitted_optimum(lrs, losses):
    """The vertex of the parabola through the best grid point and its neighbours, in log2
    lr; the grid point itself at the grid's edge (or if the three do not curve upward)."""
    i = min(range(len(lrs)), key=lambda j: losses[j])
    if i in (0, len(lrs) - 1) or not all(map(math.isfinite, losses[i - 1:i + 2])):
        return lrs[i]
    x = [math.log2(lr) for lr in lrs[i - 1:i + 2]]
    y = losses[i - 1:i + 2]
    # equal spacing h in x: vertex = x1 - h (y2 - y0) / (2 (y2 - 2 y1 + y0))
    curve = y[2] - 2 * y[1] + y[0]
    if curve <= 0:
        return lrs[i]
    return 2 ** (x[1] - (x[1] - x[0]) * (y[2] - y[0]) / (2 * curve))


def basin(lrs, losses, margin=BASIN):
    """(low, high): the rates where the loss, drawn as straight lines between the grid points in
    log lr, is within `margin` of the best grid point; the grid's edge where it is still inside."""
    i = min(range(len(lrs)), key=lambda j: losses[j])
    level, x = losses[i] + margin, [math.log2(lr) for lr in lrs]

    def crossing(j, k):  # from inside (j) toward k: where the line reaches `level`, or k if it stays inside
        if losses[k] <= level:
            return None
        w = (level - losses[j]) / (losses[k] - losses[j]) if math.isfinite(losses[k]) else 0.0
        return 2 ** (x[j] + w * (x[k] - x[j]))

    ends = []
    for step in (-1, 1):
        j = i
        while 0 <= j + step < len(lrs) and crossing(j, j + step) is None:
            j += step
        ends.append(crossing(j, j + step) if 0 <= j + step < len(lrs) else lrs[j])
    return ends[0], ends[1]


def summarize(row, rows):
    """Per width: the losses at each rate, the best, the fitted optimum and the basin."""
    out = []
    for width in WIDTHS_OF.get(row, WIDTHS):
        by_lr = {r["params"]["learning_rate"]: r["val_loss"] for r in rows.values() if r["params"]["n_embd"] == width}
        losses = [by_lr[lr] for lr in LRS]
        best = min(losses)
        out.append({"param": row, "width": width, "losses": losses, "best_val": best,
                    "best_lr": LRS[losses.index(best)], "fitted_lr": fitted_optimum(LRS, losses),
                    "basin": list(basin(LRS, losses))})
    return out


def table(results):
    lines = ["| parameterization | width | best lr (grid) | fitted optimum | best val loss | "
             f"rates within {BASIN} nats | basin width | shift of the best lr vs the narrowest |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in results:
        first = next(x for x in results if x["param"] == r["param"])  # its narrowest width
        lines.append(f"| {NAMES[r['param']]} | {r['width']} | {r['best_lr']:g} | {r['fitted_lr']:.2g} | "
                     f"{r['best_val']:.4f} | {r['basin'][0]:.2g} - {r['basin'][1]:.2g} | "
                     f"{r['basin'][1] / r['basin'][0]:.1f}x | {r['best_lr'] / first['best_lr']:g}x |")
    lines += ["", "val loss at each learning rate:", "",
              "| parameterization | width | " + " | ".join(f"{lr:g}" for lr in LRS) + " |",
              "|---|---:|" + "---:|" * len(LRS)]
    for r in results:
        cells = [("**%.3f**" if v == r["best_val"] else "%.3f") % v if math.isfinite(v) else "diverged"
                 for v in r["losses"]]
        lines.append(f"| {NAMES[r['param']]} | {r['width']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    params = [p for p in dict.fromkeys(r["param"] for r in results) if not p.endswith("-seed2")]
    fig, axes = plt.subplots(1, len(params), figsize=(5.5 * len(params), 4), sharey=True, squeeze=False)
    for ax, param in zip(axes[0], params):
        for r in (x for x in results if x["param"] == param):
            line, = ax.plot(LRS, [min(v, 3.5) for v in r["losses"]], marker="o", label=f"width {r['width']}")
            ax.axvline(r["best_lr"], color=line.get_color(), ls=":", lw=1)
        for r in (x for x in results if x["param"] == param + "-seed2"):
            ax.plot(LRS, [min(v, 3.5) for v in r["losses"]], ls="--", lw=1, color="gray",
                    label=f"width {r['width']}, seed 2")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (peak)")
        ax.set_title(NAMES[param])
        ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
    axes[0][0].set_ylabel("val loss after 600 steps")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "lr_width.png"), groups=GROUPS)
    results = []
    for row in rows:
        trials = run_sweep(os.path.join(ROOT, f"lr-{row}"), CONFIG, sweep_args(row, args.dtype))
        results += summarize(row, trials)
    finish(results, table(results), plot, args.plot, os.path.join(ROOT, "lr_width.json"))


if __name__ == "__main__":
    main()
