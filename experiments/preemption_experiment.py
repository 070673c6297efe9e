"""
What a preemption costs, measured on nanoGPT's CPU recipe (configs/shakespeare_char_cpu.py,
fp32): the same run trained straight through, SIGTERMed three times and resumed each time
(train.py saves the step in flight: nothing is redone, and the loss rows must equal the
straight run's bit for bit), and SIGKILLed at the same three moments (no handler runs: the
resume starts from the last checkpoint, and the steps since are trained again). Then the
price of saving more often than at evals: one save of this model's checkpoint (rotation and
checksum included) against a step.

    python experiments/preemption_experiment.py                 # ~5 min on a 2-core CPU
    python experiments/preemption_experiment.py --iters=500     # shorter

Columns: interruptions, steps trained again, wall seconds in all (start-ups included), the
seconds from the signal to the process's exit, the final val loss, and whether every
training loss equals the straight run's. The plot (docs/preemption.png): the three runs'
training loss against the step, the interruptions marked, and where each run's wall time
went. Runs: out-preempt/.
"""

import json
import os
import signal
import subprocess
import sys
import time

from harness import REPO, add_dtype_argument, describe, pyplot, read_metrics

from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-preempt")
CONFIG = "configs/shakespeare_char_cpu.py"
CUTS = (0.3, 0.55, 0.8)  # where the interruptions come, as fractions of the run


def command(out, iters, dtype, resume=False):
    return ([sys.executable, "train.py", CONFIG, f"--out_dir={out}", f"--max_iters={iters}",
             f"--lr_decay_iters={iters}", f"--eval_interval={iters // 4}", "--log_interval=1", "--eval_iters=100",
             "--progress=False", f"--dtype={dtype}"] + (["--init_from=resume"] if resume else []))


def steps_logged(out):
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if '"loss"' in line and line.endswith("\n"))


def interrupted(out, iters, dtype, signum):
    """Train to iters, hit by signum when the logged steps pass each cut, resumed after each.
    Returns (wall seconds, [seconds from signal to exit], steps trained again, cut iters)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t0, latencies, redone, cut_iters = time.perf_counter(), [], 0, []
    for i, frac in enumerate(CUTS + (None,)):
        log = open(os.path.join(os.path.dirname(out), f"{os.path.basename(out)}-{i}.log"), "w")
        proc = subprocess.Popen(command(out, iters, dtype, resume=i > 0), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        if frac is None:
            if proc.wait() != 0:
                raise SystemExit(f"the last leg failed: see {log.name}")
            break
        while steps_logged(out) < frac * iters:
            if proc.poll() is not None:
                raise SystemExit(f"train.py ended early ({proc.returncode}): see {log.name}")
            time.sleep(0.01)
        sent = time.perf_counter()
        proc.send_signal(signum)
        code = proc.wait()
        latencies.append(time.perf_counter() - sent)
        expected = 128 + signum if signum == signal.SIGTERM else -signal.SIGKILL
        if code != expected:
            raise SystemExit(f"exit {code} after {signal.Signals(signum).name}, expected {expected}: see {log.name}")
        saved = json.loads(subprocess.check_output(
            [sys.executable, "-c", "import sys, torch; print(torch.load(sys.argv[1], weights_only=True)['iter_num'])",
             os.path.join(out, "ckpt.pt")], cwd=REPO))
        redone += max(steps_logged(out) - saved, 0)  # steps past the checkpoint: trained again on resume
        cut_iters.append(saved)
    return time.perf_counter() - t0, latencies, redone, cut_iters


def save_cost(out):
    """Milliseconds of one rotating save of out's checkpoint (the median of five), in this process."""
    import statistics

    import torch

    from checkpoint import save_rotating

    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    folder = os.path.join(ROOT, "saves")
    os.makedirs(folder, exist_ok=True)
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        save_rotating({**ckpt, "iter_num": i}, folder, keep_last=2)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), os.path.getsize(os.path.join(out, "ckpt.pt"))


def step_time(out):
    """Milliseconds of one optimizer step of the run in out: its tokens per step over the
    median of its logged tokens/s (start-up and evals left out)."""
    import statistics

    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    tok_s = statistics.median(r["tokens_per_sec"] for r in read_metrics(out) if "tokens_per_sec" in r)
    return 1000 * c["gradient_accumulation_steps"] * c["batch_size"] * c["block_size"] / tok_s


