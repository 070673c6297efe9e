"""
Exercise: freezing for parameter-efficient fine-tuning: BitFit (the PEFT lesson in
exercises/README.md).

Read peft.apply_bitfit and step.make_optimizer only after you have tried.
Grade: python -m exercises check peft_freeze
"""

import torch  # noqa: F401
import torch.nn as nn  # noqa: F401


def apply_bitfit(model):
    """BitFit (Ben Zaken et al. 2021): make the bias terms the only trainable parameters.

    Set requires_grad to True on every bias (each nn.Linear's and each nn.LayerNorm's) and to
    False on every other parameter: the Linear weights, the LayerNorm gains (their `weight`),
    the embeddings. Change no value: the model's output must stay what it was. Mind GPT's
    tied weight: lm_head.weight IS transformer.wte.weight, one tensor, and it is a weight.

    The model here has its biases already (GPT with bias=True); peft.apply_bitfit also adds
    zero biases where a module has none, which this exercise leaves out.

    Returns the number of trainable parameters: scalars (sum of numel), each tensor once.
    """
    raise NotImplementedError("exercises/peft_freeze.py: apply_bitfit")


def trainable_parameters(model):
    """The list of parameters to hand the optimizer: only those with requires_grad, each
    tensor once (a tied one too), in model.parameters() order. A frozen tensor does not
    belong there: the optimizer would carry it, and should it ever hold a .grad (one left
    from before it was frozen, say) AdamW would step it and its weight decay would shrink a
    weight that was meant to stay frozen."""
    raise NotImplementedError("exercises/peft_freeze.py: trainable_parameters")
