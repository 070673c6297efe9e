"""
Exercise: gradient (activation) checkpointing (a lesson in exercises/README.md).

Read model.GPT._trunk (its grad_checkpointing branch) only after you have tried. Grade:
python -m exercises check grad_checkpointing
"""

import torch  # noqa: F401
from torch.utils.checkpoint import checkpoint  # noqa: F401


def checkpointed_forward(blocks, x):
    """Run x through blocks (a list of modules, each tensor -> tensor of the same shape) in
    order, checkpointing each block on its own:

        for each block:  x = checkpoint(block, x, use_reentrant=False)
        return x

    The output and every gradient must equal a plain forward's (x = block(x) for each block).
    What changes is memory: a plain forward keeps every intermediate activation a block's
    backward needs (each Linear's input, each GELU's input, ...); a checkpointed block keeps
    only its input and recomputes the rest during backward, one block at a time. So one call
    per block, not one call around the whole stack (that would recompute every block at once
    in backward, holding all their activations together again).

    Use use_reentrant=False: the old reentrant version computes no gradient for the blocks'
    parameters when x itself does not require grad (as the output of a frozen embedding or a
    plain input tensor), and it is the one PyTorch asks you to leave.
    (model.py's blocks return (x, aux); these return a tensor alone.)
    """
    raise NotImplementedError("exercises/grad_checkpointing.py: checkpointed_forward")
