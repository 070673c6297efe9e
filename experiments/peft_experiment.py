"""
The PEFT experiment, end to end, as one table: pretrain a small GPT on tiny shakespeare
without GLOUCESTER's and JULIET's speeches, then fine-tune it on GLOUCESTER's own speeches
(36.5k characters; "personalization") with no fine-tuning, full fine-tuning, LoRA (r = 2,
8, 32; on q,v or on every linear layer), adapters (2 sizes) and BitFit; and QLoRA, LoRA r = 8
on the base quantized to int4 (rows qlora-r8-qv, qlora-r8-all).

    python experiments/peft_experiment.py --input ../shared/data/tinyshakespeare/input.txt   # ~15 min on 2 CPU cores
    python experiments/peft_experiment.py --rows full,lora-r8-qv       # some rows only (the base is reused)
    python experiments/peft_experiment.py --fresh                      # delete out-peft/ and run everything again
    python experiments/peft_experiment.py --lr_scan                    # how the learning rates below were chosen (~10 min)

Steps, each skipped when its result is already in out-peft/:
  1. data      data/shakespeare_voices/{base,gloucester,juliet} (prepare.py --hold_out)
  2. base      python train.py configs/peft_base.py                 -> out-peft/base
  3. rows      python train.py configs/peft_finetune.py <row keys>  -> out-peft/<row>, one process
               each, so its peak memory (RSS, from the OS via wait4) is its own
  4. checks    the merged export of lora-r8-qv samples the same tokens as base + LoRA; a
               second LoRA (JULIET's voice) and sample.py --adapters on the one base
  5. table     printed as Markdown (the README's), and saved to out-peft/results.json

Columns: target val loss (GLOUCESTER's held-out speeches) at its best eval and at the end;
the base domain's val loss after fine-tuning (what was forgotten); trainable parameters
and their share; AdamW state (2 fp32 tensors per trained parameter); ckpt.pt size; seconds
per optimizer step (median); peak RSS of the training process.

Learning rates: each method family at the rate with the best target val loss in a grid
of 3x steps (SCAN below, extended where the best was at an edge), in the same 200-step
runs (--lr_scan); LoRA's r = 2 and 32 rows take their r = 8 row's rate, since the alpha / r
scale keeps the update's size roughly independent of r (LoRA, section 4.1).
"""

import json
import os
import statistics
import subprocess
import sys
import time

from harness import REPO, evaluate, parse_args, read_json, read_metrics, train_run
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-peft")
BASE = os.path.join(ROOT, "base")
ALL_LINEAR = "c_attn,c_proj,c_fc"

# row -> train.py arguments on top of configs/peft_finetune.py (None: the base, not fine-tuned)
ROWS = {
    "none": None,
    "full": ["--peft=none", "--learning_rate=1e-4"],
    "lora-r2-qv": ["--peft=lora", "--lora_r=2", "--lora_targets=c_attn[q,v]", "--learning_rate=1e-2"],
    "lora-r8-qv": ["--peft=lora", "--lora_r=8", "--lora_targets=c_attn[q,v]", "--learning_rate=1e-2"],
    "lora-r32-qv": ["--peft=lora", "--lora_r=32", "--lora_targets=c_attn[q,v]", "--learning_rate=1e-2"],
    "lora-r2-all": ["--peft=lora", "--lora_r=2", f"--lora_targets={ALL_LINEAR}", "--learning_rate=1e-3"],
    "lora-r8-all": ["--peft=lora", "--lora_r=8", f"--lora_targets={ALL_LINEAR}", "--learning_rate=1e-3"],
    "lora-r32-all": ["--peft=lora", "--lora_r=32", f"--lora_targets={ALL_LINEAR}", "--learning_rate=1e-3"],
    "adapter-8": ["--peft=adapter", "--adapter_size=8", "--learning_rate=3e-3"],
    "adapter-32": ["--peft=adapter", "--adapter_size=32", "--learning_rate=3e-3"],
    "bitfit": ["--peft=bitfit", "--learning_rate=3e-2"],
}
# QLoRA (Dettmers et al. 2023): the same LoRA rows on the base quantized to int4 (group 32, round to
# nearest; quantize.py), frozen and dequantized on the fly
INT4_BASE = os.path.join(ROOT, "base-int4")
ROWS.update({f"q{name}": ROWS[name] + [f"--init_from={INT4_BASE}"] for name in ("lora-r8-qv", "lora-r8-all")})
# each grid extended where its best rate was at an edge
SCAN = {"full": [3e-5, 1e-4, 3e-4, 1e-3], "lora-r8-qv": [1e-3, 3e-3, 1e-2, 3e-2],
        "lora-r8-all": [3e-4, 1e-3, 3e-3, 1e-2], "adapter-8": [1e-3, 3e-3, 1e-2], "bitfit": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}
