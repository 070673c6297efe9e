"""
Hyperparameter search over train.py runs (a grid, random samples or both, each trial a
train.py process of its own), and the LR range test, which finds a learning rate to start from.

    python sweep.py configs/quickstart.py --grid learning_rate=1e-3,3e-3,1e-2 --out sweeps/lr
    python sweep.py configs/quickstart.py --random learning_rate=loguniform:1e-4:1e-2 \\
        --random weight_decay=choice:0,0.1 --trials 8 --jobs 2 --out sweeps/rand --max_iters=300
    python sweep.py --report sweeps/rand           # the table again; report.md, best_config.py, sweep.png
    python train.py sweeps/rand/best_config.py     # the best trial, as a config file
    python sweep.py configs/quickstart.py --lr_range --out sweeps/range [--lr_min=1e-4 --lr_max=1 --lr_steps=N]

--grid KEY=v1,v2,... and --random KEY=DIST repeat; DIST is uniform:a:b, loguniform:a:b (0 < a),
int:a:b (both ends included) or choice:x,y,z. --trials N random samples (required with --random;
a grid alone runs each point once). --jobs J trials at once (default 1), each with 1/J of the
CPUs as its OMP/MKL threads. --sample_seed S (default 0) seeds the random samples. Any other
--key=value is fixed for every trial, --seed=N (train.py's seed) included (train.py runs in the
repo root: relative paths in values are read from there).

The trials: the grid's product (first key slowest) times the N samples, sample i drawn from
random.Random("S/i") whatever the grid. Trial tNNN runs `train.py CONFIG.py <fixed> <params>
--out_dir=OUT/trials/tNNN`, then appends a line to OUT/sweep.jsonl (result_row): status "ok",
"diverged" (a NaN/inf loss) or "failed" (any other error; the sweep goes on). A rerun skips the
recorded trials (another spec in the same OUT is refused): Ctrl-C, SIGTERM or even SIGKILL of the
sweep (its trials then get SIGTERM from the kernel, on Linux) loses only the trials in flight. The
trials hold OUT/.lock, so a rerun never races one still running. The report depends only on
sweep.jsonl less its times: a resumed sweep reports what an uninterrupted one does. Successive
halving (stopping poor trials early) is not implemented.

--lr_range: the LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3), one run whose rate grows geometrically from --lr_min to --lr_max over
--lr_steps steps (default: twice the config's max_iters), usually until it diverges. The
suggestion is fastai's valley rule on the curve's 100 block means; the smoothed minimum / 10
and the steepest descent are printed beside it (lr_range.py). Why twice a trial: the test must
reach the stage of training that decides a trial's loss; 200 steps never leave the plateau
that every run crosses first (README, "Hyperparameters", experiment 5). weight_decay is the
config's unless lr_max * weight_decay >= 1 (which train.py refuses): then 0.
"""

import argparse
import fcntl
import itertools
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from config import FIELD_TYPES, TrainConfig, check_value, load_config, read_config_file
from errors import UserError, cli
from lr_range import plot_range, suggest_lr

REPO = os.path.dirname(os.path.abspath(__file__))  # train.py runs here
NOT_SWEPT = ("out_dir", "init_from")  # each trial gets its own folder and trains from what CONFIG.py says


# ----------------------------------------------------------------------------------------
# the command line


class Parser(argparse.ArgumentParser):
    def error(self, message):  # "argument --trials: invalid int value: 'x'": one line, exit code 2
        raise UserError(message)


