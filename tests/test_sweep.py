"""sweep.py: the grid and the random samples (typed, seeded, in their ranges, loguniform
uniform in log), argument errors as one line and exit code 2, a real sweep on a tiny model
(two trials ok, one diverged, best_config.py = the best trial), a rerun that runs nothing, a
SIGTERMed sweep that resumes to the same report as an uninterrupted one, and the LR range
test's suggestion on curves whose answer is known."""

import fcntl
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import lr_range
import sweep
from config import read_config_file
from conftest import REPO, TINY, exit_code
from errors import UserError

# a tiny model, two steps; no weight decay or clipping, so learning_rate=1e30 is accepted and diverges at once
FAST = TINY + ["--max_iters=2", "--eval_interval=2", "--eval_iters=2", "--log_interval=1", "--warmup_iters=0",
               "--weight_decay=0", "--grad_clip=0"]
GRID = ["--grid", "learning_rate=1e-3,3e-2,1e30"]


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep_config") / "base.py"
    path.write_text("# the base of the test sweeps\nmax_iters = 2\nlr_schedule = 'constant'\n")
    return str(path)


def sweep_argv(base_config, char_dataset, out, jobs=2):
    return [base_config, *GRID, "--jobs", str(jobs), "--out", str(out), f"--dataset={char_dataset}", *FAST]


@pytest.fixture(scope="module")
def finished(base_config, char_dataset, tmp_path_factory):
    """A whole three-trial sweep, run in this process: (its folder, its argv)."""
    out = tmp_path_factory.mktemp("sweeps") / "lr"
    argv = sweep_argv(base_config, char_dataset, out)
    sweep.main(argv)
    return str(out), argv