JULIET = ["--peft=lora", "--lora_r=8", "--lora_targets=c_attn[q,v]", "--learning_rate=1e-2",
          "--dataset=shakespeare_voices/juliet"]


def row_result(name, out_dir, ft_config):
    config = read_json(os.path.join(out_dir, "config.json"))
    cost = read_json(os.path.join(out_dir, "run.json"))
    rows = read_metrics(out_dir)
    evals = [r for r in rows if "val_loss" in r]
    tokens_per_iter = config["batch_size"] * config["gradient_accumulation_steps"] * config["block_size"]
    s_per_iter = statistics.median(tokens_per_iter / r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r)
    t = config["trainable"]
    return {
        "row": name,
        "target_val_best": min(r["val_loss"] for r in evals),
        "target_val_best_iter": min(evals, key=lambda r: r["val_loss"])["iter"],
        "target_val_final": evals[-1]["val_loss"],
        "base_val_after": evaluate(out_dir, "shakespeare_voices/base", ft_config["eval_iters"], ft_config["batch_size"]),
        "trainable_params": t["trainable_params"],
        "trainable_percent": t["trainable_percent"],
        "optimizer_state_bytes": t["optimizer_state_bytes"],
        "checkpoint_bytes": os.path.getsize(os.path.join(out_dir, "ckpt.pt")),
        "s_per_iter": s_per_iter,
        "peak_rss_mib": cost["peak_rss_mib"],
        "learning_rate": config["learning_rate"],
    }


def base_row(ft_config):
    """The 'no fine-tuning' row: the base model evaluated on the target."""
    from checkpoint import read_checkpoint

    ckpt = read_checkpoint(os.path.join(BASE, "ckpt.pt"))
    cost = read_json(os.path.join(BASE, "run.json"))
    return {
        "row": "none",
        "target_val_best": evaluate(BASE, ft_config["dataset"], ft_config["eval_iters"], ft_config["batch_size"]),
        "target_val_best_iter": 0,
        "target_val_final": None,
        "base_val_after": evaluate(BASE, "shakespeare_voices/base", ft_config["eval_iters"], ft_config["batch_size"]),
        "trainable_params": 0,
        "trainable_percent": 0.0,
        "optimizer_state_bytes": 0,
        "checkpoint_bytes": os.path.getsize(os.path.join(BASE, "ckpt.pt")),
        "s_per_iter": None,
        "peak_rss_mib": cost["peak_rss_mib"],
        "base_params": sum(v.numel() for k, v in ckpt["model"].items() if k != "lm_head.weight"),
        "learning_rate": None,
    }


