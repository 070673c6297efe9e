"""
Warmup and the learning-rate schedule on a small model: does warmup stabilise training,
and does the shape of the decay matter? configs/hparam_char.py (2 layers, 128 wide,
character-level tiny shakespeare, 600 steps, fp32), whose learning_rate is the tuned one
(the widths experiment's optimum at width 128).

    python experiments/schedule_experiment.py          # 21 runs, ~8 min on 2 CPU cores
    python experiments/schedule_experiment.py --rows warmup
    python experiments/schedule_experiment.py --rows schedules,wsd --seed 2 --plot ""   # a second seed (~4 min)

Rows:
  warmup     at the tuned rate, 3x and 10x it: no warmup, or 1%, 5%, 10% of the steps (cosine
             decay after): final val loss, loss spikes (harness.spikes) and divergence
  schedules  cosine, linear, WSD (the last 20% decays) and constant, at the tuned rate with 5%
             warmup: final val loss and the loss curves
  wsd        WSD's selling point (Hu et al. 2024, MiniCPM, section 4): one run held at the peak
             rate, branched off at step 240 to decay to step 300, and continued to decay to step
             600 (train.py resumes it with another lr_decay_iters: 660 steps in all), against two
             cosine runs of 300 and 600 steps (900 steps in all)

The plot (docs/schedule.png): final val loss against warmup for each rate; the training
loss curves of the four schedules; the WSD branches against the two cosine runs.
Sweeps and runs: out-hparam/warmup, out-hparam/schedules, out-hparam/wsd-*.
"""

import math
import os
import shutil
import sys

from harness import REPO, finish, parse_args, pyplot, read_metrics, run_logged, run_sweep, spikes
from config import read_config_file
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-hparam")
CONFIG = "configs/hparam_char.py"
STEPS = 600
MULTS = [1, 3, 10]
WARMUPS = [0, 6, 30, 60]  # 0, 1%, 5%, 10% of 600
SCHEDULES = ["cosine", "linear", "wsd", "constant"]
ROWS = {"warmup": [], "schedules": [], "wsd": []}


def curve(out_dir):
    """(iters, training losses) of a run, one per step."""
    rows = [r for r in read_metrics(out_dir) if "loss" in r]
    return [r["iter"] for r in rows], [r["loss"] for r in rows]


def warmup_rows(lr, extra, root):
    out = os.path.join(root, "warmup")
    lrs = ",".join(f"{lr * m:.4g}" for m in MULTS)
    trials = run_sweep(out, CONFIG, ["--grid", f"learning_rate={lrs}", "--grid",
                                     "warmup_iters=" + ",".join(map(str, WARMUPS)), "--log_interval=1"] + extra)
    rows = []
    for tid, t in sorted(trials.items()):
        losses = curve(os.path.join(out, "trials", tid))[1]
        rows.append({"mult": t["params"]["learning_rate"] / lr, "warmup": t["params"]["warmup_iters"],
                     "val_loss": t["val_loss"], "status": t["status"], "spikes": spikes(losses),
                     "max_loss_after_100": max(losses[100:], default=float("nan"))})
    return rows


def schedule_rows(lr, extra, root):
    out = os.path.join(root, "schedules")
    trials = run_sweep(out, CONFIG, ["--grid", "lr_schedule=" + ",".join(SCHEDULES), f"--learning_rate={lr:.4g}",
                                     "--log_interval=1"] + extra)
    return [{"schedule": t["params"]["lr_schedule"], "val_loss": t["val_loss"],
             "curve": curve(os.path.join(out, "trials", tid))} for tid, t in sorted(trials.items())]


def resume_to(name, out_dir, args):
    """train.py CONFIG args --out_dir=out_dir, unless its metrics already reach the target."""
    target = int(next(a for a in args if a.startswith("--max_iters=")).split("=")[1])
    if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
        evals = [r for r in read_metrics(out_dir) if "val_loss" in r]
        if evals and evals[-1]["iter"] == target:
            print(f"{name}: reusing {os.path.relpath(out_dir, REPO)}")
            return
    print(f"{name}: training -> {os.path.relpath(out_dir, REPO)}", flush=True)
    run_logged([sys.executable, "train.py", CONFIG, *args, f"--out_dir={out_dir}", "--progress=False"],
               out_dir + f"-{target}.log")


