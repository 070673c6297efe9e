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
