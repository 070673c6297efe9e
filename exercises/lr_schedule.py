"""
Exercise: the learning-rate schedule (lesson 3 in exercises/README.md).

Read step.get_lr only after you have tried. Grade: python -m exercises check lr_schedule
"""

import math  # noqa: F401  (you will need it)


def get_lr(it, learning_rate, min_lr, warmup_iters, decay_iters, schedule):
    """The learning rate at optimizer step `it` (0-based).

    Warmup: for it < warmup_iters, rise linearly as nanoGPT does,
        learning_rate * (it + 1) / (warmup_iters + 1)
    (so step 0 already moves the weights a little: a rate of exactly 0 wastes a step).
    Then, until decay_iters, by `schedule`:
        "cosine":   min_lr + 0.5 * (1 + cos(pi * r)) * (learning_rate - min_lr)
        "linear":   min_lr + (1 - r) * (learning_rate - min_lr)
        "constant": learning_rate (no decay at all)
    where r = (it - warmup_iters) / (decay_iters - warmup_iters) goes from 0 to 1.
    From decay_iters on: min_lr (but "constant", which stays at learning_rate).
    """
    raise NotImplementedError("exercises/lr_schedule.py: get_lr")
