"""
Exercise: structured pruning of an MLP, by hand (the README's "Compact models:
quantization and pruning"; prune.py does it for every dimension of a GPT).

Read prune.py (magnitude_importance, keep_count, keep_indices, prune_model) only after you
have tried. Grade: python -m exercises check mlp_pruning
"""

import math  # noqa: F401  (you will need it)

import torch  # noqa: F401


def magnitude_scores(fc_weight, fc_bias, proj_weight):
    """Each hidden neuron's importance by weight magnitude (the data-free baseline): the L2
    norm of everything that feeds or leaves neuron i,
        score_i = sqrt( sum_c fc_weight[i, c]^2 + fc_bias[i]^2 + sum_c proj_weight[c, i]^2 )
    fc_weight (H, C) and fc_bias (H,) or None are the MLP's c_fc (C -> H); proj_weight (C, H)
    its c_proj (H -> C), as nn.Linear stores them (out_features first). Return (H,)."""
    raise NotImplementedError("exercises/mlp_pruning.py: magnitude_scores")


def keep_indices(scores, keep):
    """The neurons to keep: the round(keep * H) highest scores (half rounds up: floor(keep *
    H + 0.5), and at least 1), returned as a 1-D LongTensor in INCREASING index order, not
    score order (the kept neurons stay in the order the model had them). Ties: the earlier
    neuron first."""
    raise NotImplementedError("exercises/mlp_pruning.py: keep_indices")


def prune_mlp(fc_weight, fc_bias, proj_weight, kept):
    """The smaller MLP holding only the neurons in kept (increasing indices, H' of them):
    return (fc_weight (H', C), fc_bias (H',) or None, proj_weight (C, H')). The pruned MLP's
    output must equal the original's with the dropped neurons' activations set to zero."""
    raise NotImplementedError("exercises/mlp_pruning.py: prune_mlp")
