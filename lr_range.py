"""
The LR range test's arithmetic (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3): from one run whose learning rate grows geometrically, the smoothed
loss curve and the rates it suggests, and its plot. sweep.py --lr_range runs the test and
calls these; they are pure, so tests give them curves with known answers.

    from lr_range import suggest_lr
    res = suggest_lr(lrs, losses)      # {"suggested": the minimum's lr / 10, "steepest": ..., "smoothed": [...]}
"""

import math

import numpy as np

from errors import UserError


def suggest_lr(lrs, losses, beta=0.9, stop_factor=4.0):
    """The range test's curve and the rates it suggests. The loss is smoothed by a moving
    average with bias correction, s_i = m_i / (1 - beta^(i+1)), m_i = beta m_(i-1) + (1 - beta)
    loss_i (m starts at 0, as Adam's moments do), and the curve ends where s passes
    stop_factor x its minimum so far, or is not finite."""
    kept, m, best = [], 0.0, math.inf
    for i, (lr, loss) in enumerate(zip(lrs, losses)):
        m = beta * m + (1 - beta) * loss
        s = m / (1 - beta ** (i + 1))
        if not math.isfinite(s) or s > stop_factor * best:
            break
        best = min(best, s)
        kept.append((lr, loss, s))
    if len(kept) < 3:
        raise UserError(f"the range test has {len(kept)} usable steps before the loss blew up; "
                        f"lower --lr_min or raise --lr_steps")
    lr, loss, smoothed = (list(c) for c in zip(*kept))
    i_min = int(np.argmin(smoothed))
    slope = np.gradient(np.array(smoothed), np.log(lr))  # d s / d log(lr), central differences
    return {"lr": lr, "loss": loss, "smoothed": smoothed, "suggested": lr[i_min] / 10,
            "steepest": lr[int(np.argmin(slope))], "min_lr_at": lr[i_min],
            "rule": "LR at the smoothed loss's minimum / 10"}


def plot_range(res, path, plt):
    """Loss and smoothed loss against the rate (log axis), both suggestions marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(res["lr"], res["loss"], color="C0", alpha=0.3, lw=0.8, label="loss")
    ax.plot(res["lr"], res["smoothed"], color="C0", label="smoothed (EMA, beta 0.9)")
    ax.axvline(res["suggested"], color="C2", ls="--", label=f"suggested (minimum / 10): {res['suggested']:.3g}")
    ax.axvline(res["steepest"], color="C1", ls=":", label=f"steepest descent: {res['steepest']:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