def wsd_rows(lr, extra, root):
    """One WSD run branched at step 240: its decays to 300 and to 600; cosine runs of each length."""
    # one thread, as a trial of `sweep.py --jobs 2` has: another thread count sums in another
    # order, and that alone moves the final loss (cosine, 600 steps: by 0.008 nats here).
    # With the same arithmetic the branch decayed at 600 equals the schedules
    # row's WSD trial, and cosine 600 its cosine trial, bit for bit
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    common = [f"--learning_rate={lr:.4g}", "--log_interval=1"] + extra
    main, branch = os.path.join(root, "wsd-main"), os.path.join(root, "wsd-300")
    stable_end = int(300 * 0.8)  # both decays start here: decay_frac = 0.2 of 300 is 60 steps
    if not os.path.exists(os.path.join(branch, "metrics.jsonl")):
        shutil.rmtree(main, ignore_errors=True)
        # the shared stable phase: a WSD schedule aimed at 600 is flat until 480, so stop at 240
        resume_to("wsd stable phase", main, common + ["--lr_schedule=wsd", f"--max_iters={stable_end}",
                                                      "--lr_decay_iters=600", f"--eval_interval={stable_end}"])
        shutil.copytree(main, branch)
    # --lr_schedule again: CONFIG's cosine would override the checkpoint's (files come after it)
    resume_to("wsd decayed at 300", branch, common + ["--init_from=resume", "--lr_schedule=wsd", "--max_iters=300",
                                                      "--lr_decay_iters=300"])
    resume_to("wsd decayed at 600", main, common + ["--init_from=resume", "--lr_schedule=wsd", "--max_iters=600",
                                                    "--lr_decay_iters=600"])
    rows = []
    for steps, wsd_dir in ((300, branch), (600, main)):
        cos_dir = os.path.join(root, f"cosine-{steps}")
        resume_to(f"cosine {steps}", cos_dir, common + [f"--max_iters={steps}", f"--eval_interval={steps}"])
        rows.append({"steps": steps, "wsd": [r for r in read_metrics(wsd_dir) if "val_loss" in r][-1]["val_loss"],
                     "cosine": [r for r in read_metrics(cos_dir) if "val_loss" in r][-1]["val_loss"],
                     "wsd_curve": curve(wsd_dir), "cosine_curve": curve(cos_dir)})
    return rows


def tables(res):
    out = []
    if "warmup" in res:
        out += ["| lr | warmup steps | val loss | spikes | highest loss after step 100 |", "|---|---:|---:|---:|---:|"]
        for r in res["warmup"]:
            val = f"{r['val_loss']:.4f}" if math.isfinite(r["val_loss"]) else r["status"]
            out.append(f"| {r['mult']:g}x tuned | {r['warmup']} ({100 * r['warmup'] / STEPS:g}%) | {val} | "
                       f"{r['spikes']} | {r['max_loss_after_100']:.3f} |")
    if "schedules" in res:
        best = min(r["val_loss"] for r in res["schedules"])
        out += ["", "| schedule (tuned lr, 5% warmup) | val loss | vs best |", "|---|---:|---:|"]
        out += [f"| {r['schedule']} | {r['val_loss']:.4f} | {r['val_loss'] - best:+.4f} |" for r in res["schedules"]]
    if "wsd" in res:
        out += ["", "| length | cosine, its own run | WSD, branched from one run | WSD - cosine |",
                "|---:|---:|---:|---:|"]
        out += [f"| {r['steps']} | {r['cosine']:.4f} | {r['wsd']:.4f} | {r['wsd'] - r['cosine']:+.4f} |"
                for r in res["wsd"]]
        out += ["", "steps trained: cosine 300 + 600 = 900; WSD 600 + the 60-step branch = 660"]
    return "\n".join(out)


def ema(xs, beta=0.95):
    out, m = [], 0.0
    for i, x in enumerate(xs):
        m = beta * m + (1 - beta) * x
        out.append(m / (1 - beta ** (i + 1)))
    return out


def plot(res, path):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if "warmup" in res:
        for m in MULTS:
            rows = [r for r in res["warmup"] if r["mult"] == m]
            axes[0].plot([r["warmup"] for r in rows], [min(r["val_loss"], 3.5) for r in rows], marker="o",
                         label=f"{m}x tuned lr")
        axes[0].set_xlabel("warmup steps (of 600)")
        axes[0].set_ylabel("val loss (3.5 = diverged)")
        axes[0].legend()
        axes[0].set_title("warmup")
    if "schedules" in res:
        for r in res["schedules"]:
            axes[1].plot(r["curve"][0], ema(r["curve"][1]), label=f"{r['schedule']} ({r['val_loss']:.3f})")
        axes[1].set_ylim(1.9, 2.8)
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("training loss (EMA)")
        axes[1].legend()
        axes[1].set_title("schedules at the tuned lr")
    if "wsd" in res:
        for r in res["wsd"]:
            axes[2].plot(r["cosine_curve"][0], ema(r["cosine_curve"][1]), label=f"cosine {r['steps']}")
            axes[2].plot(r["wsd_curve"][0], ema(r["wsd_curve"][1]), "--", label=f"WSD decayed at {r['steps']}")
        axes[2].set_ylim(1.9, 2.8)
        axes[2].set_xlabel("step")
        axes[2].legend()
        axes[2].set_title("one WSD run, two lengths")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    seed = lambda p: p.add_argument("--seed", type=int, default=None,
                                    help="train.py's seed for every run (default: the config's), its runs in "
                                         "out-hparam/seed<N>/")
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "schedule.png"), extra=seed)
    lr = read_config_file(os.path.join(REPO, CONFIG))["learning_rate"]
    extra = [f"--dtype={args.dtype}"] if args.dtype != "auto" else []  # train.py's settings, for every run
    root = ROOT
    if args.seed is not None:
        extra, root = extra + [f"--seed={args.seed}"], os.path.join(ROOT, f"seed{args.seed}")
        os.makedirs(root, exist_ok=True)
    res = {}
    for row in rows:
        res[row] = {"warmup": warmup_rows, "schedules": schedule_rows, "wsd": wsd_rows}[row](lr, extra, root)
    finish(res, tables(res), plot, args.plot, os.path.join(root, "schedule.json"))


if __name__ == "__main__":
    main()