def rows_of(out):
    with open(os.path.join(out, "sweep.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------
# the trials


def test_grid_expands_in_order_with_typed_values():
    a = sweep.parse_sweep_args(["c.py", "--grid", "learning_rate=1e-3,3e-3", "--grid=n_layer=2,4,6", "--out", "o"])
    assert a["grid"] == {"learning_rate": [0.001, 0.003], "n_layer": [2, 4, 6]}
    assert type(a["grid"]["learning_rate"][0]) is float and type(a["grid"]["n_layer"][0]) is int
    trials = sweep.expand_trials(a["grid"], {}, 1, 0)
    assert [t["id"] for t in trials] == [f"t{i:03d}" for i in range(6)]
    assert [tuple(t["params"].values()) for t in trials] == [
        (0.001, 2), (0.001, 4), (0.001, 6), (0.003, 2), (0.003, 4), (0.003, 6)]  # first key slowest


def test_random_samples_are_seeded_and_the_same_whatever_the_grid():
    specs = {"weight_decay": ("loguniform", 1e-3, 1e-1), "n_layer": ("int", 1, 8)}
    alone = sweep.expand_trials({}, specs, 5, seed=0)
    assert len(alone) == 5 and alone == sweep.expand_trials({}, specs, 5, seed=0)
    other = sweep.expand_trials({}, specs, 5, seed=1)
    assert [t["params"] for t in other] != [t["params"] for t in alone]
    # grid x samples: each grid point gets the same five samples, and more trials extend, not reshuffle
    crossed = sweep.expand_trials({"dropout": [0.0, 0.1]}, specs, 5, seed=0)
    assert len(crossed) == 10
    for point in range(2):
        got = [{k: v for k, v in t["params"].items() if k != "dropout"} for t in crossed[5 * point:5 * point + 5]]
        assert got == [t["params"] for t in alone]
    assert sweep.expand_trials({}, specs, 7, seed=0)[:5] == alone


def test_each_distribution_stays_in_its_range():
    rng = random.Random(0)
    n = 2000
    u = [sweep.sample(("uniform", 2.0, 5.0), rng) for _ in range(n)]
    assert 2.0 <= min(u) and max(u) <= 5.0 and abs(np.mean(u) - 3.5) < 0.1
    lo, hi = 1e-4, 1e-1
    lu = np.array([sweep.sample(("loguniform", lo, hi), rng) for _ in range(n)])
    assert lo <= lu.min() and lu.max() <= hi
    # uniform in log: half the draws below the geometric midpoint, log's mean at the middle of the log range
    assert abs((lu < math.sqrt(lo * hi)).mean() - 0.5) < 0.04
    assert abs(np.log(lu).mean() - (math.log(lo) + math.log(hi)) / 2) < 0.1  # its std error: 2.0 / sqrt(2000) = 0.045
    ints = [sweep.sample(("int", 1, 4), rng) for _ in range(n)]
    assert set(ints) == {1, 2, 3, 4}  # both ends included
    choices = [sweep.sample(("choice", ["cosine", "wsd", "linear"]), rng) for _ in range(n)]
    assert set(choices) == {"cosine", "wsd", "linear"}


def test_random_specs_are_typed_as_their_key():
    a = sweep.parse_sweep_args(["c.py", "--random", "weight_decay=loguniform:1e-3:1e-1", "--random", "n_layer=int:1:4",
                                "--random", "lr_schedule=choice:cosine,wsd", "--random", "dropout=choice:0,0.1",
                                "--trials", "3", "--out", "o"])
    assert a["random"] == {"weight_decay": ("loguniform", 0.001, 0.1), "n_layer": ("int", 1, 4),
                           "lr_schedule": ("choice", ["cosine", "wsd"]), "dropout": ("choice", [0.0, 0.1])}
    assert a["trials"] == 3 and a["jobs"] == 1 and a["sample_seed"] == 0 and a["fixed"] == {}
    # --seed is train.py's key, like any other: fixed for every trial, not the sampling's seed
    a = sweep.parse_sweep_args(["c.py", "--grid", "dropout=0,0.1", "--seed=2", "--sample_seed", "5", "--out", "o"])
    assert a["fixed"] == {"seed": 2} and a["sample_seed"] == 5


# ----------------------------------------------------------------------------------------
# argument errors: one line, exit code 2, naming the argument


@pytest.mark.parametrize("args, message", [
    (["--grid", "learing_rate=1e-3,1e-2"], r"--grid learing_rate=1e-3,1e-2: unknown config key 'learing_rate' "
                                          r"\(did you mean 'learning_rate'\?\)"),
    (["--grid", "n_layer=2,x"], r"--grid n_layer=2,x: config key 'n_layer' expects int, got 'x'"),
    (["--random", "learning_rate=gauss:1:2", "--trials", "2"], r"learning_rate=gauss:1:2: unknown distribution"),
    (["--random", "learning_rate=loguniform:0:1", "--trials", "2"], r"loguniform.*needs 0 < a \(got a=0\)"),
    (["--random", "learning_rate=uniform:2:1", "--trials", "2"], r"uniform:2:1: a=2 is above b=1"),
    (["--random", "n_layer=uniform:1:4", "--trials", "2"], r"n_layer=uniform:1:4: config key 'n_layer' expects int"),
    (["--random", "learning_rate=uniform:1e-3:1e-2"], r"--random needs --trials N"),
    (["--grid", "learning_rate=1e-3", "--trials", "3"], r"--trials 3 counts random samples, but there is no --random"),
    (["--grid", "learning_rate=1e-3", "--trials=abc"], r"argument --trials: invalid int value: 'abc'"),
    (["--grid", "out_dir=a,b"], r"--grid out_dir=a,b: the sweep sets out_dir"),
    (["--grid", "learning_rate=1e-3", "--out_dir=x"], r"--out_dir: the sweep gives each trial its out_dir"),
    (["--grid", "learning_rate=1e-3", "--random", "learning_rate=uniform:1e-3:1e-2", "--trials", "2"],
     r"--random learning_rate=uniform:1e-3:1e-2: learning_rate is already swept by --grid"),
    (["--grid", "n_layer=1,2", "--grid", "n_layer=3"], r"--grid n_layer=3: n_layer is already swept by --grid"),
    (["--grid", "n_layer=1,2", "--n_layer=4"], r"--n_layer=4 fixes n_layer, which --grid sweeps"),
    (["--grid", "n_layer=1,2", "--lr_max=1"], r"--lr_max is an option of --lr_range"),
    (["--grid", "n_layer=1,2", "--jobs", "0"], r"--jobs 0: must be >= 1"),
    (["--n_layer=4"], r"nothing to sweep"),
    (["--lr_range", "--grid", "n_layer=1,2"], r"--grid: --lr_range runs one range test"),
    (["--lr_range", "--learning_rate=1e-3"], r"--learning_rate: the range test sets learning_rate itself"),
    (["--lr_range", "--lr_min=1", "--lr_max=1e-3"], r"need 0 < lr_min < lr_max"),
    (["--lr_range", "--lr_steps=2"], r"--lr_steps=2: the test needs at least 3 steps"),
])
def test_argument_errors_name_the_argument(args, message, capsys, tmp_path, base_config):
    out = tmp_path / "out"
    code, err = exit_code(sweep.main, [base_config, *args, "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err
    assert not out.exists()


def test_missing_out_a_missing_config_and_a_run_train_py_would_refuse(capsys, tmp_path, base_config):
    code, err = exit_code(sweep.main, [base_config, *GRID], capsys)
    assert code == 2 and err == "error: --out DIR is required: the folder for the trials, sweep.jsonl and the report\n"
    code, err = exit_code(sweep.main, ["nope.py", *GRID, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "config file 'nope.py' not found" in err
    # learning_rate * weight_decay >= 1 at one grid point: refused before any trial starts
    code, err = exit_code(sweep.main, [base_config, "--grid", "learning_rate=1e-3,20", "--out", str(tmp_path / "o")],
                          capsys)
    assert code == 2 and err.startswith("error: trial t001 (--learning_rate=20.0): learning_rate * weight_decay"), err
    assert not (tmp_path / "o").exists()
    code, err = exit_code(sweep.main, ["--report", str(tmp_path)], capsys)
    assert code == 2 and "holds no sweep (no sweep.json)" in err


# ----------------------------------------------------------------------------------------
# a real sweep: three tiny trials, two at a time


def test_sweep_records_each_trial_once(finished):
    out, _ = finished
    rows = {r["trial"]: r for r in rows_of(out)}
    assert sorted(rows) == ["t000", "t001", "t002"]
    assert [rows[t]["params"]["learning_rate"] for t in sorted(rows)] == [1e-3, 3e-2, 1e30]
    for t in ("t000", "t001"):
        r = rows[t]
        evals = [m for m in sweep.read_jsonl(os.path.join(out, "trials", t, "metrics.jsonl"))[0] if "val_loss" in m]
        assert r["status"] == "ok" and r["reason"] is None and r["iters"] == 2
        assert r["val_loss"] == evals[-1]["val_loss"] and math.isfinite(r["val_loss"])
        assert r["best_val_loss"] == min(m["val_loss"] for m in evals)
    # 1e30: the first step throws the weights to ~1e30 and the next loss is NaN; the sweep went on
    bad = rows["t002"]
    assert bad["status"] == "diverged" and bad["val_loss"] is None and "loss is nan at iter 1" in bad["reason"]
    with open(os.path.join(out, "report.md")) as f:
        table = [line for line in f if re.match(r"\| t\d", line)]
    assert [line.split(" | ")[0] for line in table[:2]] == sorted(
        ["| t000", "| t001"], key=lambda t: rows[t[2:]]["val_loss"])  # ok rows by val_loss
    assert table[2].startswith("| t002 | 1e+30 | - |")
    assert table[2].endswith("| diverged: loss is nan at iter 1: stopped before the optimizer step |\n")


def test_best_config_is_the_best_trial(finished, tmp_path):
    import train  # the best config trains to the best trial's val loss
    from config import load_config

    out, _ = finished
    best = min((r for r in rows_of(out) if r["status"] == "ok"), key=lambda r: r["val_loss"])
    cfg = read_config_file(os.path.join(out, "best_config.py"))
    assert cfg["learning_rate"] == best["params"]["learning_rate"] and cfg["out_dir"] == "out-lr-best"
    assert cfg["n_embd"] == 32 and cfg["max_iters"] == 2 and cfg["lr_schedule"] == "constant"
    row = train.train(load_config([os.path.join(out, "best_config.py"), f"--out_dir={tmp_path / 'best'}"]))
    assert row["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)


def test_a_rerun_runs_nothing(finished, capsys, monkeypatch):
    out, argv = finished
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("sweep.jsonl", "report.md")}
    mtimes = {t: os.stat(os.path.join(out, "trials", t)).st_mtime_ns for t in ("t000", "t001", "t002")}

    def no_train(*args, **kwargs):
        raise AssertionError("a finished trial was started again")

    monkeypatch.setattr(sweep.subprocess, "Popen", no_train)
    code, _ = exit_code(sweep.main, argv, capsys)
    assert code == 0
    assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before
    assert {t: os.stat(os.path.join(out, "trials", t)).st_mtime_ns for t in mtimes} == mtimes


def test_the_config_files_swept_keys_may_change_and_its_others_may_not(finished, tmp_path, capsys, monkeypatch):
    out, argv = finished
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: pytest.fail("a recorded trial ran again"))
    edited = tmp_path / "edited.py"
    edited.write_text(open(argv[0]).read() + "learning_rate = 0.005  # swept: no trial sees it\n")
    code, err = exit_code(sweep.main, [str(edited), *argv[1:]], capsys)
    assert code == 2 and "holds a different sweep (config differ" in err  # another file: its path differs
    import shutil

    shutil.copy(argv[0], tmp_path / "orig.py")
    try:
        with open(argv[0], "a") as f:
            f.write("learning_rate = 0.005\n")
        code, err = exit_code(sweep.main, argv, capsys)
        assert code == 0, err
        with open(argv[0], "a") as f:
            f.write("beta2 = 0.99\n")  # reaches every trial: another sweep
        code, err = exit_code(sweep.main, argv, capsys)
        assert code == 2 and "holds a different sweep (base differ" in err, err
    finally:
        shutil.copy(tmp_path / "orig.py", argv[0])


def test_another_spec_or_a_running_sweep_in_the_same_out_is_refused(finished, capsys):
    out, argv = finished
    other = [a.replace("1e30", "1e-2") for a in argv]
    code, err = exit_code(sweep.main, other, capsys)
    assert code == 2 and f"{out} holds a different sweep (grid, trial_list differ" in err
    fd = os.open(os.path.join(out, ".lock"), os.O_RDWR)  # as a trial still running holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, err = exit_code(sweep.main, argv, capsys)
    finally:
        os.close(fd)
    assert code == 2
    assert err == f"error: a sweep is still running in {out} (its trials hold {out}/.lock); wait or kill them\n"


def test_a_torn_last_line_is_ignored_and_its_trial_runs_again(finished, tmp_path, capsys, monkeypatch):
    out, argv = finished
    copy = tmp_path / "lr"
    copy.mkdir()
    shutil.copy(os.path.join(out, "sweep.json"), copy)
    lines = open(os.path.join(out, "sweep.jsonl")).readlines()
    (copy / "sweep.jsonl").write_text("".join(lines[:2]) + lines[2][:40])  # a kill in the middle of a write
    assert sweep.read_results(str(copy)) == [json.loads(line) for line in lines[:2]]
    started = []
    monkeypatch.setattr(sweep, "run_trials", lambda out, todo, jobs, lock_fd: started.extend(todo))
    code, _ = exit_code(sweep.main, [a if a != out else str(copy) for a in argv], capsys)
    assert code == 0 and [t["id"] for t in started] == [json.loads(lines[2])["trial"]]
    assert (copy / "sweep.jsonl").read_text() == "".join(lines[:2])  # rewritten without the torn line
    (copy / "sweep.jsonl").write_text("".join(lines[:1]) + "{oops\n" + lines[1])
    with pytest.raises(UserError, match=r"sweep.jsonl, line 2: not a JSON row"):
        sweep.read_results(str(copy))


def test_a_sigtermed_sweep_resumes_to_the_uninterrupted_report(finished, base_config, char_dataset, tmp_path, capsys):
    """Two trials at a time, SIGTERM once a row is written: the trial in flight is stopped and not
    recorded; the rerun keeps the rows written, runs the rest, and reports what the
    uninterrupted sweep reported."""
    out = tmp_path / "lr"
    argv = sweep_argv(base_config, char_dataset, out, jobs=2)  # the threads per trial of `finished`: same numbers
    proc = subprocess.Popen([sys.executable, "sweep.py", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "sweep.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    before = (out / "sweep.jsonl").read_text().splitlines(keepends=True)
    assert 1 <= len(before) < 3, "the sweep ended before the SIGTERM: nothing was interrupted"
    assert err.splitlines()[-1] == (f"interrupted: {len(before)} of 3 trials done (in {out}/sweep.jsonl); "
                                    f"run the same command again to continue")
    code, _ = exit_code(sweep.main, sweep_argv(base_config, char_dataset, out, jobs=2), capsys)
    assert code == 0
    after = (out / "sweep.jsonl").read_text().splitlines(keepends=True)
    assert after[:len(before)] == before and len(after) == 3
    assert sorted(json.loads(line)["trial"] for line in after) == ["t000", "t001", "t002"]
    assert (out / "report.md").read_text() == open(os.path.join(finished[0], "report.md")).read()


# ----------------------------------------------------------------------------------------
# the LR range test's suggestion


def test_the_valley_rule_on_lists_with_known_answers():
    """fastai's valley: L the longest strictly falling subsequence, e where the first one that
    long ends, the pick e - L + L // 3 + int(L / 6)."""
    assert lr_range.valley([5, 4, 3, 2, 1, 2, 3]) == 4 - 5 + 1 + 0  # L = 5, e = 4
    assert lr_range.valley([9, 3, 8, 7, 6, 5, 4, 10]) == 6 - 6 + 2 + 1  # the fall skips the dip at 3: L = 6
    # the start counts back L from e, though the subsequence (9 ... 4) begins at 1: the pick is 3, not 4
    assert lr_range.valley([3, 9, 8, 7, 6, 5, 4, 10]) == 3
    # strictly falling: equal points do not chain (with >= this would be L = 5 and the pick 0)
    assert lr_range.valley([5, 5, 5, 5, 4]) == 4 - 2 + 0 + 0
    assert lr_range.valley([3, 2, 1, 3, 2, 1]) == 2 - 3 + 1 + 0  # two as long: the first


def test_block_means_average_each_block_at_its_rates_geometric_mean():
    lrs, losses = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    # 10 planned steps in 4 blocks: edges 0, 2, 5, 8, 10 (2.5 and 7.5 round to even); the run
    # stopped after 7 steps, so only the blocks that end by then are kept
    block_lr, block_loss = lr_range.block_means(lrs, losses, steps=10, points=4)
    assert block_loss == [6.5, 4.0] and block_lr == pytest.approx([10 ** -3.5, 1e-1])
    assert lr_range.block_means(lrs, losses, steps=7) == (pytest.approx(lrs), losses)  # < 100 steps: a block a step


def test_suggest_lr_on_curves_with_known_answers():
    lrs = np.logspace(-5, 0, 2000)  # 400 steps a decade: the moving average lags ~9 steps, 0.02 decades
    x = np.log10(lrs)
    # a parabola in log lr with its minimum at 1e-2, a blow-up past 1e-1 and a NaN at the end
    loss = 2 + (x + 2) ** 2 + np.where(x > -1, 40 * (x + 1) ** 2, 0)
    loss[-1] = float("nan")
    res = sweep.suggest_lr(lrs.tolist(), loss.tolist(), 2000)
    assert res["min_lr_at"] == pytest.approx(1e-2, rel=0.1) and res["min_over_10"] == pytest.approx(1e-3, rel=0.1)
    assert res["smoothed"][0] == pytest.approx(loss[0], rel=1e-12)  # bias-corrected: the first value is the first loss
    # the valley: the fall from the first block to the minimum's, 1e-5 to 1e-2, and halfway along it
    assert len(res["block_lr"]) == 100 * len(res["lr"]) // 2000
    assert res["suggested"] == res["block_lr"][lr_range.valley(res["block_loss"])] == pytest.approx(10 ** -3.5, rel=0.15)
    # cut where the blow-up passes 4x the minimum, long before the NaN
    low = min(res["smoothed"])
    after = res["smoothed"][res["smoothed"].index(low):]
    assert max(after) <= 4 * low and after[-1] > 3.9 * low and res["lr"][-1] < 0.5
    # a drop steepest at 1e-3 (tanh's inflection), flat after it, then a blow-up
    loss = 5 - 2 * np.tanh(3 * (x + 3)) + np.where(x > -1, 40 * (x + 1) ** 2, 0)
    res = sweep.suggest_lr(lrs.tolist(), loss.tolist())
    assert res["steepest"] == pytest.approx(1e-3, rel=0.1)
    assert res["rule"].startswith("valley") and res["min_over_10"] == res["min_lr_at"] / 10
    with pytest.raises(UserError, match="2 usable steps"):
        sweep.suggest_lr([1e-3, 1e-2, 1e-1], [4.0, 4.1, float("nan")])
    with pytest.raises(UserError, match="curve has 2 points"):  # 300 planned steps, cut after 8: two blocks of 3
        sweep.suggest_lr(np.logspace(-3, -2, 9).tolist(), [4.0] * 8 + [float("nan")], 300)


def test_the_lr_range_test_on_a_tiny_model(char_dataset, tmp_path, capsys):
    """A real range test: the rate grows geometrically from lr_min to lr_max (train.py's
    'exponential' schedule) over twice the config's max_iters, the loss blows up before the
    end, as a range test expects, and the suggestion printed is lr_range.json's.
    weight_decay=0.5 at lr 1e4 is what train.py refuses: the test runs with 0 and says so."""
    config = tmp_path / "fifteen.py"
    config.write_text("max_iters = 15\n")
    out = tmp_path / "range"
    sweep.main([str(config), "--lr_range", "--out", str(out), "--lr_min=1e-4", "--lr_max=1e4",
                f"--dataset={char_dataset}", *TINY, "--weight_decay=0.5"])
    printed = capsys.readouterr().out
    res = json.loads((out / "lr_range.json").read_text())
    assert res["steps"] == 30 and res["lr"][0] == pytest.approx(1e-4)  # 2 x max_iters
    assert np.allclose(np.diff(np.log(res["lr"])), math.log(1e8) / 29)  # lr_min * (lr_max / lr_min) ** (it / 29)
    assert len(res["lr"]) < 30 and res["min_over_10"] == res["min_lr_at"] / 10  # the curve was cut: it blew up
    assert res["block_loss"] == res["loss"] and res["suggested"] == res["lr"][lr_range.valley(res["loss"])]
    assert "the range test runs with weight_decay=0" in printed
    assert (f"suggested learning_rate = {res['suggested']:.3g} (rule: {res['rule']}; the minimum / 10: "
            f"{res['min_over_10']:.3g}, steepest descent: {res['steepest']:.3g})") in printed


def test_a_sigkilled_sweep_takes_its_trials_with_it_and_a_rerun_starts_at_once(base_config, char_dataset, tmp_path,
                                                                                capsys):
    """SIGKILL gives the sweep no chance to stop its trials: the kernel does (PR_SET_PDEATHSIG),
    so the trial in flight ends, the lock is free, and the rerun runs it again."""
    out = tmp_path / "killed"
    slow = [base_config, "--grid", "learning_rate=1e-3", "--out", str(out), f"--dataset={char_dataset}", *FAST,
            "--max_iters=100000", "--eval_interval=100000"]
    proc = subprocess.Popen([sys.executable, "sweep.py", *slow], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = out / "trials" / "t000" / "train.log"
    deadline = time.time() + 60
    while not (log.exists() and "tokens per optimizer step" in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        for _ in range(200):  # the orphan would hold the lock for 100,000 steps
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            pytest.fail("the trial outlived its SIGKILLed sweep by 10 s")
    finally:
        os.close(fd)
    assert not (out / "sweep.jsonl").exists()  # nothing recorded: the rerun starts the trial again
