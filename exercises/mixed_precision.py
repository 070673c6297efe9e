"""
Exercise: mixed precision, the loss in fp32 and the GradScaler's step (the mixed-precision
lesson in exercises/README.md).

Read model.GPT.forward's loss, step.forward_backward and step.optimizer_step only after you
have tried. Grade: python -m exercises check mixed_precision

Under autocast the matmuls run in bf16 (or fp16) and so do the logits; bf16 keeps 8 bits of
mantissa, about 2-3 significant digits. A softmax over a large vocabulary sums many small
terms, and rounding each one to bf16 moves the loss visibly; the repo casts the logits to
fp32 before the cross-entropy (model.py: logits.float()).

fp16 has a narrow exponent range: small gradients underflow to zero. A GradScaler multiplies
the loss by a scale S before backward (so every gradient is S times larger), divides the
gradients by S again before the optimizer uses them, skips the step when a gradient
overflowed (inf or nan), and adjusts S: halves it after an overflow, doubles it after
growth_interval clean steps.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def loss_in_fp32(logits_bf16, targets):
    """The mean cross-entropy of logits (..., V), in bf16, against integer targets (...),
    computed in fp32: cast the logits up before the log-softmax, not the loss after it.
    Targets of -1 are ignored (as model.py: ignore_index=-1). Returns an fp32 scalar."""
    raise NotImplementedError("exercises/mixed_precision.py: loss_in_fp32")


def scaler_step(loss, optimizer, scaler, params, max_norm):
    """One optimizer step with a torch.amp.GradScaler, gradient clipping included:

        scale the loss -> backward -> unscale the gradients -> clip their global norm to
        max_norm -> step (the scaler's: it skips the step after an overflow) -> update the scale

    params: the parameters the optimizer holds (what clip_grad_norm_ clips). Return the
    total gradient norm before clipping, as torch.nn.utils.clip_grad_norm_ returns it: the
    norm of the true (unscaled) gradients. Whether you zero the gradients afterwards is up
    to you; the grader does not read them.
    """
    raise NotImplementedError("exercises/mixed_precision.py: scaler_step")
