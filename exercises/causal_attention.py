"""
Exercise: causal self-attention, the core of every block (see exercises/README.md).

Read model.py's CausalSelfAttention.forward only after you have tried (it calls
torch.nn.functional.scaled_dot_product_attention; you may not). Grade:
python -m exercises check causal_attention
"""

import math  # noqa: F401  (you will need it)

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def causal_attention(q, k, v):
    """Scaled dot-product attention with a causal mask, written out by hand.

    q, k, v: (B, n_head, T, head_size) tensors; returns a tensor of the same shape.

        scores = q @ k^T / sqrt(head_size)              (B, n_head, T, T): query t, key s
        scores[..., t, s] = -inf wherever s > t         a token sees itself and the past only
        weights = softmax(scores) over the keys          each query's row sums to 1
        out = weights @ v

    Why sqrt(head_size): the dot product of two vectors with unit-variance entries has
    variance head_size; dividing by its square root keeps the scores' size independent of
    the head size, so the softmax does not saturate (Vaswani et al. 2017, section 3.2.1).
    Why the mask: in training every position predicts the next token at once; a position
    that could see a later token would read its own answer. Build the mask with
    torch.tril or torch.triu on a (T, T) tensor and mind which diagonal you keep: token 0
    must still see something. Do not use F.scaled_dot_product_attention.
    """
    raise NotImplementedError("exercises/causal_attention.py: causal_attention")
