"""
Exercise: LoRA on one nn.Linear (the PEFT lesson in exercises/README.md).

Read peft.LoRALinear only after you have tried. Grade: python -m exercises check lora

Shapes, as in the LoRA paper (Hu et al. 2021, eq. 3) and peft.py:
    x: (..., in)   weight W: (out, in)   bias b: (out,) or None
    A: (r, in)     B: (out, r)           scaling = alpha / r
so B A is (out, in), the shape of W: a rank-r update to the frozen weight.

Why B starts at zero (and A random): then B A = 0 and the wrapped layer computes exactly
what the base layer did, so fine-tuning starts from the pretrained model and the update
grows from nothing (loralib and peft.py both do this). Not both at zero: each one's
gradient goes through the other (dL/dB through A x, dL/dA through B^T), so A = B = 0 would
never move.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def lora_forward(x, weight, bias, A, B, alpha, r):
    """The LoRA layer's output, without building B A:

        y = x W^T + b + (alpha / r) * (x A^T) B^T

    (bias None: no b). Returns (..., out). Two thin matmuls through rank r cost far less
    than forming the (out, in) matrix B A for every forward.
    """
    raise NotImplementedError("exercises/lora.py: lora_forward")


def merge(weight, A, B, alpha, r):
    """The merged weight W + (alpha / r) * B A, shape (out, in), as a new tensor (leave
    `weight` itself unchanged). A plain F.linear(x, merged, b) then gives lora_forward's
    output with no extra matmuls at inference."""
    raise NotImplementedError("exercises/lora.py: merge")


def unmerge(merged, A, B, alpha, r):
    """The inverse of merge: the base weight W back from W + (alpha / r) * B A, as a new
    tensor (exact up to float rounding)."""
    raise NotImplementedError("exercises/lora.py: unmerge")
