"""
Is one LR range test (Smith 2017) as good as a learning-rate sweep? On configs/hparam_char.py
(2 layers, 128 wide, character-level tiny shakespeare, 600 steps, fp32) and six variations
of it, `sweep.py --lr_range` trains once with the rate growing geometrically, three rules
read a rate off its curve (lr_range.py: fastai's valley, the suggestion; the smoothed
minimum / 10; the steepest descent, printed only), and the first two are then trained like
any trial; against them, the best of a nine-point sweep (2.5e-4 to 6.4e-2, a factor 2 apart).

    python experiments/lr_range_experiment.py                  # the config: the default test and the textbook one, ~4.5 min
    python experiments/lr_range_experiment.py --rows held-out   # seeds 2 and 3, 4 layers, width 192: ~22 min
    python experiments/lr_range_experiment.py --rows widths     # widths 64 and 256: ~12 min
    python experiments/lr_range_experiment.py --rows lengths    # tests of 1x and 3x the trial at widths 64, 128, 256: ~9 min after widths

The rows: "default" is sweep.py's default test, 1,200 steps (twice a trial) from 1e-4 to 1;
"textbook" the test most write-ups describe, 200 steps from 1e-5 (this script's default
before the default changed); "lengths" 600 and 1,800 steps from 1e-4, to show how much the
answer hangs on the test's length. The default test's length and rule were chosen on the
curves of widths 64, 128 and 256 (README, experiment 5); the held-out rows were run after
that choice and not used to make it.

The table: each row's rates, their val loss, the gap to its sweep's best (the issue asks
for <= 0.05 nats). The plot (docs/lr_range.png): left, the config's curves at 200 and 1,200
steps with the rules' rates; right, each suggestion's gap against its rate over the
sweep's best rate. Folders under out-hparam/: range-ROW (the test), range-ROW-check (its
rates trained), sweep-CASE (the nine-point sweep of one config, shared by its rows).
"""

import math
import os
import time

from harness import REPO, finish, parse_args, pyplot, read_json, run_sweep
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-hparam")
CONFIG = "configs/hparam_char.py"
LRS = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2]  # lr_width_experiment's grid
BASIN = 0.05  # nats: the bar
CASES = {"w128": ("width 128 (the config)", []), "seed2": ("seed 2", ["--seed=2"]), "seed3": ("seed 3", ["--seed=3"]),
         "layers4": ("4 layers", ["--n_layer=4"]), "w192": ("width 192", ["--n_embd=192"]),
         "w64": ("width 64", ["--n_embd=64"]), "w256": ("width 256", ["--n_embd=256"])}
TEXTBOOK = ["--lr_steps=200", "--lr_min=1e-5"]
ROWS = {  # row: (its config, the test's flags beyond --lr_range; none: sweep.py's defaults)
    "default": ("w128", []), "textbook": ("w128", TEXTBOOK),
    **{c: (c, []) for c in ("seed2", "seed3", "layers4", "w192", "w64", "w256")},
    **{f"x{x}-{c}": (c, [f"--lr_steps={600 * x}"]) for x in (1, 3) for c in ("w64", "w128", "w256")},
}
GROUPS = {"default": ["default", "textbook"], "held-out": ["seed2", "seed3", "layers4", "w192"],
          "widths": ["w64", "w256"], "lengths": [f"x{x}-{c}" for c in ("w64", "w128", "w256") for x in (1, 3)]}
RULES = {"suggested": "valley", "min_over_10": "min / 10"}


