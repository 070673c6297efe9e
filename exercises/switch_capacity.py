"""
Exercise: Switch expert capacity and dropped tokens (the MoE lesson in exercises/README.md).

Read moe.MoE.capacity and the dispatch in moe.MoE.forward only after you have tried.
Grade: python -m exercises check switch_capacity
"""

import math  # noqa: F401  (you will need it)

import torch  # noqa: F401


def switch_dispatch(expert_index, n_experts, capacity_factor):
    """Which tokens the Switch router (Fedus et al. 2021, top-1) lets into their expert.

    expert_index: (N,) int tensor, the expert each token chose, tokens in order of arrival
    (their position in the flattened B*T batch). Each expert takes at most

        capacity = ceil(capacity_factor * N / n_experts)      (Switch eq. 3)

    tokens, the same capacity for every expert. They are admitted first come, first served:
    an expert keeps the first `capacity` tokens that chose it, in order of arrival, and the
    later ones are dropped (they skip the expert; the block's residual carries them through).

    Returns (keep, dropped): keep, a bool tensor (N,), True for a token its expert takes;
    dropped, the fraction of the N tokens dropped (a float in [0, 1]).
    No loop over tokens is needed (but one is allowed: get it right first).
    """
    raise NotImplementedError("exercises/switch_capacity.py: switch_dispatch")
