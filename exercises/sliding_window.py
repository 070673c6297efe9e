"""
Exercise: sliding-window attention, computed chunk by chunk (the sparse-attention lesson in
exercises/README.md).

Read attention.allowed and attention.SlidingTiles only after you have tried. Grade:
python -m exercises check sliding_window (or, while it is not in exercises.COURSE:
python -c "from exercises.__main__ import grade, show; show(grade('sliding_window'))")

The band (Longformer, Beltagy et al. 2020; Mistral, Jiang et al. 2023): query t attends to
the last `window` positions, itself included. For T = 8, window = 3 (x allowed):

    x . . . . . . .
    x x . . . . . .
    x x x . . . . .
    . x x x . . . .
    . . x x x . . .
    . . . x x x . .
    . . . . x x x .
    . . . . . x x x
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def sliding_mask(T, window):
    """(T, T) bool tensor, True where query t may attend to key s:

        t - window < s <= t

    (causal, and at most `window` keys per query, the query itself included). window >= T is
    plain causal attention."""
    raise NotImplementedError("exercises/sliding_window.py: sliding_mask")


def sliding_attention(q, k, v, window):
    """Sliding-window attention of q, k, v, each (B, H, T, hs), returning (B, H, T, hs), the
    same as dense attention under sliding_mask(T, window):

        softmax(q k^T / sqrt(hs) + (0 where allowed, -inf elsewhere)) v

    but computed chunk by chunk: split the T queries into chunks of `window` (the last one
    may be shorter); chunk c's queries need only the keys of chunk c - 1 and chunk c (a
    query at offset o of chunk c reaches back to offset o + 1 of chunk c - 1), with the band
    mask inside those at most 2 * window keys. So the work is ~T * 2 * window, not T^2.
    F.scaled_dot_product_attention accepts a bool attn_mask (True: attend)."""
    raise NotImplementedError("exercises/sliding_window.py: sliding_attention")
