"""
What quantization and structured pruning buy in bytes and cost in loss, on nanoGPT's CPU
recipe (configs/shakespeare_char_cpu.py: 4 layers, 128 wide, 2,000 steps, fp32). The base
is trained once; then, each from it: bf16 weights; int8 and int4 round-to-nearest (group 32
and 128); int4 GPTQ (group 32 and 128); MLP neurons and attention heads pruned to 75% and
50% by activation importance (Minitron) and by weight magnitude, each without recovery, with
a hard-label recovery run and with a KD recovery run (the base as teacher), against the same
small shape trained from scratch on the same tokens; and the 50% KD-recovered model at int4.
Quantization-aware training: the base trained 400 more steps toward int4 (qat_bits=4), alone
and with KD from the base (LLM-QAT's recipe), then quantized; its control, the same 400 steps
in fp32 (fp32+400) and that model at int4 round-to-nearest.

    python experiments/compress_experiment.py                 # ~15 min on a 2-core CPU
    python experiments/compress_experiment.py --rows quant    # the quantization rows only (~3 min)

Columns: bytes of the weights on disk (a checkpoint of the weights alone: what ships),
parameters, val loss on 200 fixed batches and its increase over the fp32 base, generation
tokens/s (batch 1, 300 tokens, the KV cache, measured side by side in this process), and the
bytes the weights take in memory. The plot (docs/compress.png): val loss against bytes on
disk, the Pareto front drawn through the rows no other row beats in both. Runs: out-compress/.
QLoRA (LoRA on the int4 base) is measured on the personalization task by experiments/peft_experiment.py
(rows qlora-r8-qv, qlora-r8-all).
"""

import os
import subprocess
import sys
import time

from harness import REPO, finish, parse_args, pyplot, train_run

import torch  # noqa: E402  (after harness put the repo root on sys.path)

from checkpoint import read_checkpoint, restore_model, save_checkpoint  # noqa: E402
from errors import cli  # noqa: E402
from quant import QuantLinear  # noqa: E402

ROOT = os.path.join(REPO, "out-compress")
CONFIG = "configs/shakespeare_char_cpu.py"
BASE = os.path.join(ROOT, "base")
RECOVER_STEPS = 400  # recovery and from-scratch runs: 400 steps of 12 x 64 tokens
# the recovery runs' settings (the recipe's, but the architecture, which comes from the pruned model)
RECOVER = ["--dataset=shakespeare_char", "--batch_size=12", "--learning_rate=1e-3", "--min_lr=1e-4", "--beta2=0.99",
           f"--max_iters={RECOVER_STEPS}", "--warmup_iters=40", f"--lr_decay_iters={RECOVER_STEPS}",
           f"--eval_interval={RECOVER_STEPS}", "--eval_iters=20", "--log_interval=50"]
QUANT = {"bf16": None, "int8": (8, 0, "rtn"), "int4-g32": (4, 32, "rtn"), "int4-g128": (4, 128, "rtn"),
         "int4-gptq-g32": (4, 32, "gptq"), "int4-gptq-g128": (4, 128, "gptq")}
PRUNE = {f"prune{k}-{imp}-{rec}": (k, imp, rec) for k in (75, 50) for imp in ("activation", "magnitude")
         for rec in ("none", "hard", "kd")}
# quantization-aware training: the base trained RECOVER_STEPS more steps toward int4 (qat_bits), alone
# or with KD from the base (LLM-QAT's recipe), then quantized; the control: the same steps in fp32
QAT = {"fp32+400": [], "fp32+400-int4": (4, 32, "rtn"), "qat4": [], "qat4-kd": []}
ROWS = {"fp32": [], **{r: [] for r in QUANT}, **{r: [] for r in QAT}, **{r: [] for r in PRUNE},
        "scratch75": [], "scratch50": [], "prune50-kd-int4": []}
GROUPS = {"quant": ["fp32"] + list(QUANT) + list(QAT), "prune": ["fp32"] + list(PRUNE) + ["scratch75", "scratch50"],
          "default": list(ROWS)}


def sh(args, log):
    """python *args in the repo, its output in log; stops the experiment if it fails."""
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"failed: python {' '.join(args)} (see {log})")


def folder(row):
    return os.path.join(ROOT, row)


