"""
The harness every experiment script in this folder shares: run train.py in a process of
its own, with its output in a log file and its peak memory measured by the OS, reuse a
finished run on the next invocation, give every script the same command line, and prepare
tiny shakespeare once (from a prepared data/shakespeare_char where there is one, so a
missing speaker split needs no download).

    from harness import REPO, parse_args, train_run
    args, rows = parse_args(argv, __doc__, ROWS, ROOT)   # --help, --rows, ..., and the data prepared
    train_run("dense", "out-moe/dense", ["--moe_num_experts=0"], "configs/moe_shakespeare.py")

An experiment script is named <technique>_experiment.py: never a core module's name, since
a script run as `python experiments/x.py` puts this folder first on sys.path, and an
experiments/peft.py would then stand in for the repo's peft.py. Its one side effect at
import: the repo root goes on sys.path, so that the scripts can read checkpoints and
evaluate with the core modules (checkpoint, batches, step, ...).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def run_logged(cmd, log_path):
    """Run cmd with its output in log_path; returns (wall seconds, peak RSS in MiB) of that
    process alone (os.wait4 reports the child's own resource usage)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024  # KiB on Linux


def finished(out_dir, cmd):
    """True if out_dir holds a run of cmd that train_run completed (run.json is written last)."""
    done = os.path.exists(os.path.join(out_dir, "run.json")) and os.path.exists(os.path.join(out_dir, "ckpt.pt"))
    return done and read_json(os.path.join(out_dir, "run.json"))["cmd"] == cmd[1:]


def train_run(name, out_dir, args, config, dtype="auto"):
    """python train.py config *args --out_dir=out_dir, unless out_dir already holds this
    finished run; records its wall time and peak RSS in out_dir/run.json. dtype other than
    'auto' is passed on (--dtype=float32 reproduces the README's fp32 figures on a CPU
    where auto picks bf16)."""
    cmd = [sys.executable, "train.py", config, *args, f"--out_dir={out_dir}", "--progress=False"]
    cmd += [f"--dtype={dtype}"] if dtype != "auto" else []
    if finished(out_dir, cmd):
        print(f"{name}: reusing {os.path.relpath(out_dir, REPO)}")
        return
    print(f"{name}: training -> {os.path.relpath(out_dir, REPO)}", flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)  # a half-finished (or other) run starts over
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    wall, rss = run_logged(cmd, out_dir + ".log")
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump({"wall_s": wall, "peak_rss_mib": rss, "cmd": cmd[1:]}, f, indent=1)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(run_dir, dataset, eval_iters, batch_size):
    """Val loss of run_dir's final model on dataset's val split, with train.py's own fixed
    evaluation batches (so it matches the eval rows of metrics.jsonl)."""
    import torch

    from batches import load_dataset
    from checkpoint import read_checkpoint, restore_model
    from step import estimate_loss

    ckpt = read_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model = restore_model(ckpt, "an experiment's evaluation")
    _, val, _ = load_dataset(dataset)
    losses = estimate_loss(model, {"val": val}, batch_size, model.config.block_size, eval_iters, "cpu",
                           torch.autocast("cpu", enabled=False), ckpt["config"]["seed"])
    return losses["val"]


def run_rows(args, rows, specs, root, config, summarize, table, plot=None):
    """The usual body of an experiment: train each row (train_run, finished ones reused),
    summarize(name, out_dir) each, print table(results), draw plot(results, args.plot) and
    write root/results.json. Returns the results."""
    t0 = time.perf_counter()
    for name in rows:
        train_run(name, os.path.join(root, name), specs[name], config, args.dtype)
    results = [summarize(n, os.path.join(root, n)) for n in rows]
    md = table(results)
    print()
    print(md)
    if plot and args.plot:
        plot(results, args.plot)
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump({"rows": results, "table": md, "total_s": time.perf_counter() - t0}, f, indent=1)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")
    return results


def finish(results, md, plot, plot_path, path):
    """An experiment's last steps: print its table, draw plot(results, plot_path) unless
    plot_path is empty, and write {"rows": results, "table": md} to path."""
    print()
    print(md)
    if plot_path:
        plot(results, plot_path)
    with open(path, "w") as f:
        json.dump({"rows": results, "table": md}, f, indent=1)


def run_sweep(out, config, args, jobs=2):
    """python sweep.py config *args --out=out --jobs=jobs, its output shown as it comes. The
    sweep skips the trials out/sweep.jsonl already holds, so a rerun reuses them, and an
    interrupted one continues. Returns {trial id: its sweep.jsonl row} ({} for --lr_range)."""
    cmd = [sys.executable, "sweep.py", config, *args, f"--out={out}", f"--jobs={jobs}"]
    print(f"sweep -> {os.path.relpath(out, REPO)}", flush=True)
    r = subprocess.run(cmd, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}")
    return read_sweep(out) if os.path.exists(os.path.join(out, "sweep.jsonl")) else {}


def read_sweep(out):
    """{trial id: row} from out/sweep.jsonl; a trial that did not end well has val_loss inf."""
    rows = {}
    with open(os.path.join(out, "sweep.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                r["val_loss"] = r["val_loss"] if r["status"] == "ok" and r["val_loss"] is not None else float("inf")
                rows[r["trial"]] = r
    return rows


def spikes(losses, window=10, jump=0.3):
    """Loss spikes in a run's training losses (one per step): steps whose loss is more than
    `jump` nats above the median of the `window` steps before them (a batch's own noise here
    is ~0.05 nats), counted once per excursion."""
    import statistics

    count, inside = 0, False
    for i in range(window, len(losses)):
        high = not losses[i] <= statistics.median(losses[i - window:i]) + jump  # a NaN counts
        count += high and not inside
        inside = high
    return count


def val_at_time(evals, t):
    """Val loss at wall time t, from eval rows ({"time", "val_loss"}): linear between the
    two evals around it; the last value past the end; None before the first eval."""
    for a, b in zip(evals, evals[1:]):
        if a["time"] <= t <= b["time"]:
            w = (t - a["time"]) / (b["time"] - a["time"])
            return a["val_loss"] + w * (b["val_loss"] - a["val_loss"])
    return evals[-1]["val_loss"] if t >= evals[-1]["time"] else None


def describe(doc):
    """A script's docstring's first paragraph, as one line: its --help description (the
    first line alone stops mid-sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def parse_args(argv, doc, rows, root, plot=None, groups=None, hold_out=None, extra=None):
    """The command line every experiment script shares: --input, --rows, --fresh (delete
    root first), --dtype and --plot; extra(parser) adds a script's own flags. groups names
    lists of rows that --rows may use as one name ("default", if there, is what --rows
    defaults to; otherwise every row). Prepares the data if it is missing (prepare_data,
    with hold_out). Returns (args, the chosen row names)."""
    import argparse

    groups = groups or {}
    p = argparse.ArgumentParser(description=describe(doc))
    p.add_argument("--input", default=None,
                   help="tiny shakespeare's text, read only if the data is not prepared; without it: "
                        "data/shakespeare_char/input.txt, else a prepared data/shakespeare_char, else a download")
    names = ", ".join(list(rows) + [f"{g} (= {','.join(r)})" for g, r in groups.items()])
    p.add_argument("--rows", default="default" if "default" in groups else ",".join(rows),
                   help=f"comma-separated {'rows or groups' if groups else 'rows'} from: {names}")
    p.add_argument("--fresh", action="store_true", help=f"delete {os.path.relpath(root, REPO)}/ first")
    add_dtype_argument(p)
    if plot:
        p.add_argument("--plot", default=plot, help="where the PNG goes (needs matplotlib)")
    if extra:
        extra(p)
    args = p.parse_args(argv)
    chosen = []
    for r in (r for r in args.rows.split(",") if r):
        chosen += [x for x in groups.get(r, [r]) if x not in chosen]
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        p.error(f"unknown rows {', '.join(unknown)}; choose from {names}")
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    prepare_data(args.input, hold_out)
    return args, chosen


# ----------------------------------------------------------------------------------------
# the data: tiny shakespeare, prepared once


SHAKESPEARE = os.path.join(REPO, "data", "shakespeare_char")


def prepare_data(input_path, hold_out=None, bpe_out=None, bpe_vocab=4096):
    """Prepare tiny shakespeare with data/shakespeare_char/prepare.py, unless it is prepared:
    data/shakespeare_char, or with hold_out ("GLOUCESTER,JULIET") the speaker split
    data/shakespeare_voices/{base, gloucester, juliet}, or with bpe_out (a folder) a BPE
    tokenization of bpe_vocab tokens there. The text comes from, in order:
    input_path (--input); input.txt beside prepare.py; a prepared data/shakespeare_char,
    decoded; a download. When prepare.py cannot (offline, no text), its one-line message
    becomes a UserError."""
    from errors import UserError

    names = [n.strip() for n in hold_out.split(",") if n.strip()] if hold_out else []
    voices = os.path.join(REPO, "data", "shakespeare_voices")
    # the folders prepare.py writes, named as it names them
    folders = [os.path.join(voices, n.lower().replace(" ", "_")) for n in ["base"] + names] if hold_out else [SHAKESPEARE]
    folders = [bpe_out] if bpe_out else folders
    if all(os.path.exists(os.path.join(d, "meta.json")) for d in folders):
        return
    cmd = [sys.executable, "data/shakespeare_char/prepare.py"] + (["--hold_out", hold_out] if hold_out else [])
    cmd += ["--tokenizer", "bpe", "--vocab_size", str(bpe_vocab), "--out_dir", bpe_out] if bpe_out else []
    with tempfile.TemporaryDirectory() as tmp:
        text = input_path or prepared_text(tmp)
        cmd += ["--input", text] if text else []
        r = subprocess.run(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    if r.returncode == 2:  # prepare.py's "error: <what is wrong and what to do>", a user's problem
        lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        msg = lines[-1][len("error: "):] if lines else r.stderr.strip()
        raise UserError(f"preparing the data (data/shakespeare_char/prepare.py): {msg}")
    if r.returncode != 0:  # a bug: keep everything it said
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")


def prepared_text(folder):
    """Tiny shakespeare's text, rebuilt from a prepared character-level data/shakespeare_char
    (its train.bin and val.bin hold every character of the text, in order) and written to
    folder/input.txt; that path, or None where there is nothing to rebuild from, or no need:
    prepare.py reads an input.txt beside it by itself."""
    meta_path = os.path.join(SHAKESPEARE, "meta.json")
    if os.path.exists(os.path.join(SHAKESPEARE, "input.txt")) or not os.path.exists(meta_path):
        return None
    meta = read_json(meta_path)
    if meta.get("tokenizer") != "char":
        return None
    import numpy as np

    from tokenizer import tokenizer_from_meta

    ids = np.concatenate([np.fromfile(os.path.join(SHAKESPEARE, f"{split}.bin"), dtype=np.uint16)
                          for split in ("train", "val")])
    print(f"tiny shakespeare's text: rebuilt from {os.path.relpath(SHAKESPEARE, REPO)} ({len(ids):,} characters)")
    path = os.path.join(folder, "input.txt")  # the file name prepare.py records as the source
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(tokenizer_from_meta(meta).decode(ids.tolist()))
    return path


def add_dtype_argument(p):
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="train.py's dtype for every run (the README's tables: float32)")


def pyplot():
    """matplotlib.pyplot drawing to files, or None (and a message) where matplotlib, an
    optional dependency, is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt
