"""
One model for three tasks, or one per task, or one base with a LoRA per task? At about
equal total parameters, on data/multitask (tiny shakespeare, Python source, sorting
strings: one character vocabulary, a prefix token per task; data/multitask/prepare.py),
each setup judged by every task's val loss on the same windows and by exact match on 1,000
held-out sort questions (multitask.py).

    python experiments/multitask_experiment.py --input ../shared/data/tinyshakespeare/input.txt   # 11 runs, ~12 min, 2 CPU cores
    python experiments/multitask_experiment.py --rows shared,lora-sort                # some runs only (others reused)
    python experiments/multitask_experiment.py --rows big                             # the full-size models per task
    python experiments/multitask_experiment.py --rows seeds    # shared-3x and big-* again at seed 2 (~8 min)

Runs (configs/multitask.py: 4 layers, 4 heads, block 64, batches of 16 x 64, cosine from
4e-3, fp32; each skipped when out-multitask/<run> holds it finished):
  shared            128 wide, on the three tasks 1:1:1 (datasets=), STEPS steps
  shared-3x         the same for 3 x STEPS steps: as many characters of each task as a model per
                    task sees, at three times the compute (does sharing help per character?)
  solo-<task>       72 wide (a third of the shared model's parameters), on its task alone, STEPS
                    steps: the three together have the shared model's parameters and about its
                    compute, and each sees three times the tokens of its task
  lora-<task>       LoRA r = 8 on every Linear of the shared model (c_attn, c_proj, c_fc; rate
                    1e-3, the PEFT experiment's best for these targets), LORA_STEPS steps on its
                    task alone; the base is shared, so the setup adds 3 x the LoRA tensors
  big-<task>        128 wide on its task alone, STEPS steps: each the shared model's size and as many
                    characters of its task as shared-3x saw, so shared-3x against these isolates
                    what sharing does per task (transfer or interference) from what size does

The table: one row per setup; per-task val loss (multitask.evaluate: the same 50 fixed
windows of each task's val split for every model), sort's exact match, parameters in all
and per task, optimizer steps, training wall time (the runs' processes; the LoRA setup's
includes its base). The plot (docs/multitask.png): val loss per task and setup, val loss
against the characters of each task trained on (shared runs vs one task alone), and exact
match.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from harness import REPO, parse_args, prepared_text, pyplot, read_json, read_metrics, train_run
from errors import UserError, cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-multitask")
CONFIG = "configs/multitask.py"
DATA = os.path.join(REPO, "data", "multitask")
TASKS = ["shakespeare", "python", "sort"]
STEPS, LORA_STEPS = 1500, 300
SHARED = os.path.join(ROOT, "shared")
LORA = ["--peft=lora", "--lora_r=8", "--lora_targets=c_attn,c_proj,c_fc", "--learning_rate=1e-3",
        f"--max_iters={LORA_STEPS}", "--warmup_iters=15", "--min_lr=1e-5", "--weight_decay=0.0",
        f"--eval_interval={LORA_STEPS}", f"--init_from={SHARED}"]
ROWS = {"shared": [f"--max_iters={STEPS}"],
        "shared-3x": [f"--max_iters={3 * STEPS}", f"--warmup_iters={3 * 75}", "--eval_interval=750"]}
ROWS.update({f"solo-{t}": [f"--datasets=multitask/{t}:1", "--n_embd=72", f"--max_iters={STEPS}"] for t in TASKS})
ROWS.update({f"lora-{t}": LORA + [f"--datasets=multitask/{t}:1"] for t in TASKS})
ROWS.update({f"big-{t}": [f"--datasets=multitask/{t}:1", f"--max_iters={STEPS}"] for t in TASKS})
GROUPS = {"big": [f"big-{t}" for t in TASKS]}
# the per-character comparison (shared-3x against big-*) rests on differences of 0.002-0.03 nats: a second seed
GROUPS["seeds"] = [f"{r}@seed2" for r in ["shared-3x"] + GROUPS["big"]]
ROWS.update({f"{r}@seed2": ROWS[r] + ["--seed=2"] for r in ["shared-3x"] + GROUPS["big"]})
SETUPS = {  # setup -> {task: the run that serves it}
    "one shared model": dict.fromkeys(TASKS, "shared"),
    "one shared model, 3x the steps": dict.fromkeys(TASKS, "shared-3x"),
    "one model per task (1/3 size)": {t: f"solo-{t}" for t in TASKS},
    "shared base + LoRA per task": {t: f"lora-{t}" for t in TASKS},
    "one full-size model per task (3x params)": {t: f"big-{t}" for t in TASKS},
    "one shared model, 3x the steps, seed 2": dict.fromkeys(TASKS, "shared-3x@seed2"),
    "one full-size model per task (3x params), seed 2": {t: f"big-{t}@seed2" for t in TASKS},
}


def prepare_multitask(input_path):
    """data/multitask/{shakespeare,python,sort}, by its prepare.py, unless prepared; tiny
    shakespeare's text from --input, else as harness found it (data/shakespeare_char)."""
    if all(os.path.exists(os.path.join(DATA, t, "meta.json")) for t in TASKS):
        return
    with tempfile.TemporaryDirectory() as tmp:
        text = input_path or prepared_text(tmp)
        cmd = [sys.executable, "data/multitask/prepare.py"] + (["--input", text] if text else [])
        r = subprocess.run(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    if r.returncode == 2:
        lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        raise UserError(f"preparing data/multitask: {lines[-1][7:] if lines else r.stderr.strip()}")
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")


def curves(out_dir):
    """{task: [(step, val loss)]} from a run's eval rows (a mixture's val_loss_<dataset> keys)."""
    evals = [r for r in read_metrics(out_dir) if "val_loss" in r]
    return {t: [(r["iter"], r[f"val_loss_multitask/{t}"]) for r in evals if f"val_loss_multitask/{t}" in r]
            for t in TASKS}


def summarize(setup, serving, tasks):
    """A setup's row: multitask.evaluate over its runs, their steps and wall time."""
    import multitask

    runs = {d: multitask.load_run(os.path.join(ROOT, d)) for d in dict.fromkeys(serving.values())}
    rows, total = multitask.evaluate({t: runs[d] for t, d in serving.items()}, tasks)
    dirs = list(runs) + (["shared"] if any(d.startswith("lora-") for d in runs) else [])
    steps = {d: read_json(os.path.join(ROOT, d, "config.json"))["max_iters"] for d in dirs}
    return {"setup": setup, "tasks": {r["task"]: r for r in rows}, "total_params": total,
            "steps": steps, "wall_s": sum(read_json(os.path.join(ROOT, d, "run.json"))["wall_s"] for d in dirs),
            "curves": {d: curves(os.path.join(ROOT, d)) for d in runs if not d.startswith("lora-")}}


def steps_cell(r):
    s = r["steps"]
    if "shared" in s and len(s) > 1:
        return f"{s['shared']} + {' + '.join(str(v) for d, v in s.items() if d != 'shared')}"
    return " / ".join(str(v) for v in dict.fromkeys(s.values())) + (" each" if len(s) > 1 else "")


def table(results):
    head = ("| setup | shakespeare val | python val | sort val | sort exact match | parameters in all | "
            "per task | steps | train wall s |")
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in results:
        t = r["tasks"]
        per = sorted({v["params"] for v in t.values()})
        per = f"{per[0]:,}" if len(per) == 1 else f"{per[0]:,} - {per[-1]:,}"
        lines.append(f"| {r['setup']} | " + " | ".join(f"{t[k]['val_loss']:.4f}" for k in TASKS)
                     + f" | {100 * t['sort']['exact_match']:.1f}% | {r['total_params']:,} | {per} | "
                     f"{steps_cell(r)} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    import numpy as np
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        axes[0].bar(np.arange(len(TASKS)) + i * width, [r["tasks"][t]["val_loss"] for t in TASKS], width,
                    label=r["setup"])
    axes[0].set_xticks(np.arange(len(TASKS)) + width * (len(results) - 1) / 2, TASKS)
    losses = [r["tasks"][t]["val_loss"] for r in results for t in TASKS]
    axes[0].set_ylim(min(losses) - 0.2, max(losses) + 0.1)
    axes[0].set_ylabel("val loss (nats per character)")
    axes[0].set_title("per-task val loss")
    axes[0].legend(fontsize=8)
    # val loss against the characters of each task a run has trained on (a shared run: a third of each step's)
    colors = dict(zip(TASKS, ("tab:blue", "tab:orange", "tab:green")))
    styles = {"shared": "-", "shared-3x": "-.", "solo": "--", "big": ":"}
    for r in results:
        for run, per_task in r["curves"].items():
            share = 1 / len(TASKS) if run.startswith("shared") else 1.0
            kind = run if run in styles else run.split("-")[0]
            for t, pts in per_task.items():
                if pts and (run.startswith("shared") or run.endswith(t)):
                    x = [it * 16 * 64 * share / 1e3 for it, _ in pts]
                    axes[1].plot(x, [v for _, v in pts], styles[kind], color=colors[t], marker=".")
    handles = [Line2D([], [], color=c, label=t) for t, c in colors.items()]
    handles += [Line2D([], [], color="grey", linestyle=st, label=k) for k, st in styles.items()]
    axes[1].legend(handles=handles, fontsize=8, ncol=2)
    axes[1].set_xlabel("characters of that task trained on (thousands)")
    axes[1].set_ylabel("val loss (train.py's evals)")
    axes[1].set_title("per task, against its own characters: shared runs vs alone")
    axes[1].set_ylim(1.2, 2.8)
    axes[2].barh(range(len(results)), [100 * r["tasks"]["sort"]["exact_match"] for r in results],
                 color=[f"C{i}" for i in range(len(results))])
    axes[2].set_yticks(range(len(results)), [r["setup"].replace(" (", "\n(") for r in results], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("exact match, % of 1,000 held-out sort questions")
    axes[2].set_title("sorting: exact match (greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "multitask.png"),
                            groups=GROUPS)
    prepare_multitask(args.input)
    if any(r.startswith("lora-") for r in rows) and "shared" not in rows:
        rows = ["shared"] + rows  # the LoRA runs' base comes first
    t0 = time.perf_counter()
    for name in rows:
        train_run(name, os.path.join(ROOT, name), ROWS[name], CONFIG, args.dtype)
    import multitask

    tasks = multitask.load_tasks(DATA)
    # every setup whose runs are all there, trained now or by an earlier invocation
    results = [summarize(s, serving, tasks) for s, serving in SETUPS.items()
               if all(os.path.exists(os.path.join(ROOT, d, "run.json")) for d in serving.values())]
    md = table(results)
    print()
    print(md)
    if args.plot and results:
        plot([r for r in results if not r["setup"].endswith("seed 2")], args.plot)
    total = time.perf_counter() - t0
    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump({"rows": results, "table": md, "total_s": total}, f, indent=1)
    print(f"total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
