"""
Exercise: gradient accumulation and clipping (see exercises/README.md).

Read step.py's forward_backward and optimizer_step only after you have tried. Grade:
python -m exercises check grad_accumulation
"""

import torch  # noqa: F401


def accumulate_gradients(model, batches, loss_fn):
    """Accumulate in the parameters' .grad the gradient of one big batch, micro-batch by micro-batch.

    batches: a list of (x, y) micro-batches, all the same size. loss_fn(model, x, y) returns
    a scalar tensor: the MEAN loss over that micro-batch. On entry the gradients are None or
    zero (the optimizer step that came before zeroed them).

    Call backward once per micro-batch (never on a loss over all of them at once: that is
    what accumulation avoids, since it would hold every micro-batch's activations in memory)
    so that afterwards each .grad equals the gradient of the mean loss over the concatenated
    big batch. backward adds into .grad; think about what the sum of len(batches) gradients
    of means is, compared with the gradient of the mean of the big batch.

    Returns the mean loss over the big batch as a Python float (detach it: a float keeps no
    graph alive).
    """
    raise NotImplementedError("exercises/grad_accumulation.py: accumulate_gradients")


def clip_after_accumulation(model, max_norm):
    """Clip the global gradient norm to max_norm, once, after accumulation; return the total
    norm before clipping (a float).

    The global norm is the 2-norm of all the parameters' gradients taken together as one
    vector (not one norm per tensor); when it exceeds max_norm, every gradient is scaled by
    the same factor max_norm / norm, so the update keeps its direction. You may use
    torch.nn.utils.clip_grad_norm_. Parameters whose .grad is None are left out.
    """
    raise NotImplementedError("exercises/grad_accumulation.py: clip_after_accumulation")
