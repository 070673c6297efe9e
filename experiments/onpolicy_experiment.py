"""
Distillation on the student's own text, measured: the distillation experiment's teacher
(4 x 192, 1.8M parameters) and student (2 x 96, 0.24M), trained for the same 1500 steps
with hard labels, off-policy KD (the distillation experiment's best: online, forward KL,
T = 2, alpha = 0.5), sequence-level KD (on a corpus the teacher wrote), on-policy KD
(lambda = 0.5 and 1, reverse KL and JSD) and off-policy followed by on-policy; each judged
by its val loss and by how likely the teacher finds the student's own samples. Then
forgetting recovery: a model fine-tuned on one character's voice distilled on-policy
towards its own pre-fine-tuning checkpoint.

    python experiments/onpolicy_experiment.py --input ../shared/data/tinyshakespeare/input.txt --dtype=float32   # ~23 min on 2 CPU cores
    python experiments/onpolicy_experiment.py --rows recovery --dtype=float32   # forgetting recovery, ~6 min
    python experiments/onpolicy_experiment.py --rows seeds --dtype=float32      # off-policy vs off->on at 2 more seeds, ~10 min
    python experiments/onpolicy_experiment.py --rows hard,on-rkl-1 --dtype=float32   # some rows (finished runs are reused)

The pipeline, as commands (each row is one of them; see ROWS):
  1. python train.py configs/distill_teacher.py                     -> out-distill/teacher (reused if there)
  2. python distill.py generate --teacher=out-distill/teacher --tokens=300000 --out=out-onpolicy/teacher_text
  3. python train.py configs/distill_student.py <row's keys> --out_dir=out-onpolicy/<row>
  4. each student samples 96 tokens after 256 seeded 32-character prompts from the val split
     (temperature 1); the teacher scores every generated token (distill.teacher_log_likelihood,
     as sample.py --score_with does), and so does the student itself

Equal compute: every student makes 1500 updates of 12 x 128 positions, and every online-KD
row (off- and on-policy) runs the teacher once per update on 12 x 128 positions: the same
teacher forward passes. What on-policy adds is the rollouts (the student sampling 64 tokens
with the KV cache before an update); the table shows their seconds apart from the
teacher's, and the wall time. The row "off-policy, on-policy's time" gives off-policy KD
the wall time of on-policy lambda = 1 (more steps) for the comparison at equal time.

Forgetting recovery (--rows recovery): the PEFT experiment's base (configs/peft_base.py,
pretrained without GLOUCESTER's speeches) is fully fine-tuned on GLOUCESTER for 200 steps
(the PEFT table's full row); then 200 more steps from the fine-tuned model where a share
lambda of the micro-batches are rollouts from prompts of the old domain (kd_prompts), scored
by the base model as the teacher (reverse KL), and the rest stay cross-entropy on GLOUCESTER.
Controls: 200 more steps of fine-tuning alone, and replay (cross-entropy on a 50/50 mixture
of both domains' real text).
"""

import json
import math
import os
import shutil
import statistics
import sys
import time

from harness import REPO, evaluate, finished, parse_args, pyplot, read_json, read_metrics, run_logged, train_run
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-onpolicy")
TEACHER = os.path.join(REPO, "out-distill", "teacher")  # the distillation experiment's: one command, one folder
CORPUS = os.path.join(ROOT, "teacher_text")
STUDENT = "configs/distill_student.py"
ONLINE = f"--teacher={TEACHER}"
ROLL = 64  # tokens per rollout: half the block; the prompt is the window's first 65 real tokens
LOG = ["--log_interval=1"]  # every step's teacher and rollout seconds


def on_policy(lam, loss):
    """On-policy rows: the divergence at T = 1 (the distribution the samples are judged by);
    with lambda < 1 the other micro-batches are off-policy KD with the same divergence, alpha = 0.5."""
    return [ONLINE, "--kd_alpha=0.5", "--kd_temperature=1", f"--kd_loss={loss}", f"--kd_on_policy={lam}",
            f"--kd_rollout_len={ROLL}"]