def parse_sweep_args(argv):
    """argv -> {config, grid {key: [values]}, random {key: dist}, trials, jobs, out, sample_seed,
    fixed {key: value}, report, lr_range, lr_min, lr_max, lr_steps}."""
    p = Parser(add_help=False, allow_abbrev=False)  # no abbreviations: --lr=... is not --lr_min
    p.add_argument("config", nargs="?")
    p.add_argument("--grid", action="append", default=[])
    p.add_argument("--random", action="append", default=[])
    p.add_argument("--lr_range", action="store_true")
    for flag, tp, default in (("--trials", int, None), ("--jobs", int, 1), ("--sample_seed", int, 0),
                              ("--out", str, None),
                              ("--report", str, None), ("--lr_min", float, 1e-4), ("--lr_max", float, 1.0),
                              ("--lr_steps", int, None)):  # None: 2 x max_iters
        p.add_argument(flag, type=tp, default=default)
    ns, rest = p.parse_known_args(argv)
    a = {**vars(ns), "grid": {}, "random": {}, "fixed": {}}
    for flag, text in [("grid", t) for t in ns.grid] + [("random", t) for t in ns.random]:
        key, _, values = text.partition("=")
        swept = "grid" if key in a["grid"] else "random" if key in a["random"] else None
        try:
            if not key or not values:
                raise UserError(f"write KEY={'v1,v2,...' if flag == 'grid' else 'DIST'}")
            if key not in FIELD_TYPES:
                check_value(key, None)  # raises "unknown config key 'x' (did you mean 'y'?)"
            if key in NOT_SWEPT or swept:
                raise UserError(f"{key} is already swept by --{swept}; give each key once" if swept else
                                "the sweep sets out_dir and takes init_from from CONFIG.py; sweep other keys")
            a[flag][key] = ([check_value(key, v, from_cli=True) for v in values.split(",")] if flag == "grid"
                            else parse_dist(key, values))
        except UserError as e:
            raise UserError(f"--{flag} {text}: {e}") from None
    for arg in rest:  # what argparse does not know: train.py settings, fixed for every trial
        key, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or not eq:
            raise UserError(f"'{arg}': give one CONFIG.py, and train.py settings as --key=value (see --help)")
        if key in NOT_SWEPT:
            raise UserError(f"--{key}: the sweep gives each trial its out_dir and takes init_from from CONFIG.py")
        if key in a["grid"] or key in a["random"]:
            raise UserError(f"{arg} fixes {key}, which --{'grid' if key in a['grid'] else 'random'} sweeps; "
                            f"drop one of them")
        a["fixed"][key] = check_value(key, value, from_cli=True)
    check_combination(a, [arg.partition("=")[0] for arg in argv if arg.startswith("--") and arg not in rest])
    return a


def parse_dist(key, text):
    """'loguniform:1e-4:1e-2' -> ('loguniform', 0.0001, 0.01); 'choice:a,b' -> ('choice', [a, b]);
    bounds and options typed and checked as values of key."""
    kind, _, rest = text.partition(":")
    if kind == "choice" and rest:
        return (kind, [check_value(key, v, from_cli=True) for v in rest.split(",")])
    if kind not in ("uniform", "loguniform", "int"):
        raise UserError(f"unknown distribution '{text}'; use uniform:a:b, loguniform:a:b, int:a:b or choice:x,y,z")
    tp = int if kind == "int" else float
    try:
        lo, hi = (tp(b) for b in rest.split(":"))
    except ValueError:
        raise UserError(f"write {kind}:a:b with {'integers' if tp is int else 'numbers'} a <= b") from None
    if kind == "loguniform" and not lo > 0:
        raise UserError(f"loguniform draws log(x) uniformly: it needs 0 < a (got a={lo:g})")
    if not lo <= hi:
        raise UserError(f"a={lo:g} is above b={hi:g}; write {kind}:a:b with a <= b")
    return (kind, check_value(key, lo), check_value(key, hi))


