"""
Helpers shared by the experiment scripts (peft_experiment.py, moe_experiment.py): run
train.py in a process of its own, with its output in a log file, its peak memory measured
by the OS, and a finished run reused on the next invocation. Does no work at import.
"""

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.abspath(__file__))


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


def finished(out_dir):
    """True if out_dir holds a run that train_run completed (run.json is written last)."""
    return os.path.exists(os.path.join(out_dir, "run.json")) and os.path.exists(os.path.join(out_dir, "ckpt.pt"))


def train_run(name, out_dir, args, config):
    """python train.py config *args --out_dir=out_dir, unless out_dir already holds the
    finished run; records its wall time and peak RSS in out_dir/run.json."""
    if finished(out_dir):
        print(f"{name}: reusing {os.path.relpath(out_dir, REPO)}")
        return
    print(f"{name}: training -> {os.path.relpath(out_dir, REPO)}", flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)  # a half-finished run starts over
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    cmd = [sys.executable, "train.py", config, *args, f"--out_dir={out_dir}", "--progress=False"]
    wall, rss = run_logged(cmd, out_dir + ".log")
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump({"wall_s": wall, "peak_rss_mib": rss, "cmd": cmd[1:]}, f, indent=1)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