OFF = [ONLINE, "--kd_alpha=0.5", "--kd_temperature=2"]
# row -> (label, train.py arguments on top of configs/distill_student.py)
ROWS = {
    "hard": ("hard labels", []),
    "off-policy": ("off-policy KD (forward KL, T=2, α=0.5)", OFF),
    "seq-kd": ("sequence-level KD (the teacher's text, hard labels)", [f"--dataset={CORPUS}"]),
    "on-rkl-0.5": ("on-policy λ=0.5, reverse KL", on_policy(0.5, "reverse_kl")),
    "on-rkl-1": ("on-policy λ=1, reverse KL", on_policy(1.0, "reverse_kl")),
    "on-jsd-0.5": ("on-policy λ=0.5, JSD(β=0.5)", on_policy(0.5, "jsd")),
    "on-jsd-1": ("on-policy λ=1, JSD(β=0.5)", on_policy(1.0, "jsd")),
    "off-then-on": ("off-policy 1000 steps, then on-policy λ=1 reverse KL 500", None),  # two phases: see off_then_on
    "off-equal-time": ("off-policy KD, on-policy λ=1's wall time", None),  # its steps: measured, see equal_time_steps
}
SWITCH = 1000  # off-then-on: the step where the rollouts begin
SEEDED = ("off-policy", "off-then-on")  # the closest pair of the table
SEEDS = (1, 2)
for _row in SEEDED:
    for _seed in SEEDS:
        ROWS[f"{_row}@seed{_seed}"] = (f"{ROWS[_row][0]}, seed {_seed}",
                                       None if ROWS[_row][1] is None else ROWS[_row][1] + [f"--seed={_seed}"])

# forgetting recovery: rows of their own, on the PEFT experiment's base
BASE = os.path.join(REPO, "out-peft", "base")
FINETUNED = os.path.join(ROOT, "recovery", "finetuned")
OLD, NEW = "shakespeare_voices/base", "shakespeare_voices/gloucester"
FT_CONFIG = "configs/peft_finetune.py"
FT = ["--peft=none", "--learning_rate=1e-4", f"--init_from={BASE}"]  # the PEFT table's full fine-tuning row


def recovery(lam):
    return [f"--init_from={FINETUNED}", f"--teacher={BASE}", "--kd_alpha=0", "--kd_loss=reverse_kl",
            f"--kd_on_policy={lam}", f"--kd_prompts={OLD}", f"--kd_rollout_len={ROLL}", "--learning_rate=1e-4"]


RECOVERY = {
    "rec-ft-more": ("200 more steps of fine-tuning (control)", [f"--init_from={FINETUNED}", "--learning_rate=1e-4"]),
    "rec-replay": ("replay: cross-entropy on both domains, 50/50", [
        f"--init_from={FINETUNED}", "--learning_rate=1e-4", f"--datasets={NEW}:0.5,{OLD}:0.5"]),
    "rec-0.25": ("on-policy recovery, λ=0.25", recovery(0.25)),
    "rec-0.5": ("on-policy recovery, λ=0.5", recovery(0.5)),
    "rec-0.75": ("on-policy recovery, λ=0.75", recovery(0.75)),
}
ROWS.update({name: (label, None) for name, (label, _) in RECOVERY.items()})
GROUPS = {"default": [r for r in ROWS if "@seed" not in r and r not in RECOVERY and r != "off-equal-time"],
          "equal-time": ["off-policy", "on-rkl-1", "off-equal-time"],
          "seeds": [r for r in ROWS if "@seed" in r],
          "recovery": list(RECOVERY)}


# ----------------------------------------------------------------------------------------
# the runs


def make_corpus(dtype):
    """distill.py generate, once: ~300k characters the teacher wrote (the student then sees
    each about 8 times in its 1500 x 12 x 128 positions, the number the others see of the data)."""
    cost_path = os.path.join(ROOT, "teacher_text.json")
    if os.path.exists(os.path.join(CORPUS, "meta.json")) and os.path.exists(cost_path):
        print("sequence-level KD corpus: reusing")
        return read_json(cost_path)
    print("sequence-level KD corpus: the teacher writes it", flush=True)
    cmd = [sys.executable, "distill.py", "generate", f"--teacher={TEACHER}", "--tokens=300000",
           f"--out={CORPUS}", "--batch_size=64"]
    wall, _ = run_logged(cmd, os.path.join(ROOT, "teacher_text.log"))
    meta = read_json(os.path.join(CORPUS, "meta.json"))
    cost = {"wall_s": wall, "tokens": meta["train_tokens"] + meta["val_tokens"]}
    with open(cost_path, "w") as f:
        json.dump(cost, f)
    return cost


