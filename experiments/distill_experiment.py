"""
The distillation experiment as one table and one plot: a 1.8M-parameter teacher, and a
0.24M-parameter student trained on the same data for the same steps with hard labels only,
with an online teacher at several temperatures and weights, from the teacher's soft-label
caches at several k with both tail handlings, and KD followed by a hard-label fine-tune.

    python experiments/distill_experiment.py --input ../shared/data/tinyshakespeare/input.txt   # ~20 min on 2 CPU cores
    python experiments/distill_experiment.py --rows seeds    # hard, online and cached k=32 at two more seeds (~8 min more)
    python experiments/distill_experiment.py --rows hard,online-T2-a0.5     # some rows only (finished runs are reused)
    python experiments/distill_experiment.py --fresh                        # delete out-distill/ first

The pipeline, as commands (each row below is one of them):
  1. python train.py configs/distill_teacher.py                               -> out-distill/teacher
  2. python distill.py cache --teacher=out-distill/teacher --k=32             -> out-distill/teacher/soft_labels
  3. python train.py configs/distill_student.py --soft_labels=... --kd_alpha=0.5 --kd_temperature=2
  4. python train.py configs/distill_student.py --init_from=<student of 3> --kd_alpha=0 --max_iters=300 ...
(and a second cache with all 65 logits, --k=65, for the k = vocabulary row).

Columns: val loss (50 fixed batches), parameters, the student's tokens/s, wall time, and the
share of the teacher-student gap closed: (hard - row) / (hard - teacher).
"""

import json
import os
import statistics
import sys
import time

from harness import REPO, parse_args, pyplot, read_json, read_metrics, run_logged, train_run
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-distill")
TEACHER = os.path.join(ROOT, "teacher")
CACHES = {32: os.path.join(TEACHER, "soft_labels"), 65: os.path.join(TEACHER, "soft_labels_all")}
STUDENT = "configs/distill_student.py"
ONLINE = f"--teacher={TEACHER}"
KD = ["--kd_alpha=0.5", "--kd_temperature=2"]


def cached(cache_k, k, tail="bucket"):
    return [f"--soft_labels={CACHES[cache_k]}", *KD, f"--kd_top_k={k}", f"--kd_tail={tail}"]


# row -> (config, train.py arguments)
ROWS = {
    "teacher": ("configs/distill_teacher.py", []),
    "hard": (STUDENT, []),
    "online-T1-a0.5": (STUDENT, [ONLINE, "--kd_alpha=0.5", "--kd_temperature=1"]),
    "online-T2-a0.5": (STUDENT, [ONLINE, *KD]),
    "online-T4-a0.5": (STUDENT, [ONLINE, "--kd_alpha=0.5", "--kd_temperature=4"]),
    "online-T2-a0.9": (STUDENT, [ONLINE, "--kd_alpha=0.9", "--kd_temperature=2"]),
    # from the k = 32 cache: the tail as an "other" bucket (the default) or renormalised away
    "cache-k8-T2-a0.5": (STUDENT, cached(32, 8)),
    "cache-k8-renorm-T2-a0.5": (STUDENT, cached(32, 8, "renorm")),
    "cache-k32-T2-a0.5": (STUDENT, cached(32, 32)),
    "cache-k32-renorm-T2-a0.5": (STUDENT, cached(32, 32, "renorm")),
    "cache-k65-T2-a0.5": (STUDENT, cached(65, 65)),  # every logit: no tail
    # 4.: the cached KD student, then 300 steps on hard labels only at a low rate
    "cache-k32+hard-ft": (STUDENT, [f"--init_from={os.path.join(ROOT, 'cache-k32-T2-a0.5')}", "--max_iters=300",
                                    "--learning_rate=3e-4", "--min_lr=3e-5", "--warmup_iters=0",
                                    "--eval_interval=100"]),
}
# the comparison cache vs online (and both vs hard labels) at more seeds; the default seed is 1337
SEEDED = ("hard", "online-T2-a0.5", "cache-k32-T2-a0.5")
SEEDS = (1, 2)
for _row in SEEDED:
    for _seed in SEEDS:
        ROWS[f"{_row}@seed{_seed}"] = (ROWS[_row][0], ROWS[_row][1] + [f"--seed={_seed}"])