def losses(out):
    return [(r["iter"], r["loss"]) for r in read_metrics(out) if "loss" in r]


def final_val(out):
    return [r["val_loss"] for r in read_metrics(out) if "val_loss" in r][-1]


def plot(results, path, cuts, step_s):
    """Left: the training loss of the three runs (one curve: they are equal). Right: where
    each run's wall time went (training, the steps trained again, the restarts)."""
    plt = pyplot()
    if plt is None:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for name, style in (("straight", "-"), ("SIGTERM x3", "--"), ("SIGKILL x3", ":")):
        rows = losses(results[name]["out"])
        ax.plot([i for i, _ in rows], [v for _, v in rows], style, lw=1, label=name)
    for c in cuts:
        ax.axvline(c, color="grey", lw=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_ylim(top=3.0)
    ax.set_title("the three runs' losses coincide (grey: the interruptions)")
    ax.legend()
    names = list(results)
    base = results["straight"]["wall"]
    redone = [results[n]["redone"] * step_s for n in names]
    restarts = [max(results[n]["wall"] - base - r, 0) for n, r in zip(names, redone)]
    bx.bar(names, [base] * len(names), label="the run's own steps")
    bx.bar(names, redone, bottom=[base] * len(names), label="steps trained again")
    bx.bar(names, restarts, bottom=[base + r for r in redone], label="restarts (start-up, signal to exit)")
    bx.set_ylabel("wall seconds")
    bx.set_title("what the interruptions cost")
    bx.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {os.path.relpath(path, REPO)}")


@cli
def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--iters", type=int, default=1000, help="steps of each run (default 1000)")
    p.add_argument("--plot", default=os.path.join(REPO, "docs", "preemption.png"), help="where the PNG goes")
    add_dtype_argument(p)
    p.set_defaults(dtype="float32")  # the README's table
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(REPO, "data", "shakespeare_char", "train.bin")):
        raise SystemExit("prepare the data first: python data/shakespeare_char/prepare.py")
    os.makedirs(ROOT, exist_ok=True)
    results = {}
    straight = os.path.join(ROOT, "straight")
    t0 = time.perf_counter()
    with open(straight + ".log", "w") as log:
        subprocess.run(command(straight, args.iters, args.dtype), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    results["straight"] = {"out": straight, "wall": time.perf_counter() - t0, "latency": [], "redone": 0}
    cuts = []
    for name, signum in (("SIGTERM x3", signal.SIGTERM), ("SIGKILL x3", signal.SIGKILL)):
        out = os.path.join(ROOT, name.split()[0].lower())
        wall, latency, redone, cut_iters = interrupted(out, args.iters, args.dtype, signum)
        results[name] = {"out": out, "wall": wall, "latency": latency, "redone": redone}
        cuts = cuts or cut_iters
    want = losses(straight)
    lines = ["| run | interruptions | steps trained again | wall s | signal to exit, s | final val loss | "
             "every loss = straight's |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        got = losses(r["out"])
        r.update(val=final_val(r["out"]), equal=got == want)
        lat = ", ".join(f"{x:.2f}" for x in r["latency"]) or "-"
        lines.append(f"| {name} | {len(r['latency'])} | {r['redone']} | {r['wall']:.0f} | {lat} | {r['val']:.4f} | "
                     f"{'yes' if r['equal'] else 'no'} ({len(got)} rows) |")
    ms, size = save_cost(straight)
    step_ms = step_time(straight)
    lines.append("")
    lines.append(f"one save of the {size / 2**20:.1f} MiB checkpoint (rotation, checksum, fsync): {ms:.1f} ms, "
                 f"{ms / step_ms:.2f} steps' time at {step_ms:.0f} ms a step; ckpt_interval=10 costs "
                 f"{100 * ms / (10 * step_ms):.1f}% of the training time, ckpt_interval=100 {100 * ms / (100 * step_ms):.2f}%")
    md = "\n".join(lines)
    print()
    print(md)
    plot(results, args.plot, cuts, step_ms / 1000)
    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump({"rows": {k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}, "table": md,
                   "save_ms": ms}, f, indent=1)


if __name__ == "__main__":
    main()