def off_then_on(dtype, name="off-then-on", seed=None):
    """Off-policy KD for SWITCH steps (with the 1500-step schedule), then the same run resumed
    with on-policy lambda = 1, reverse KL, T = 1 to step 1500."""
    out = os.path.join(ROOT, name)
    second = [sys.executable, "train.py", "--init_from=resume", "--max_iters=1500", "--kd_on_policy=1",
              "--kd_loss=reverse_kl", "--kd_temperature=1", f"--kd_rollout_len={ROLL}", f"--out_dir={out}",
              "--progress=False"]
    if finished(out, second):
        print(f"{name}: reusing out-onpolicy/{name}")
        return
    first = os.path.join(ROOT, f"{name}-part1")
    train_run(f"{name} (part 1)", first, OFF + LOG + [f"--max_iters={SWITCH}", "--lr_decay_iters=1500"]
              + ([f"--seed={seed}"] if seed else []), STUDENT, dtype)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(first, out)
    print(f"{name} (part 2): training -> out-onpolicy/{name}", flush=True)
    wall, rss = run_logged(second, out + ".log")
    wall += read_json(os.path.join(first, "run.json"))["wall_s"]
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"wall_s": wall, "peak_rss_mib": rss, "cmd": second[1:]}, f, indent=1)


def equal_time_steps():
    """Steps of off-policy KD that take as long as on-policy lambda = 1's 1500 (their median
    seconds per step, measured in this invocation's runs)."""
    return round(1500 * s_per_step(os.path.join(ROOT, "on-rkl-1")) / s_per_step(os.path.join(ROOT, "off-policy")))


def s_per_step(out_dir):
    rows = [r for r in read_metrics(out_dir) if "tokens_per_sec" in r and r["iter"] > 0]
    return statistics.median(12 * 128 / r["tokens_per_sec"] for r in rows)


def run_row(name, dtype):
    label, extra = ROWS[name]
    if name.startswith("off-then-on"):
        return off_then_on(dtype, name, int(name.split("@seed")[1]) if "@seed" in name else None)
    if name == "off-equal-time":
        steps = equal_time_steps()
        extra = OFF + [f"--max_iters={steps}", f"--eval_interval={steps // 6}"]
    if name in RECOVERY:
        train_run("finetuned", FINETUNED, FT, FT_CONFIG, dtype)
        return train_run(name, os.path.join(ROOT, "recovery", name), RECOVERY[name][1] + LOG, FT_CONFIG, dtype)
    if "seq-kd" in name:
        make_corpus(dtype)
    train_run(name, os.path.join(ROOT, name), extra + LOG, STUDENT, dtype)


# ----------------------------------------------------------------------------------------
# judging the student's own text


def judge(run_dir, teacher, n=256, prompt_len=32, new=96, seed=1234):
    """The run's model samples `new` tokens (temperature 1) after n seeded prompts of
    prompt_len characters from the val split; the teacher's and the model's own mean
    log-probability per generated token, the mean over samples with its standard error, and
    three samples as text."""
    import numpy as np
    import torch

    from batches import load_dataset
    from checkpoint import read_checkpoint, restore_model
    from distill import teacher_log_likelihood
    from tokenizer import tokenizer_from_meta

    ckpt = read_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model = restore_model(ckpt, "onpolicy_experiment.py").eval()
    val = load_dataset("shakespeare_char")[1]
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(val) - prompt_len, (n,), generator=g).tolist()
    prompts = torch.from_numpy(np.stack([val[s:s + prompt_len] for s in starts]).astype(np.int64))
    with torch.no_grad():
        out = model.generate(prompts, new, generator=torch.Generator().manual_seed(seed)).tolist()
    t_ll = [teacher_log_likelihood(teacher, ids, prompt_len)[0] for ids in out]
    s_ll = [teacher_log_likelihood(model, ids, prompt_len)[0] for ids in out]
    tok = tokenizer_from_meta(ckpt["meta"])
    return {"teacher_ll": statistics.mean(t_ll), "teacher_ll_se": statistics.stdev(t_ll) / math.sqrt(n),
            "own_ll": statistics.mean(s_ll),
            "samples": [(tok.decode(ids[:prompt_len]), tok.decode(ids[prompt_len:])) for ids in out[:3]]}