def check_combination(a, given):
    """What each flag cannot check alone; `given`: the sweep's own flags on the command line."""
    if a["report"] is not None:
        others = [f for f in given if f != "--report"] + [a["config"] or ""] + [f"--{k}" for k in a["fixed"]]
        if any(others):
            raise UserError(f"--report OUT takes no other arguments (got {' '.join(o for o in others if o)})")
    elif a["config"] is None:
        raise UserError("give CONFIG.py, train.py's config file: python sweep.py CONFIG.py --grid ... --out DIR")
    elif a["out"] is None:
        raise UserError("--out DIR is required: the folder for the trials, sweep.jsonl and the report")
    elif a["jobs"] < 1:
        raise UserError(f"--jobs {a['jobs']}: must be >= 1")
    elif a["lr_range"]:
        bad = [f for f in given if f in ("--grid", "--random", "--trials", "--sample_seed")]
        if bad:
            raise UserError(f"{bad[0]}: --lr_range runs one range test, not a sweep; drop {bad[0]}")
        if not 0 < a["lr_min"] < a["lr_max"]:
            raise UserError(f"--lr_min={a['lr_min']:g} --lr_max={a['lr_max']:g}: need 0 < lr_min < lr_max")
        if a["lr_steps"] is not None and a["lr_steps"] < 3:
            raise UserError(f"--lr_steps={a['lr_steps']}: the test needs at least 3 steps (default: 2 x max_iters)")
    elif any(f.startswith("--lr_") for f in given):
        raise UserError(f"{next(f for f in given if f.startswith('--lr_'))} is an option of --lr_range; add it")
    elif not a["grid"] and not a["random"]:
        raise UserError("nothing to sweep: give --grid KEY=v1,v2,... and/or --random KEY=DIST (or --lr_range)")
    elif a["random"] and a["trials"] is None:
        raise UserError("--random needs --trials N: how many random samples to draw")
    elif a["trials"] is not None and not a["random"]:
        raise UserError(f"--trials {a['trials']} counts random samples, but there is no --random "
                        f"(a grid runs each point once)")
    elif a["trials"] is not None and a["trials"] < 1:
        raise UserError(f"--trials {a['trials']}: must be >= 1")


# ----------------------------------------------------------------------------------------
# the trials and their files


def sample(dist_spec, rng):
    """One draw of a parse_dist spec, (kind, a, b) or ('choice', options), from rng."""
    kind, *args = dist_spec
    if kind == "choice":
        return rng.choice(args[0])
    if kind == "loguniform":  # uniform in log: each decade equally likely
        return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    return rng.randint(*args) if kind == "int" else rng.uniform(*args)  # randint includes both ends


def expand_trials(grid, random_specs, trials, seed):
    """[{"id": "t000", "params": {...}}, ...]: each grid point (first key slowest) with each of
    `trials` random samples. Sample i has a Random of its own, seeded by (seed, i), so a longer
    grid or more trials leave the samples already drawn as they were."""
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    samples = [{}]
    if random_specs:
        rngs = [random.Random(f"{seed}/{i}") for i in range(trials)]  # a str seed: sha512, the same in every process
        samples = [{k: check_value(k, sample(d, rng)) for k, d in random_specs.items()} for rng in rngs]
    return [{"id": f"t{n:03d}", "params": {**p, **s}} for n, (p, s) in enumerate(itertools.product(points, samples))]


def as_args(settings):
    return [f"--{k}={v}" for k, v in settings.items()]  # str(float) round-trips through train.py's literal_eval


def train_cmd(config, settings, out_dir, name):
    """train.py's command line (the settings after the config file win), checked now: a value
    train.py would refuse (learning_rate * weight_decay >= 1 at one grid point, say) stops the
    sweep before its first trial, not hours into it."""
    args = [config, *as_args(settings), f"--out_dir={out_dir}", "--progress=False"]
    try:
        load_config(args)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
    return [sys.executable, "train.py", *args]