def build(row, dtype):
    """Make the row's run folder (a ckpt.pt) unless it is there."""
    out = folder(row)
    if os.path.exists(os.path.join(out, "ckpt.pt")):
        return out
    os.makedirs(ROOT, exist_ok=True)
    if row in QUANT and QUANT[row]:
        bits, group, method = QUANT[row]
        sh(["quantize.py", f"--out_dir={BASE}", f"--to={out}", f"--bits={bits}", f"--group_size={group}",
            f"--method={method}"], out + ".log")
    elif row == "bf16":  # the weights rounded to bf16 and stored so: half of fp32's bytes
        ckpt = read_checkpoint(os.path.join(BASE, "ckpt.pt"))
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        os.makedirs(out)
        save_checkpoint({**weights_only(ckpt), "model": state}, os.path.join(out, "ckpt.pt"))
    elif row in PRUNE:
        keep, importance, recovery = PRUNE[row]
        pruned = folder(f"prune{keep}-{importance}-none")
        if recovery == "none":
            sh(["prune.py", f"--out_dir={BASE}", f"--to={out}", f"--keep={keep / 100}", "--what=mlp,heads",
                f"--importance={importance}"], out + ".log")
        else:
            build(f"prune{keep}-{importance}-none", dtype)
            kd = [f"--teacher={BASE}", "--kd_alpha=0.5", "--kd_temperature=1.0"] if recovery == "kd" else []
            train(out, [f"--init_from={pruned}", *RECOVER, *kd], dtype)
    elif row in QAT:  # the base trained RECOVER_STEPS more steps, in fp32 or toward int4 (and KD), then int4
        trained = folder("fp32+400") if row == "fp32+400-int4" else (out if row == "fp32+400" else out + "-train")
        if not os.path.exists(os.path.join(trained, "ckpt.pt")):
            qat = ["--qat_bits=4", "--qat_group_size=32"] if row.startswith("qat") else []
            kd = [f"--teacher={BASE}", "--kd_alpha=0.5"] if row.endswith("-kd") else []
            train(trained, [f"--init_from={BASE}", *RECOVER, *qat, *kd], dtype)
        if trained != out:  # round to nearest: what QAT trained toward, exactly
            sh(["quantize.py", f"--out_dir={trained}", f"--to={out}", "--bits=4", "--group_size=32"], out + ".log")
    elif row.startswith("scratch"):  # the pruned shape from scratch, on the recovery's tokens
        shape = read_checkpoint(os.path.join(build(f"prune{row[7:]}-activation-none", dtype), "ckpt.pt"))["model_config"]
        arch = [f"--{k}={shape[k]}" for k in ("n_layer", "n_head", "n_embd", "mlp_hidden", "head_dim", "block_size", "bias")]
        train(out, [*RECOVER, *arch], dtype)
    elif row == "prune50-kd-int4":
        src = build("prune50-activation-kd", dtype)
        sh(["quantize.py", f"--out_dir={src}", f"--to={out}", "--bits=4", "--group_size=32", "--method=gptq"],
           out + ".log")
    return out


def train(out, args, dtype):
    """python train.py *args into out (no config file: a pruned model's shape is its own)."""
    sh(["train.py", *args, f"--out_dir={out}", "--progress=False", f"--dtype={dtype}"], out + ".log")


def weights_only(ckpt):
    return {k: ckpt[k] for k in ("model", "model_config", "config", "meta", "iter_num", "quant") if k in ckpt}


def disk_bytes(out):
    """The weights alone on disk: a training checkpoint's optimizer state left out."""
    ckpt = read_checkpoint(os.path.join(out, "ckpt.pt"))
    path = os.path.join(ROOT, "size.pt")
    save_checkpoint(weights_only(ckpt), path)
    return os.path.getsize(path)


