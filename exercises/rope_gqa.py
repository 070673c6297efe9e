"""
Exercise: rotary positions and grouped-query attention's shared key/value heads (the
README's "Parameter-lean models: GQA, RoPE, factorized embeddings, shared blocks").

Read model.rope and CausalSelfAttention.forward (model.py) only after you have tried.
Grade: python -m exercises check rope_gqa
"""

import torch  # noqa: F401  (you will need it)


def rope(x, start, theta):
    """RoPE (Su et al. 2021): x (B, n_head, T, head_size) with each position rotated by its
    angle, positions start, start + 1, ..., start + T - 1 (start > 0 when a KV cache already
    holds `start` tokens). Return a tensor of x's shape and dtype.

    The layout is GPT-NeoX's "rotate-half", the one model.py uses: with hs = head_size (even)
    and the last dimension cut into halves x1 = x[..., :hs/2] and x2 = x[..., hs/2:], pair i
    (i = 0 .. hs/2 - 1) is (x1[i], x2[i]) -- NOT the neighbours (x[2i], x[2i + 1]) of the
    paper's interleaved layout. At position m, pair i turns by the angle

        m * theta ** (-2i / hs)        (frequencies 1, theta^(-2/hs), theta^(-4/hs), ...)

    so that   out1 = x1 * cos - x2 * sin,   out2 = x1 * sin + x2 * cos,   out = [out1, out2].

    Compute the angles and the rotation in fp32 (a bf16 angle at position 1000 is off by
    several radians) and cast the result back to x's dtype. What it buys: norms are kept,
    position 0 is left as it is, and a query at m scored against a key at n depends on
    m and n only through m - n.
    """
    raise NotImplementedError("exercises/rope_gqa.py: rope")


def expand_kv(k, n_head):
    """Grouped-query attention (Ainslie et al. 2023): k (B, n_kv_head, T, hs), n_kv_head
    dividing n_head, to (B, n_head, T, hs), with each key/value head serving r = n_head /
    n_kv_head CONSECUTIVE query heads: query head h reads key/value head h // r. With 2 kv
    heads for 4 query heads the result's heads are [k0, k0, k1, k1], not [k0, k1, k0, k1].
    (model.py applies the same expansion to k and to v; n_kv_head = 1 is multi-query
    attention, n_kv_head = n_head leaves k as it is.)
    """
    raise NotImplementedError("exercises/rope_gqa.py: expand_kv")