GROUPS = {"default": [r for r in ROWS if "@seed" not in r],
          "seeds": [f"{r}@seed{s}" if s else r for r in SEEDED for s in (0, *SEEDS)]}


def make_cache(k):
    """distill.py cache at k, once; its cost is kept in out-distill/cache-k<k>.json."""
    cost_path = os.path.join(ROOT, f"cache-k{k}.json")
    if os.path.exists(os.path.join(CACHES[k], "meta.json")) and os.path.exists(cost_path):
        print(f"cache k={k}: reusing")
        return read_json(cost_path)
    print(f"cache k={k}: running the teacher over the training split", flush=True)
    cmd = [sys.executable, "distill.py", "cache", f"--teacher={TEACHER}", f"--k={k}", f"--out={CACHES[k]}"]
    wall, rss = run_logged(cmd, os.path.join(ROOT, f"cache-k{k}.log"))
    size = sum(os.path.getsize(os.path.join(CACHES[k], f)) for f in ("values.f16", "indices.i32", "tail.f32"))
    cost = {"k": k, "wall_s": wall, "peak_rss_mib": rss, "mib": size / 2**20}
    with open(cost_path, "w") as f:
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


def seed_table(by):
    """val loss of the seeded rows at every seed, and cache - online per seed."""
    seeds = (1337, *SEEDS)
    name = lambda r, s: r if s == 1337 else f"{r}@seed{s}"  # noqa: E731
    if not all(name(r, s) in by for r in SEEDED for s in seeds):
        return None
    lines = ["| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---" * (len(seeds) + 2) + "|"]
    for r in SEEDED:
        v = [by[name(r, s)]["val_loss"] for s in seeds]
        lines.append(f"| {r} | " + " | ".join(f"{x:.4f}" for x in v) + f" | {statistics.mean(v):.4f} |")
    d = [by[name("cache-k32-T2-a0.5", s)]["val_loss"] - by[name("online-T2-a0.5", s)]["val_loss"] for s in seeds]
    lines.append("| cache k=32 − online | " + " | ".join(f"{x:+.4f}" for x in d) + f" | {statistics.mean(d):+.4f} |")
    return "\n".join(lines)


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "distill_val.png"),
                            groups=GROUPS)
    t0 = time.perf_counter()
    train_run("teacher", TEACHER, *reversed(ROWS["teacher"]), args.dtype)
    caches = sorted({k for r in rows for k, path in CACHES.items() if f"--soft_labels={path}" in ROWS[r][1]})
    costs = [make_cache(k) for k in caches]
    for name in rows:
        if name != "teacher":
            config, extra = ROWS[name]
            train_run(name, os.path.join(ROOT, name), extra, config, args.dtype)
    results = [summarize(n, os.path.join(ROOT, n)) for n in rows]
    md = table(results)
    print()
    print(md)
    for c in costs:
        print(f"cache k={c['k']}: {c['wall_s']:.0f} s to run the teacher over the training split once, {c['mib']:.0f} MiB")
    by = {r["row"]: r for r in results}
    if "online-T2-a0.5" in by and "cache-k32-T2-a0.5" in by:
        on, ca = by["online-T2-a0.5"], by["cache-k32-T2-a0.5"]
        print(f"cache k=32 vs online (T=2, alpha=0.5): {on['s_per_iter'] / ca['s_per_iter']:.2f}x faster per step, "
              f"val {ca['val_loss'] - on['val_loss']:+.4f}")
    seeds_md = seed_table(by)
    if seeds_md:
        print()
        print(seeds_md)
    if args.plot and "teacher" in rows and "online-T2-a0.5" in rows:  # the main table's plot, not the seeds'
        plot({n: os.path.join(ROOT, n) for n in rows if n in ("teacher", "hard", "online-T2-a0.5", "online-T2-a0.9",
                                                               "cache-k32-T2-a0.5", "cache-k32-renorm-T2-a0.5")},
             args.plot)
    with open(os.path.join(ROOT, f"results-{args.rows.replace(',', '+')[:60]}.json"), "w") as f:
        json.dump({"rows": results, "table": md, "seeds": seeds_md, "total_s": time.perf_counter() - t0}, f, indent=1)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