@torch.no_grad()
def measure(out, dtype):
    """(parameters, val loss, generation tokens/s, bytes of the weights in memory) of a run folder."""
    log = out + "-eval.log"
    sh(["train.py", f"--init_from={out}", "--eval_only=True", f"--out_dir={out}-eval", "--eval_iters=200",
        "--progress=False", f"--dtype={dtype}"], log)
    val = parse_val(log)  # an eval_only run prints its row and writes no file
    model = restore_model(read_checkpoint(os.path.join(out, "ckpt.pt")), "compress_experiment", dropout=0.0).eval()
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
    memory = sum(t.numel() * t.element_size() for t in tensors)
    # the weights a quantized layer stands for count as parameters, its scales do not
    params = sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    idx = torch.zeros(1, 1, dtype=torch.long)
    model.generate(idx, 20, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    model.generate(idx, 300, generator=torch.Generator().manual_seed(0))
    return params, val, 300 / (time.perf_counter() - t0), memory


def parse_val(log):
    with open(log) as f:
        return float([line for line in f if "val loss" in line][-1].split("val loss")[1])


def summarize(rows, dtype):
    results = {}
    for row in rows:
        out = BASE if row == "fp32" else build(row, dtype)
        params, val, tok_s, memory = measure(out, dtype)
        results[row] = {"bytes": disk_bytes(out), "params": params, "val": val, "tok_s": tok_s, "memory": memory}
        print(f"{row}: {results[row]}", flush=True)
    return results


def kernel_table():
    """One Linear's forward, microseconds (median of 50), for a few rows (generation) and a
    batch: fp32, torch's int8 weight kernel with fp32 and with bf16 activations, and int4
    dequantized on the fly. 768 x 3072 is GPT-2 small's MLP, 128 x 512 this model's."""
    import statistics

    import torch.nn.functional as F

    from quant import dequantize, pack_int4, quantize_rtn, unpack_int4

    lines = ["| layer (in x out) | rows | fp32 | int8 kernel, fp32 act. | int8 kernel, bf16 act. | int4 dequantized |",
             "|---|---:|---:|---:|---:|---:|"]
    g = torch.Generator().manual_seed(0)
    for k, n in ((128, 512), (768, 3072)):
        w = torch.randn(n, k, generator=g)
        c8, s8 = quantize_rtn(w, 8, 0)
        c4, s4 = quantize_rtn(w, 4, 32)
        p4, s4h, s8f = pack_int4(c4), s4.half(), s8.reshape(-1)
        for rows in (1, 768):
            x = torch.randn(rows, k, generator=g)
            fns = [lambda: F.linear(x, w),
                   lambda: torch._weight_int8pack_mm(x, c8, s8f),
                   lambda: torch._weight_int8pack_mm(x.bfloat16(), c8, s8f.bfloat16()).float(),
                   lambda: F.linear(x, dequantize(unpack_int4(p4), s4h, 32))]
            times = []
            for fn in fns:
                for _ in range(3):
                    fn()
                runs = []
                for _ in range(50 if rows == 1 else 10):
                    t0 = time.perf_counter()
                    fn()
                    runs.append(1e6 * (time.perf_counter() - t0))
                times.append(statistics.median(runs))
            lines.append(f"| {k} x {n} | {rows} | " + " | ".join(f"{t:,.0f} us ({times[0] / t:.2f}x)" for t in times) + " |")
    return "\n".join(lines)


def table(results):
    base = results["fp32"]
    lines = ["| row | bytes on disk | % of fp32 | parameters | val loss | vs fp32 | generation tok/s | weights in memory |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row, r in results.items():
        lines.append(f"| {row} | {r['bytes']:,} | {100 * r['bytes'] / base['bytes']:.1f}% | {r['params']:,} | "
                     f"{r['val']:.4f} | {r['val'] - base['val']:+.4f} | {r['tok_s']:,.0f} | "
                     f"{r['memory'] / 2**20:.2f} MiB |")
    return "\n".join(lines)


def plot(results, path):
    """Val loss against MiB on disk, the Pareto front labelled; rows past the top of the
    axis (unrecovered pruning, scratch) are listed instead of drawn."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4.8))
    top = results["fp32"]["val"] + 0.05
    pts = sorted((r["bytes"] / 2**20, r["val"], name) for name, r in results.items())
    front, best = [], float("inf")
    for x, y, name in pts:  # the Pareto front: no row is both smaller and better
        if y < best:
            front.append((x, y, name))
            best = y
    for x, y, name in pts:
        if y <= top:
            pruned = "prune" in name or "scratch" in name
            ax.scatter(x, y, s=16, color="C1" if pruned else "C0", zorder=3)
    ax.plot([x for x, _, _ in front], [y for _, y, _ in front], color="grey", lw=0.8, ls="--", label="Pareto front")
    for x, y, name in front:
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    off = [f"{name} {y:.2f}" for _, y, name in pts if y > top]
    ax.axhline(results["fp32"]["val"], color="C0", lw=0.5, ls=":", label="fp32 base")
    ax.set(xscale="log", xlabel="MiB on disk (weights)", ylabel="val loss", ylim=(None, top),
           title="compressing the Shakespeare model (blue: quantized, orange: pruned)")
    ax.text(0.99, 0.98, "off the top:\n" + "\n".join(off), transform=ax.transAxes, fontsize=6, va="top", ha="right")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {os.path.relpath(path, REPO)}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "compress.png"),
                            groups=GROUPS)
    dtype = args.dtype if args.dtype != "auto" else "float32"  # the table is fp32
    train_run("base", BASE, ["--eval_iters=20"], CONFIG, dtype)
    rows = ["fp32"] + [r for r in rows if r != "fp32"]
    results = summarize(rows, dtype)
    with torch.no_grad():
        kernels = kernel_table()
    finish(results, table(results) + "\n\n" + kernels, plot, args.plot, os.path.join(ROOT, "results.json"))


if __name__ == "__main__":
    main()
