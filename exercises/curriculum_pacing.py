"""
Exercise: the pacing of a sequence-length warmup (the README's "Curricula: sequence-length
warmup, easy-to-hard ordering, mixtures in stages").

Read batches.pace and batches.seqlen_at only after you have tried.
Grade: python -m exercises check curriculum_pacing
"""

import math  # noqa: F401  (you will need it)


def seqlen_at(it, start, block_size, iters, pacing, tokens):
    """The window length at optimizer step `it` (0-based) of a sequence-length warmup (Li et
    al. 2022) that grows from `start` to `block_size` over `iters` steps. `tokens` is a
    micro-batch's tokens, batch_size * block_size; `start` is a multiple of 8 that divides it.

    From step `iters` on: block_size. Before it, with progress p = it / iters:
        pace = p                   for pacing "linear"
               sqrt(p)             for "root" (faster early)
               floor(4 * p) / 4    for "step" (four equal stages: 0, 1/4, 1/2, 3/4)
        raw  = start + pace * (block_size - start)        (a float)
    and the length is the LARGEST n among start, start + 8, start + 16, ..., block_size with
        n <= raw    (round DOWN: never longer than the pacing says)
        tokens % n == 0    (n divides tokens)
    So every length is a multiple of 8 (friendly to the matmuls), and a micro-batch of
    tokens / n windows of length n holds exactly `tokens` tokens: the tokens per step never
    change during the warmup. Return an int.
    """
    raise NotImplementedError("exercises/curriculum_pacing.py: seqlen_at")