def summarize(name, out_dir, teacher, corpus_cost):
    rows = read_metrics(out_dir)
    steps = [r for r in rows if "tokens_per_sec" in r]
    config = read_json(os.path.join(out_dir, "config.json"))
    # every row is judged on the real data's val split (seq-kd trained on the teacher's text)
    val = evaluate(out_dir, "shakespeare_char", 50, 12) if "seq-kd" in name else \
        [r for r in rows if "val_loss" in r][-1]["val_loss"]
    teacher_positions = config["max_iters"] * 12 * 128 if config.get("teacher") else 0  # one pass per step
    gen_s = 0.0
    if "seq-kd" in name:  # the teacher's cost was the corpus: one position per token it wrote or read
        teacher_positions, gen_s = corpus_cost["tokens"], corpus_cost["wall_s"]
    return {
        "row": name, "label": ROWS[name][0] if name in ROWS else name,
        "val_loss": val, "steps": config["max_iters"],
        "teacher_positions": teacher_positions,
        "teacher_s": sum(r.get("teacher_s", 0.0) for r in steps) + gen_s,
        "rollout_s": sum(r.get("rollout_s", 0.0) for r in steps),
        "wall_s": read_json(os.path.join(out_dir, "run.json"))["wall_s"] + gen_s,
        "evals": [(r["iter"], r["val_loss"], r["time"]) for r in rows if "val_loss" in r],
        **judge(out_dir, teacher),
        "trained_with": config["kd_loss"] if config.get("teacher") else "-",
    }