def fmt_bytes(n):
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def table(results):
    head = ("| row | lr | target val best (iter) | target val final | base val after | trainable | % | "
            "AdamW state | ckpt.pt | s/iter | peak RSS |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        final = f"{r['target_val_final']:.4f}" if r["target_val_final"] is not None else "-"
        lr = f"{r['learning_rate']:g}" if r["learning_rate"] else "-"
        spi = f"{r['s_per_iter']:.3f}" if r["s_per_iter"] else "-"
        lines.append(
            f"| {r['row']} | {lr} | {r['target_val_best']:.4f} ({r['target_val_best_iter']}) | {final} | "
            f"{r['base_val_after']:.4f} | {r['trainable_params']:,} | {r['trainable_percent']:.2f} | "
            f"{fmt_bytes(r['optimizer_state_bytes'])} | {fmt_bytes(r['checkpoint_bytes'])} | {spi} | "
            f"{r['peak_rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def check_merged_export(run_dir):
    """Acceptance: the merged plain checkpoint samples the same tokens as base + LoRA."""
    import sample
    from export import export_merged

    merged = run_dir + "-merged"
    export_merged(run_dir, merged)
    texts = []
    for d in (run_dir, merged):
        model, tok = sample.load_model(d)
        texts.append(sample.generate_text(model, tok, "GLOUCESTER:\n", 2, 300, 0.8, 200, seed=1337))
    return texts[0] == texts[1], texts[0][0]


def lr_scan(dtype):
    """Train each SCAN row at each of its learning rates; print the best target val loss of each."""
    for name, rates in SCAN.items():
        best = {}
        for lr in rates:
            out_dir = os.path.join(ROOT, "scan", f"{name}-lr{lr:g}")
            args = [a for a in ROWS[name] if not a.startswith("--learning_rate=")] + [f"--learning_rate={lr:g}"]
            train_run(f"{name} lr={lr:g}", out_dir, args, "configs/peft_finetune.py", dtype)
            best[lr] = min(r.get("val_loss", float("inf")) for r in read_metrics(out_dir))
        print(f"{name}: " + ", ".join(f"lr={lr:g}: {v:.4f}" for lr, v in best.items())
              + f" -> best lr={min(best, key=best.get):g}", flush=True)


def add_lr_scan_flag(p):
    p.add_argument("--lr_scan", action="store_true", help="only the learning-rate scan (after data and base)")


@cli
def main(argv=None):
    # 1. data: data/shakespeare_voices/{base,gloucester,juliet}, prepared by parse_args if missing
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, hold_out="GLOUCESTER,JULIET", extra=add_lr_scan_flag)
    t0 = time.perf_counter()

    # 2. the base, 3. the rows
    train_run("base", BASE, [], "configs/peft_base.py", args.dtype)
    if args.lr_scan:
        return lr_scan(args.dtype)
    from config import read_config_file

    ft_config = read_config_file(os.path.join(REPO, "configs", "peft_finetune.py"))
    results = []
    for name in rows:
        if ROWS[name] is None:
            results.append(base_row(ft_config))
            continue
        out_dir = os.path.join(ROOT, name)
        if name.startswith("qlora") and not os.path.exists(os.path.join(INT4_BASE, "ckpt.pt")):
            subprocess.run([sys.executable, "quantize.py", f"--out_dir={BASE}", f"--to={INT4_BASE}", "--bits=4",
                            "--group_size=32"], cwd=REPO, check=True)
        train_run(name, out_dir, ROWS[name], "configs/peft_finetune.py", args.dtype)
        results.append(row_result(name, out_dir, ft_config))

    # 4. checks: the merged export, and two voices on one base
    checks = {}
    if "lora-r8-qv" in rows:
        same, text = check_merged_export(os.path.join(ROOT, "lora-r8-qv"))
        checks["merged_export_same_tokens"] = same
        checks["gloucester_sample"] = text
        train_run("lora-juliet", os.path.join(ROOT, "lora-juliet"), JULIET, "configs/peft_finetune.py",
                  args.dtype)
        cmd = [sys.executable, "sample.py", "--adapters=out-peft/lora-r8-qv,out-peft/lora-juliet",
               "--start=\n", "--num_samples=1", "--max_new_tokens=300", "--seed=7"]
        checks["adapters_sample"] = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout

    # 5. the table
    md = table(results)
    total = time.perf_counter() - t0
    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump({"rows": results, "checks": checks, "total_s": total, "table": md}, f, indent=1)
    print()
    print(md)
    by = {r["row"]: r for r in results}
    if "full" in by:
        full = by["full"]
        for name in ("lora-r8-qv", "lora-r8-all"):
            if name in by:
                r = by[name]
                print(f"{name}: {r['trainable_percent']:.2f}% of the parameters train; its checkpoint is "
                      f"{100 * r['checkpoint_bytes'] / full['checkpoint_bytes']:.1f}% of full fine-tuning's; "
                      f"best target val {r['target_val_best'] - full['target_val_best']:+.4f} nats vs full's best")
    if checks:
        print(f"merged export samples the same tokens as base + LoRA: {checks['merged_export_same_tokens']}")
        print("two voices from one base (sample.py --adapters):")
        print(checks["adapters_sample"])
    print(f"total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
