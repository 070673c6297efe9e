"""
Exercise: the top-k router and its load-balancing loss (the MoE lesson in exercises/README.md).

Read moe.MoE.route and the losses in moe.MoE.forward only after you have tried.
Grade: python -m exercises check topk_router
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def topk_route(router_logits, k):
    """The top-k router (Shazeer et al. 2017; Mixtral), dropless.

    router_logits: (N, n_experts), one row per token. Returns (gates, indices), both (N, k):
        probs   = softmax of the router logits, over the experts of each token
        indices = the k most probable experts of each token, most probable first
                  (the order torch.topk gives)
        gates   = those k probabilities renormalised to sum to 1 over the k
    (Mixtral writes the gates as a softmax over the k chosen logits: the same numbers.)
    Compute in fp32; the gates must keep their gradient.
    """
    raise NotImplementedError("exercises/topk_router.py: topk_route")


def balancing_loss(router_logits, indices, n_experts):
    """Switch's load-balancing loss (Fedus et al. 2021, eq. 4-6), unweighted:

        loss = n_experts * sum_i f_i * P_i

    f_i: the fraction of routed (token, expert) pairs that chose expert i: every one of the
         k assignments of every token counts, so the N * k entries of `indices` (N, k)
         are the denominator and the f_i sum to 1.
    P_i: the mean router probability of expert i over the N tokens, from the full softmax
         of router_logits (N, n_experts), not from the k gates.
    Returns a scalar tensor. Perfectly balanced routing (every f_i = 1 / n_experts) gives
    exactly 1; every token sent to one expert that the router is sure of gives about n_experts.
    The gradient reaches the router through P only (f counts, it is not differentiable).
    """
    raise NotImplementedError("exercises/topk_router.py: balancing_loss")
