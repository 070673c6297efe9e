"""
The distillation experiment as one table and one plot: a 1.8M-parameter teacher, and a
0.23M-parameter student trained on the same data for the same steps with hard labels only,
with an online teacher at several temperatures and weights, from the teacher's soft-label
cache at several k, and KD followed by a hard-label fine-tune.

    python distill_experiment.py --input ../shared/data/tinyshakespeare/input.txt   # ~18 min on 2 CPU cores
    python distill_experiment.py --rows hard,online-T2-a0.5     # some rows only (finished runs are reused)
    python distill_experiment.py --fresh                        # delete out-distill/ first

The pipeline, as commands (each row below is one of them):
  1. python train.py configs/distill_teacher.py                               -> out-distill/teacher
  2. python distill.py cache --teacher=out-distill/teacher --k=65             -> out-distill/teacher/soft_labels
  3. python train.py configs/distill_student.py --soft_labels=... --kd_alpha=0.5 --kd_temperature=2 --kd_top_k=32
  4. python train.py configs/distill_student.py --init_from=<student of 3> --kd_alpha=0 --max_iters=300 ...

Columns: val loss (50 fixed batches), parameters, the student's tokens/s, wall time, and the
share of the teacher-student gap closed: (hard - row) / (hard - teacher).
"""

import os
import statistics
import sys
import time

from experiment import REPO, parse_args, pyplot, read_json, read_metrics, run_logged, train_run

ROOT = os.path.join(REPO, "out-distill")
TEACHER = os.path.join(ROOT, "teacher")
CACHE = os.path.join(TEACHER, "soft_labels")
STUDENT = "configs/distill_student.py"
ONLINE = f"--teacher={TEACHER}"
CACHED = f"--soft_labels={CACHE}"

# row -> (config, train.py arguments)
ROWS = {
    "teacher": ("configs/distill_teacher.py", []),
    "hard": (STUDENT, []),
    "online-T1-a0.5": (STUDENT, [ONLINE, "--kd_alpha=0.5", "--kd_temperature=1"]),
    "online-T2-a0.5": (STUDENT, [ONLINE, "--kd_alpha=0.5", "--kd_temperature=2"]),
    "online-T4-a0.5": (STUDENT, [ONLINE, "--kd_alpha=0.5", "--kd_temperature=4"]),
    "online-T2-a0.9": (STUDENT, [ONLINE, "--kd_alpha=0.9", "--kd_temperature=2"]),
    "cache-k8-T2-a0.5": (STUDENT, [CACHED, "--kd_alpha=0.5", "--kd_temperature=2", "--kd_top_k=8"]),
    "cache-k32-T2-a0.5": (STUDENT, [CACHED, "--kd_alpha=0.5", "--kd_temperature=2", "--kd_top_k=32"]),
    "cache-k65-T2-a0.5": (STUDENT, [CACHED, "--kd_alpha=0.5", "--kd_temperature=2", "--kd_top_k=65"]),
    # 4.: the cached KD student, then 300 steps on hard labels only at a low rate
    "cache-k32+hard-ft": (STUDENT, [f"--init_from={os.path.join(ROOT, 'cache-k32-T2-a0.5')}", "--max_iters=300",
                                    "--learning_rate=3e-4", "--min_lr=3e-5", "--warmup_iters=0",
                                    "--eval_interval=100"]),
}


def make_cache():
    if os.path.exists(os.path.join(CACHE, "meta.json")):
        print("cache: reusing")
        return read_json(os.path.join(ROOT, "cache.json"))
    print("cache: running the teacher over the training split", flush=True)
    cmd = [sys.executable, "distill.py", "cache", f"--teacher={TEACHER}", "--k=65", f"--out={CACHE}"]
    wall, rss = run_logged(cmd, os.path.join(ROOT, "cache.log"))
    cost = {"wall_s": wall, "peak_rss_mib": rss}
    with open(os.path.join(ROOT, "cache.json"), "w") as f:
        import json

        json.dump(cost, f)
    return cost


def summarize(name, out_dir):
    rows = read_metrics(out_dir)
    evals = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "tokens_per_sec" in r]
    config = read_json(os.path.join(out_dir, "config.json"))
    return {
        "row": name,
        "val_loss": evals[-1]["val_loss"],
        "params": config["trainable"]["total_params"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train_rows),
        "s_per_iter": statistics.median(config["batch_size"] * config["block_size"] / r["tokens_per_sec"]
                                        for r in train_rows),
        "wall_s": read_json(os.path.join(out_dir, "run.json"))["wall_s"],
        "steps": config["max_iters"],
    }


def table(results):
    by = {r["row"]: r for r in results}
    hard, teacher = by.get("hard"), by.get("teacher")
    lines = ["| row | params | steps | val loss | gap closed | tokens/s | s/iter | wall time |", "|---" * 8 + "|"]
    for r in results:
        gap = "-"
        if hard and teacher and r["row"] not in ("hard", "teacher"):
            gap = f"{100 * (hard['val_loss'] - r['val_loss']) / (hard['val_loss'] - teacher['val_loss']):.0f}%"
        lines.append(f"| {r['row']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['val_loss']:.4f} | {gap} | "
                     f"{r['tokens_per_sec']:,.0f} | {r['s_per_iter']:.3f} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def plot(runs, path):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, out_dir in runs.items():
        evals = [r for r in read_metrics(out_dir) if "val_loss" in r]
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], marker="o", ms=3, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("val loss")
    ax.set_ylim(top=2.4)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "distill_val.png"))
    t0 = time.perf_counter()
    train_run("teacher", TEACHER, *reversed(ROWS["teacher"]))
    cache_cost = make_cache() if any(r.startswith("cache") for r in rows) else None
    for name in rows:
        if name != "teacher":
            config, extra = ROWS[name]
            train_run(name, os.path.join(ROOT, name), extra, config)
    results = [summarize(n, os.path.join(ROOT, n)) for n in rows]
    md = table(results)
    print()
    print(md)
    if cache_cost:
        print(f"cache: {cache_cost['wall_s']:.0f} s to run the teacher over the training split once")
    by = {r["row"]: r for r in results}
    if "online-T2-a0.5" in by and "cache-k32-T2-a0.5" in by:
        on, ca = by["online-T2-a0.5"], by["cache-k32-T2-a0.5"]
        print(f"cache k=32 vs online (T=2, alpha=0.5): {on['s_per_iter'] / ca['s_per_iter']:.2f}x faster per step, "
              f"val {ca['val_loss'] - on['val_loss']:+.4f}")
    if args.plot:
        plot({n: os.path.join(ROOT, n) for n in rows if n in ("teacher", "hard", "online-T2-a0.5", "online-T2-a0.9",
                                                               "cache-k32-T2-a0.5")}, args.plot)
    import json

    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump({"rows": results, "table": md, "total_s": time.perf_counter() - t0}, f, indent=1)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