def table(results):
    lines = ["| row | steps | val loss | teacher LL of its samples | its own LL | teacher positions | teacher s | "
             "rollout s | wall time |", "|---" * 9 + "|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['steps']} | {r['val_loss']:.4f} | {r['teacher_ll']:.3f} ± "
                     f"{r['teacher_ll_se']:.3f} | {r['own_ll']:.3f} | {r['teacher_positions'] / 1e6:.2f}M | "
                     f"{r['teacher_s']:.0f} | {r['rollout_s']:.0f} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def samples_md(results, names=("teacher", "hard", "off-policy", "on-rkl-1")):
    by = {r["row"]: r for r in results}
    out = []
    for n in names:
        if n in by:
            prompt, text = by[n]["samples"][0]
            out.append(f"**{by[n]['label']}** — {prompt!r} → {text!r}")
    return "\n\n".join(out)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        if r["row"] == "teacher":
            continue
        ev = r["evals"]
        if r["row"] != "seq-kd":  # whose eval rows are on the teacher's text, not the data's
            a.plot([e[2] for e in ev], [e[1] for e in ev], marker="o", ms=3, label=r["label"])
        b.errorbar(r["teacher_ll"], r["val_loss"], xerr=r["teacher_ll_se"], fmt="o")
        b.annotate(r["row"], (r["teacher_ll"], r["val_loss"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    a.set_xlabel("wall time (s)")
    a.set_ylabel("val loss")
    a.set_ylim(top=2.4)
    a.legend(fontsize=6)
    b.set_xlabel("teacher's log-likelihood per token of the student's samples (higher: more teacher-like)")
    b.set_ylabel("val loss (the data's contexts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------------------
# forgetting recovery


def recovery_results(rows):
    def losses(d):
        return {"old": evaluate(d, OLD, 50, 12), "new": evaluate(d, NEW, 50, 12)}

    res = [{"row": "base", "label": "before fine-tuning (the base)", **losses(BASE)},
           {"row": "finetuned", "label": "after fine-tuning on GLOUCESTER (200 steps)", **losses(FINETUNED)}]
    for name in rows:
        d = os.path.join(ROOT, "recovery", name)
        steps = [r for r in read_metrics(d) if "tokens_per_sec" in r]
        res.append({"row": name, "label": RECOVERY[name][0], **losses(d),
                    "wall_s": read_json(os.path.join(d, "run.json"))["wall_s"],
                    "rollout_s": sum(r.get("rollout_s", 0.0) for r in steps)})
    base, ft = res[0], res[1]
    for r in res[2:]:
        r["old_recovered"] = (ft["old"] - r["old"]) / (ft["old"] - base["old"])
        r["new_kept"] = (base["new"] - r["new"]) / (base["new"] - ft["new"])
    return res


def recovery_table(res):
    lines = ["| model | old domain val | new domain (GLOUCESTER) val | old-domain loss won back | new-domain gain kept "
             "| wall time |", "|---" * 6 + "|"]
    for r in res:
        won = f"{100 * r['old_recovered']:.0f}%" if "old_recovered" in r else "-"
        kept = f"{100 * r['new_kept']:.0f}%" if "new_kept" in r else "-"
        wall = f"{r['wall_s']:.0f} s" if "wall_s" in r else "-"
        lines.append(f"| {r['label']} | {r['old']:.4f} | {r['new']:.4f} | {won} | {kept} | {wall} |")
    return "\n".join(lines)


def recovery_plot(res, path):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in res:
        ax.plot(r["old"], r["new"], "o")
        ax.annotate(r["row"], (r["old"], r["new"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    lams = [r for r in res if r["row"].startswith("rec-0")]
    ax.plot([res[1]["old"]] + [r["old"] for r in lams], [res[1]["new"]] + [r["new"] for r in lams], "-", lw=1)
    ax.set_xlabel("old-domain val loss (lower: less forgotten)")
    ax.set_ylabel("GLOUCESTER val loss (lower: more learnt)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "onpolicy.png"),
                            groups=GROUPS, hold_out="GLOUCESTER,JULIET")
    from harness import prepare_data

    prepare_data(args.input)  # both: the speaker split (recovery) and the whole text (the rest)
    t0 = time.perf_counter()
    import torch

    from checkpoint import read_checkpoint, restore_model

    if any(r not in RECOVERY for r in rows):
        train_run("teacher", TEACHER, [], "configs/distill_teacher.py", args.dtype)
    if any(r in RECOVERY for r in rows):
        train_run("base", BASE, [], "configs/peft_base.py", args.dtype)
    for name in rows:
        run_row(name, args.dtype)
    out = {"total_s": None}
    main_rows = [r for r in rows if r not in RECOVERY]
    if main_rows:
        teacher = restore_model(read_checkpoint(os.path.join(TEACHER, "ckpt.pt")), "the judge").eval()
        corpus = read_json(os.path.join(ROOT, "teacher_text.json")) if os.path.exists(
            os.path.join(ROOT, "teacher_text.json")) else None
        with torch.no_grad():
            results = [summarize(n, os.path.join(ROOT, n), teacher, corpus) for n in main_rows]
            own = judge(TEACHER, teacher)  # the ceiling: the teacher's own samples
        tr = read_metrics(TEACHER)
        results.insert(0, {"row": "teacher", "label": "the teacher's own samples (ceiling)",
                           "val_loss": [r for r in tr if "val_loss" in r][-1]["val_loss"], "steps": 1500,
                           "teacher_positions": 0, "teacher_s": 0.0, "rollout_s": 0.0,
                           "wall_s": read_json(os.path.join(TEACHER, "run.json"))["wall_s"], "evals": [], **own,
                           "trained_with": "-"})
        md = table(results)
        print()
        print(md)
        print()
        print(samples_md(results))
        if args.plot and {"hard", "on-rkl-1"} <= set(main_rows):  # the main table's plot
            plot(results, args.plot)
        out.update(rows=results, table=md)
    rec_rows = [r for r in rows if r in RECOVERY]
    if rec_rows:
        res = recovery_results(rec_rows)
        md = recovery_table(res)
        print()
        print(md)
        if args.plot:
            recovery_plot(res, os.path.join(REPO, "docs", "onpolicy_recovery.png"))
        out.update(recovery=res, recovery_table=md)
    out["total_s"] = time.perf_counter() - t0
    with open(os.path.join(ROOT, f"results-{args.rows.replace(',', '+')[:60]}.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
