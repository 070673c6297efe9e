"""
The LR range test's arithmetic (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3): from one run whose learning rate grows geometrically, the loss
curve and the rates it suggests, and its plot. sweep.py --lr_range runs the test and calls
these; they are pure, so tests give them curves with known answers.

    from lr_range import suggest_lr
    res = suggest_lr(lrs, losses, steps)   # {"suggested": the valley's rate, "min_over_10": ..., "steepest": ...}

Three rules read a rate off the curve; the suggestion is the first:
  valley       fastai's default since version 2.4 (fastai PR 3377, 2021): the longest
               falling stretch of a 100-point curve, and the rate about halfway along it
  min_over_10  the rate at the smoothed minimum / 10 (fastai's earlier default; "an order of
               magnitude before the minimum")
  steepest     the rate where the smoothed loss falls fastest per decade
On configs/hparam_char.py only the valley, on a test twice the trial's length, lands within
0.05 nats of a nine-point sweep's best (README, "Hyperparameters", experiment 5).
"""

import math

import numpy as np

from errors import UserError

POINTS = 100  # the curve the valley reads: fastai's lr_find records 100 steps


def smooth(losses, beta=0.9):
    """The moving average with bias correction, s_i = m_i / (1 - beta^(i+1)), m_i = beta
    m_(i-1) + (1 - beta) loss_i (m starts at 0, as Adam's moments do)."""
    m, out = 0.0, []
    for i, loss in enumerate(losses):
        m = beta * m + (1 - beta) * loss
        out.append(m / (1 - beta ** (i + 1)))
    return out


def block_means(lrs, losses, steps, points=POINTS):
    """The curve as `points` blocks of the test's `steps` steps (or one block a step when it is
    shorter): each block's mean loss at its rates' geometric mean. A block the run did not
    finish is left out. Averaging a block's steps, instead of reading every steps/points-th
    one, keeps the noise down without picking which step stands for the block."""
    edges = np.linspace(0, steps, min(points, steps) + 1).round().astype(int)
    log_lr, loss = np.log(np.asarray(lrs, float)), np.asarray(losses, float)
    kept = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b <= len(loss)]
    return ([float(np.exp(log_lr[a:b].mean())) for a, b in kept], [float(loss[a:b].mean()) for a, b in kept])


def valley(losses):
    """Index of the valley rule's pick: with L the length of the longest strictly falling
    subsequence of the curve and e the first index where one that long ends, the pick is
    e - L + floor(L/3) + floor(L/6), about halfway along it (fastai counts the valley's start
    back from e by L, not from the subsequence's first point; so do we)."""
    longest = [1] * len(losses)  # longest[i]: the longest strictly falling subsequence ending at i
    for i in range(len(losses)):
        for j in range(i):
            if losses[j] > losses[i]:
                longest[i] = max(longest[i], longest[j] + 1)
    end = int(np.argmax(longest))  # the first of the longest
    span = longest[end]
    return end - span + span // 3 + int(span / 6)


def suggest_lr(lrs, losses, steps=None, beta=0.9, stop_factor=4.0):
    """The range test's curve and the rates it suggests. lrs and losses are per step; steps is
    the test's planned length (default: the steps given). The curve ends where the smoothed
    loss passes stop_factor x its minimum so far, or is not finite: the blow-up says nothing
    about where to train."""
    smoothed, kept, best = smooth(losses, beta), 0, math.inf
    for s in smoothed:
        if not math.isfinite(s) or s > stop_factor * best:
            break
        best, kept = min(best, s), kept + 1
    if kept < 3:
        raise UserError(f"the range test has {kept} usable steps before the loss blew up; "
                        f"lower --lr_min or raise --lr_steps")
    lr, loss, smoothed = list(lrs[:kept]), list(losses[:kept]), smoothed[:kept]  # the average is causal: cut = smoothed cut
    i_min = int(np.argmin(smoothed))
    slope = np.gradient(np.array(smoothed), np.log(lr))  # d s / d log(lr), central differences
    block_lr, block_loss = block_means(lr, loss, steps or len(lrs))
    if len(block_lr) < 3:
        raise UserError(f"the range test's curve has {len(block_lr)} points before the loss blew up; "
                        f"lower --lr_min or raise --lr_steps")
    pick = valley(block_loss)
    return {"lr": lr, "loss": loss, "smoothed": smoothed, "block_lr": block_lr, "block_loss": block_loss,
            "suggested": block_lr[pick], "min_over_10": lr[i_min] / 10, "steepest": lr[int(np.argmin(slope))],
            "min_lr_at": lr[i_min], "rule": "valley: halfway along the longest fall of the 100-point curve"}


def plot_range(res, path, plt):
    """Loss, smoothed loss and the 100-point curve against the rate (log axis), the three
    rules' rates marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(res["lr"], res["loss"], color="C0", alpha=0.25, lw=0.8, label="loss")
    ax.plot(res["lr"], res["smoothed"], color="C0", lw=0.8, label="smoothed (EMA, beta 0.9)")
    ax.plot(res["block_lr"], res["block_loss"], "k.", ms=3, label=f"{len(res['block_lr'])}-point curve (block means)")
    ax.axvline(res["suggested"], color="C2", ls="--", label=f"valley (the suggestion): {res['suggested']:.3g}")
    ax.axvline(res["min_over_10"], color="C3", ls="-.", label=f"minimum / 10: {res['min_over_10']:.3g}")
    ax.axvline(res["steepest"], color="C1", ls=":", label=f"steepest descent: {res['steepest']:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
