"""Grader of exercises/lr_schedule.py: against step.get_lr, at the steps where mistakes show."""

import math


def reference():
    from types import SimpleNamespace

    from config import TrainConfig
    from step import get_lr as repo_get_lr

    def get_lr(it, learning_rate, min_lr, warmup_iters, decay_iters, schedule):
        cfg = TrainConfig(learning_rate=learning_rate, min_lr=min_lr, warmup_iters=warmup_iters,
                          lr_decay_iters=decay_iters, max_iters=decay_iters, lr_schedule=schedule)
        return repo_get_lr(it, cfg)

    return SimpleNamespace(get_lr=get_lr)


SETTINGS = dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)


def hint(it, schedule, got, want):
    s = SETTINGS
    if it < s["warmup_iters"] and math.isclose(got, s["learning_rate"] * it / s["warmup_iters"], rel_tol=1e-9):
        return "warmup as it / warmup_iters starts at 0: use (it + 1) / (warmup_iters + 1), as nanoGPT"
    if it >= s["decay_iters"] and schedule != "constant" and math.isclose(got, 0.0, abs_tol=1e-12):
        return "after the decay the rate stays at min_lr, not 0"
    if schedule == "cosine" and math.isclose(got, s["min_lr"] + 0.5 * (1 + math.cos(math.pi * (it - 10) / 110)) * 0.9):
        return "r must run over the decay only: (it - warmup_iters) / (decay_iters - warmup_iters)"
    if schedule == "cosine" and math.isclose(got, 0.5 * (1 + math.cos(math.pi * (it - 10) / 100)), rel_tol=1e-9):
        return "the cosine must end at min_lr: min_lr + coefficient * (learning_rate - min_lr)"
    return "compare your formula with the docstring at this step"


def cases(impl):
    for schedule in ("cosine", "linear", "constant"):
        for it in (0, 5, 9, 10, 35, 60, 100, 109, 110, 500):
            want = reference().get_lr(it, schedule=schedule, **SETTINGS)
            got = impl.get_lr(it, schedule=schedule, **SETTINGS)
            ok = isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
            yield f"{schedule}, step {it}", ok, want, got, None if ok else hint(it, schedule, got, want)


def train(impl, out_dir, dataset=None):
    """--train: the student's get_lr drives a real 120-step run of train.py (the quickstart
    corpus, a 2-layer model; its output hidden); returns its final val loss. The runner compares it with the
    same run on the repo's own schedule."""
    import os
    import runpy
    import sys

    import step
    from config import TrainConfig

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dataset = dataset or next((d for d in ("stdlib_char", "shakespeare_char")
                               if os.path.exists(os.path.join(repo, "data", d, "meta.json"))), None)
    if dataset is None:
        raise RuntimeError("--train needs a prepared dataset: run python data/stdlib_char/prepare.py")
    repo_get_lr = step.get_lr

    def get_lr(it, cfg: TrainConfig):  # the loop's call, answered by the student's function
        return impl.get_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters or cfg.max_iters,
                           cfg.lr_schedule)

    argv = ["train.py", f"--dataset={dataset}", "--n_layer=2", "--n_head=4", "--n_embd=48", "--block_size=64",
            "--batch_size=8", "--max_iters=120", "--warmup_iters=12", "--learning_rate=3e-3", "--min_lr=3e-4",
            "--eval_interval=120", "--eval_iters=10", "--dtype=float32", "--device=cpu", "--progress=False",
            f"--out_dir={out_dir}"]
    saved = sys.argv
    step.get_lr, sys.argv = get_lr, argv
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(os.path.join(repo, "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"train.py stopped with exit code {e.code}") from None
    finally:
        step.get_lr, sys.argv = repo_get_lr, saved
    import json

    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if "val_loss" in line][-1]["val_loss"]