def run_row(row, dtype):
    """The row's range test, its two rates trained, and its config's sweep: a result dict."""
    case, flags = ROWS[row]
    keys = CASES[case][1] + ([f"--dtype={dtype}"] if dtype != "auto" else [])
    test_dir = os.path.join(ROOT, f"range-{row}")
    if not os.path.exists(os.path.join(test_dir, "lr_range.json")):
        run_sweep(test_dir, CONFIG, ["--lr_range", *flags, *keys], jobs=1)
    test = read_json(os.path.join(test_dir, "lr_range.json"))
    rates = {rule: float(f"{test[key]:.3g}") for key, rule in RULES.items()}
    check = run_sweep(os.path.join(ROOT, f"range-{row}-check"), CONFIG,
                      ["--grid", "learning_rate=" + ",".join(f"{v:g}" for v in dict.fromkeys(rates.values())), *keys])
    sweep = run_sweep(os.path.join(ROOT, f"sweep-{case}"), CONFIG, ["--grid", "learning_rate=" + ",".join(map(str, LRS)), *keys])
    by_lr = {t["params"]["learning_rate"]: t["val_loss"] for t in sweep.values()}
    best_lr = min(LRS, key=lambda lr: by_lr[lr])
    val = {rule: next(t["val_loss"] for t in check.values() if math.isclose(t["params"]["learning_rate"], lr, rel_tol=1e-9))
           for rule, lr in rates.items()}
    return {"row": row, "case": case, "steps": test["steps"], "lr_min": test["lr"][0], "rates": rates, "val": val,
            "steepest": test["steepest"], "best_lr": best_lr, "best_val": by_lr[best_lr], "sweep": [by_lr[lr] for lr in LRS],
            "curve": {k: test[k] for k in ("lr", "smoothed", "block_lr", "block_loss")}}


def table(results):
    lines = ["| config | the test | valley: lr | val loss | vs the sweep's best | minimum / 10: lr | val loss | "
             "vs the sweep's best | the sweep's best: lr | val loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        cells = []
        for rule in RULES.values():
            gap = r["val"][rule] - r["best_val"]
            cells += [f"{r['rates'][rule]:.3g}", f"{r['val'][rule]:.4f}", ("**%+.4f**" if gap <= BASIN else "%+.4f") % gap]
        held_out = " (held out)" if r["row"] in GROUPS["held-out"] else ""
        textbook = " (textbook)" if r["row"] == "textbook" else ""
        lines.append(f"| {CASES[r['case']][0]}{held_out} | {r['steps']} steps from {r['lr_min']:.0e}{textbook} | " +
                     " | ".join(cells) + f" | {r['best_lr']:g} | {r['best_val']:.4f} |")
    inside = [r for r in results if r["val"]["valley"] - r["best_val"] <= BASIN]
    lines += ["", f"bold: within {BASIN} nats of the sweep's best. The valley is within it in {len(inside)} of "
              f"{len(results)} rows."]
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r, color in zip([r for r in results if r["row"] in ("default", "textbook")], ("C0", "C7")):
        c = r["curve"]
        left.plot(c["lr"], c["smoothed"], color=color, lw=1, label=f"{r['steps']} steps (smoothed)")
        left.plot(c["block_lr"], c["block_loss"], ".", color=color, ms=3)
        left.axvline(r["rates"]["valley"], color=color, ls="--", label=f"valley, {r['steps']} steps: {r['rates']['valley']:.2g}")
        left.axvline(r["rates"]["min / 10"], color=color, ls=":", label=f"minimum / 10, {r['steps']} steps: "
                                                                        f"{r['rates']['min / 10']:.2g}")
    for r in results:
        if r["row"] == "default":
            left.axvline(r["best_lr"], color="k", lw=2, alpha=0.4, label=f"the sweep's best: {r['best_lr']:g}")
    left.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="the range test at width 128 (seed 1337)")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    for rule, marker in zip(RULES.values(), ("o", "x")):
        xs = [r["rates"][rule] / r["best_lr"] for r in results]
        ys = [r["val"][rule] - r["best_val"] for r in results]
        right.scatter(xs, ys, marker=marker, label=rule)
        for x, y, r in zip(xs, ys, results):
            right.annotate(r["row"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    right.axhline(BASIN, color="k", ls="--", lw=0.8, label=f"{BASIN} nats")
    right.set(xscale="log", xlabel="suggested lr / the sweep's best lr",
              ylabel="val loss - the sweep's best (nats)", title="each suggestion, trained")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "lr_range.png"), groups=GROUPS)
    t0 = time.perf_counter()
    results = [run_row(row, args.dtype) for row in rows]
    for r in results:
        print(f"{r['row']}: steepest descent {r['steepest']:.3g} (not trained)")
    finish(results, table(results), plot, args.plot, os.path.join(ROOT, f"lr_range-{'-'.join(rows)}.json"))
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