def take_lock(out):
    """An exclusive flock on OUT/.lock; its fd is passed to each trial, so a SIGKILLed sweep's
    lock lasts until its last trial ends."""
    os.makedirs(out, exist_ok=True)
    fd = os.open(os.path.join(out, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"a sweep is still running in {out} (its trials hold {out}/.lock); wait or kill them") from None
    return fd


def read_jsonl(path):
    """(the rows of a JSON-lines file, whether its last line is torn: a kill cut its write short)."""
    if not os.path.exists(path):
        return [], False
    with open(path, errors="replace") as f:
        lines = f.read().split("\n")
    rows, torn = [], lines[-1] != ""  # a whole file ends with "\n": its last piece is empty
    for n, line in enumerate(lines[:-1], 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n < len(lines) - 1:
                raise UserError(f"{path}, line {n}: not a JSON row; fix or delete it") from None
            torn = True
    return rows, torn


def read_results(out):
    """The rows of OUT/sweep.jsonl, one per trial (the lock keeps two sweeps from writing it), a
    torn last line ignored."""
    return read_jsonl(os.path.join(out, "sweep.jsonl"))[0]


def result_row(trial, folder, code, seconds):
    """The sweep.jsonl row of a trial whose train.py ended with exit code `code`: trial, params,
    status, val_loss (the final eval's; null unless ok), best_val_loss (over the evals), iters (the
    last logged), seconds, reason (unless ok: the log's last error line, or its last line)."""
    rows = read_jsonl(os.path.join(folder, "metrics.jsonl"))[0]
    with open(os.path.join(folder, "train.log"), errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    evals = [r["val_loss"] for r in rows if "val_loss" in r]
    errors = [line for line in lines if line.startswith("error:")]
    if code == 0:  # a non-finite final val loss diverged too; no eval at all is a failure
        status = "ok" if evals and math.isfinite(evals[-1]) else "diverged" if evals else "failed"
    else:
        # train.py's NonFiniteLossError: "error: loss is nan at iter N: ..."
        status = "diverged" if errors and re.search(r"loss is -?(nan|inf)", errors[-1]) else "failed"
    reason = None if status == "ok" else ((f"killed by signal {-code}: " if code < 0 else "")
                                          + (errors or lines or [f"exit code {code}"])[-1])
    return {"trial": trial["id"], "params": trial["params"], "status": status,
            "val_loss": evals[-1] if status == "ok" else None,
            "best_val_loss": min((v for v in evals if math.isfinite(v)), default=None),
            "iters": max((r["iter"] for r in rows), default=None), "seconds": round(seconds, 2), "reason": reason}


def child_env(jobs):
    """train.py's environment when `jobs` of them run at once: a share of the CPUs this process may
    use as its threads; unbuffered, so that its stdout and stderr reach train.log in order."""
    threads = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}


def die_with_the_sweep():
    """In each trial, before train.py starts (Linux): the kernel sends it SIGTERM when the sweep
    dies, even by SIGKILL, so no orphaned trial runs on (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def write_atomic(text, path):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # a kill leaves the old file or the new one, never half of one


# ----------------------------------------------------------------------------------------
# running: `jobs` train.py processes at a time, a sweep.jsonl line as each ends


def run_trials(out, todo, jobs, lock_fd):
    """Run the trials ({id, params, cmd}); None when all ended, or the signal (SIGINT, SIGTERM)
    that stopped them: the trials then running are terminated and recorded nowhere."""
    env = child_env(jobs)
    signums, queue, running = [], list(todo), {}  # running: {process: (trial, start time)}
    # a signal is noted and the loop stops at its next turn (an exception could strike between
    # starting a trial and adding it to `running`)
    previous = {s: signal.signal(s, lambda n, frame: signums.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (queue or running) and not signums:
            while queue and len(running) < jobs:
                trial = queue.pop(0)
                folder = os.path.join(out, "trials", trial["id"])
                shutil.rmtree(folder, ignore_errors=True)  # what an interrupted run of it left: start clean
                os.makedirs(folder)
                with open(os.path.join(folder, "train.log"), "w") as log:
                    # a session of its own: Ctrl-C reaches the sweep alone, which then stops its trials
                    proc = subprocess.Popen(trial["cmd"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            pass_fds=(lock_fd,), start_new_session=True,
                                            preexec_fn=die_with_the_sweep)
                running[proc] = (trial, time.perf_counter())
            time.sleep(0.1)
            for proc in [p for p in running if p.poll() is not None]:
                trial, t0 = running.pop(proc)
                row = result_row(trial, os.path.join(out, "trials", trial["id"]), proc.returncode,
                                 time.perf_counter() - t0)
                with open(os.path.join(out, "sweep.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")  # one write, synced: a kill leaves whole lines or a torn last one
                    f.flush()
                    os.fsync(f.fileno())
                result = f"val_loss {row['val_loss']:.4f}" if row["status"] == "ok" else short(row["reason"])
                done = len(todo) - len(queue) - len(running)
                print(f"[{done}/{len(todo)}] {trial['id']} {' '.join(as_args(trial['params']))}: {row['status']}, "
                      f"{result} ({row['seconds']:.1f} s)", flush=True)
    finally:  # after a signal, or a bug here: stop the trials still running
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return signums[0] if signums else None


def run_sweep(a):
    config, out = os.path.abspath(a["config"]), os.path.abspath(a["out"])
    # the config file's settings that reach the trials (its errors name it as given): the swept and
    # fixed keys and out_dir are left out, so that editing, say, its learning_rate does not change a
    # learning-rate sweep
    base = {k: v for k, v in read_config_file(a["config"]).items()
            if k not in a["grid"] and k not in a["random"] and k not in a["fixed"] and k != "out_dir"}
    trials = expand_trials(a["grid"], a["random"], a["trials"] or 1, a["sample_seed"])
    cmds = {t["id"]: train_cmd(config, {**a["fixed"], **t["params"]}, os.path.join(out, "trials", t["id"]),
                               f"trial {t['id']} ({' '.join(as_args(t['params']))})") for t in trials}
    spec = {"config": config, "base": base, "fixed": a["fixed"], "grid": a["grid"], "random": a["random"],
            "trials": a["trials"], "seed": a["sample_seed"], "trial_list": trials}
    spec = json.loads(json.dumps(spec))  # as sweep.json reads back (tuples become lists)
    lock_fd = take_lock(out)
    try:
        path = os.path.join(out, "sweep.json")
        old = json.loads(pathlib.Path(path).read_text()) if os.path.exists(path) else spec
        if old != spec:
            differ = ", ".join(k for k in spec if old.get(k) != spec[k])
            raise UserError(f"{a['out']} holds a different sweep ({differ} differ; see {path}); use another --out")
        write_atomic(json.dumps(spec, indent=1), path)
        rows, torn = read_jsonl(os.path.join(out, "sweep.jsonl"))
        if torn:  # rewritten without it before appending, or the next row would be glued to it
            print(f"note: {a['out']}/sweep.jsonl ended in a torn line (a kill mid-write); that trial runs again")
            write_atomic("".join(json.dumps(r) + "\n" for r in rows), os.path.join(out, "sweep.jsonl"))
        todo = [{**t, "cmd": cmds[t["id"]]} for t in trials if t["id"] not in {r["trial"] for r in rows}]
        print(f"sweep {a['out']}: {len(trials)} trials, {len(trials) - len(todo)} recorded, {len(todo)} to run, "
              f"{a['jobs']} at a time", flush=True)
        signum = run_trials(out, todo, a["jobs"], lock_fd)
    finally:
        os.close(lock_fd)
    if signum is not None:
        print(f"\ninterrupted: {len(read_results(out))} of {len(trials)} trials done (in {a['out']}/sweep.jsonl); "
              f"run the same command again to continue", file=sys.stderr)
        sys.exit(128 + signum)
    show_report(out)


# ----------------------------------------------------------------------------------------
# the report: a table by val loss, report.md, best_config.py, sweep.png


def short(reason):
    """'error: loss is nan at iter 3: stopped ...; <a path> ...' -> its first clause, no path."""
    why = reason.removeprefix("error: ").split("; ")[0]
    return why if len(why) <= 60 else why[:57] + "..."


def report(out):
    """Write OUT/report.md, best_config.py and sweep.png from sweep.json and sweep.jsonl, and
    return report.md's text: ok trials by (val_loss, trial), then the others with their reason."""
    if not os.path.exists(os.path.join(out, "sweep.json")):
        raise UserError(f"{out} holds no sweep (no sweep.json); give the --out folder of a sweep")
    spec, rows = json.loads(pathlib.Path(out, "sweep.json").read_text()), read_results(out)
    keys, order = [*spec["grid"], *spec["random"]], {t["id"]: n for n, t in enumerate(spec["trial_list"])}
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (r["val_loss"], order[r["trial"]]))
    bad = sorted((r for r in rows if r["status"] != "ok"), key=lambda r: order[r["trial"]])
    counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in ("ok", "diverged", "failed"))
    fixed = f", fixed: `{' '.join(as_args(spec['fixed']))}`" if spec["fixed"] else ""
    lines = [f"# Sweep: {len(rows)} of {len(spec['trial_list'])} trials recorded ({counts})", "",
             f"config: `{spec['config']}`{fixed}", "",
             f"| trial | {' | '.join(keys)} | val_loss | best_val_loss | status |", "|---" * (len(keys) + 4) + "|"]
    for r in ok + bad:
        losses = [format(v, ".4f") if v is not None else "-" for v in (r["val_loss"], r["best_val_loss"])]
        params = [format(v, ".4g") if isinstance(v, float) else str(v) for v in map(r["params"].get, keys)]
        status = r["status"] + (f": {short(r['reason'])}" if r["reason"] else "")
        lines.append("| " + " | ".join([r["trial"], *params, *losses, status.replace("|", "/")]) + " |")
    text = "\n".join(lines) + "\n"
    write_atomic(text, os.path.join(out, "report.md"))
    if ok:  # CONFIG.py's assignments, the fixed settings, the best params: a config file for train.py
        name, best = os.path.basename(os.path.normpath(out)), ok[0]
        settings = {**spec["base"], **spec["fixed"], **best["params"], "out_dir": f"out-{name}-best"}
        write_atomic(f"# The best trial of the sweep {name}: {best['trial']}, val loss {best['val_loss']:.4f}\n"
                     f"# ({spec['config']}, the fixed settings, its params)\n"
                     f"#   python train.py {os.path.join(out, 'best_config.py')}\n"
                     + "".join(f"{k} = {v!r}\n" for k, v in settings.items()), os.path.join(out, "best_config.py"))
    plot_sweep(spec, ok, keys, os.path.join(out, "sweep.png"))
    return text


