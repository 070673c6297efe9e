"""
Exercise: the GPT block, a pre-LayerNorm residual block (the GPT block lesson in
exercises/README.md).

Read model.Block.forward only after you have tried. Grade: python -m exercises check gpt_block

The parts are model.Block's own: ln_1 and ln_2 (nn.LayerNorm), attn (attention: the causal
self-attention, (B, T, C) -> (B, T, C)) and mlp (the feed-forward, (B, T, C) -> (B, T, C)).
Each sublayer reads a normalised copy of the residual stream and adds its output back to
the stream; the stream itself is never normalised inside the block (GPT-2, section 2.3, moved
the LayerNorm to each sublayer's input; the final one, ln_f, is the model's, not the block's).
"""

import torch  # noqa: F401


def block_forward(x, ln_1, attn, ln_2, mlp):
    """One block on the residual stream x (B, T, C); returns (B, T, C):

        x = x + attn(ln_1(x))
        x = x + mlp(ln_2(x))      # ln_2 reads the x that already holds the attention's output

    Return a new tensor: do not add into x in place (the caller's x must stay unchanged).
    """
    raise NotImplementedError("exercises/gpt_block.py: block_forward")
