"""
The harness every experiment script in this folder shares: run train.py in a process of
its own, with its output in a log file and its peak memory measured by the OS, reuse a
finished run on the next invocation, and give every script the same command line.

    from harness import REPO, parse_args, train_run
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


def parse_args(argv, doc, rows, root, plot=None, groups=None):
    """The command line every experiment script shares: --input, --rows, --fresh (delete
    root first), --dtype and --plot. groups names lists of rows that --rows may use as one name
    ("default", if there, is what --rows defaults to; otherwise every row). Prepares
    data/shakespeare_char from --input if it is missing. Returns (args, the chosen row names)."""
    import argparse

    groups = groups or {}
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--input", default=None, help="tiny shakespeare's input.txt, if data/shakespeare_char is not prepared")
    names = ", ".join(list(rows) + [f"{g} (= {','.join(r)})" for g, r in groups.items()])
    p.add_argument("--rows", default="default" if "default" in groups else ",".join(rows),
                   help=f"comma-separated rows or groups from: {names}")
    p.add_argument("--fresh", action="store_true", help=f"delete {os.path.relpath(root, REPO)}/ first")
    add_dtype_argument(p)
    if plot:
        p.add_argument("--plot", default=plot, help="where the PNG goes (needs matplotlib)")
    args = p.parse_args(argv)
    chosen = []
    for r in (r for r in args.rows.split(",") if r):
        chosen += [x for x in groups.get(r, [r]) if x not in chosen]
    if any(r not in rows for r in chosen):
        p.error(f"unknown rows; choose from {names}")
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    if not os.path.exists(os.path.join(REPO, "data", "shakespeare_char", "meta.json")):
        cmd = [sys.executable, "data/shakespeare_char/prepare.py"] + (["--input", args.input] if args.input else [])
        subprocess.run(cmd, cwd=REPO, check=True)
    return args, chosen


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