def pyplot():
    """matplotlib.pyplot drawing to files, or None where matplotlib (optional) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: the plot needs matplotlib, which is optional (pip install matplotlib)")
        return None
    return plt


def plot_sweep(spec, ok, keys, path):
    """Val loss against each swept key: a log axis for loguniform keys and positive grids that
    span 10x or more, categories for choices and strings."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        dist = spec["random"].get(key, ["grid", spec["grid"].get(key)])
        values = dist[1] if dist[0] in ("grid", "choice") else None  # None: a range of numbers
        xs = [r["params"][key] for r in ok]
        if values and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlim(-0.5, len(values) - 0.5)
            xs = [values.index(x) for x in xs]  # categories, in the order given
        elif dist[0] == "loguniform" or (values and min(values) > 0 and max(values) >= 10 * min(values)):
            ax.set_xscale("log")
        ax.scatter(xs, [r["val_loss"] for r in ok])
        ax.set(xlabel=key, ylabel="final val loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def show_report(out):
    print(report(out), end="")
    seconds = sum(r["seconds"] for r in read_results(out))  # on the console only: report.md has no times
    written = [f for f in ("report.md", "best_config.py", "sweep.png") if os.path.exists(os.path.join(out, f))]
    print(f"({seconds:.0f} s of train.py runs; in {out}: {', '.join(written)})")


# ----------------------------------------------------------------------------------------
# the LR range test (Smith 2017, section 3.3)


def run_lr_range(a):
    out = os.path.abspath(a["out"])
    folder = os.path.join(out, "lr_range")
    base = {**{k: getattr(TrainConfig, k) for k in ("weight_decay", "max_iters")}, **read_config_file(a["config"]),
            **a["fixed"]}
    steps = a["lr_steps"] or 2 * base["max_iters"]
    test = {"lr_schedule": "exponential", "min_lr": a["lr_min"], "learning_rate": a["lr_max"], "max_iters": steps,
            "warmup_iters": 0, "lr_decay_iters": 0, "log_interval": 1, "eval_interval": steps, "eval_iters": 1}
    for key in [k for k in a["fixed"] if k in test]:  # it would be overridden without a word
        raise UserError(f"--{key}: the range test sets {key} itself (choose --lr_min, --lr_max, --lr_steps)")
    wd = base["weight_decay"]
    if a["lr_max"] * wd >= 1:  # AdamW would multiply the weights by 1 - lr * wd <= 0 each step: train.py refuses
        test["weight_decay"] = 0.0
        print(f"note: weight_decay={wd:g} is refused at lr {a['lr_max']:g}; the range test runs with weight_decay=0")
    cmd = train_cmd(os.path.abspath(a["config"]), {**a["fixed"], **test}, folder, "the range test's run")
    lock_fd = take_lock(out)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    print(f"LR range test: {steps} steps{'' if a['lr_steps'] else ' (2 x max_iters)'}, lr {a['lr_min']:g} to {a['lr_max']:g}, in {a['out']}/lr_range", flush=True)
    try:
        with open(os.path.join(folder, "train.log"), "w") as log:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock_fd,),
                                  env=child_env(a["jobs"])).returncode
    except KeyboardInterrupt:  # train.py got the Ctrl-C too (same process group) and stopped
        print("\ninterrupted: the range test did not finish; run it again", file=sys.stderr)
        sys.exit(130)
    finally:
        os.close(lock_fd)
    row = result_row({"id": "lr_range", "params": {}}, folder, code, 0.0)
    if row["status"] == "failed":
        raise UserError(f"the range test's run failed: {row['reason']} (see {a['out']}/lr_range/train.log)")
    rows = [r for r in read_jsonl(os.path.join(folder, "metrics.jsonl"))[0] if "loss" in r]
    res = {**suggest_lr([r["lr"] for r in rows], [r["loss"] for r in rows], steps), "steps": steps}
    write_atomic(json.dumps(res, indent=1), os.path.join(out, "lr_range.json"))
    if res["min_lr_at"] == res["lr"][-1]:  # no minimum inside the range: the rule has nothing to go by
        print("note: the loss still fell at the last step; raise --lr_max (or --lr_steps) to see where it turns")
    print(f"the run {'diverged, as a range test usually does' if row['status'] == 'diverged' else 'finished'}; "
          f"the curve: {len(res['lr'])} of {len(rows)} steps, smoothed minimum {min(res['smoothed']):.4f} at lr "
          f"{res['min_lr_at']:.3g}\nsuggested learning_rate = {res['suggested']:.3g} (rule: {res['rule']}; "
          f"the minimum / 10: {res['min_over_10']:.3g}, steepest descent: {res['steepest']:.3g})")
    plt = pyplot()
    if plt is not None:
        plot_range(res, os.path.join(out, "lr_range.png"), plt)
    print(f"wrote {a['out']}/lr_range.json" + (", lr_range.png" if plt else ""))


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return
    a = parse_sweep_args(argv)
    if a["report"] is not None:
        show_report(a["report"])
    elif a["lr_range"]:
        run_lr_range(a)
    else:
        run_sweep(a)


if __name__ == "__main__":
    main()
