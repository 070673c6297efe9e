"""
Exercise: the server's step of federated averaging (federated.py's docstring; FedAvg,
McMahan et al. 2017, Algorithm 1), and what averaging LoRA's factors separately misses
(FedIT, Zhang et al. 2024).

Read federated.aggregate and federated.lora_product_gap only after you have tried.
Grade: python -m exercises check fedavg
"""

import torch  # noqa: F401  (you will need it)


def aggregate(global_w, updates, sizes, server_lr=1.0):
    """The server's update of one round. global_w: {name: tensor}, the global weights w_t
    the round's clients started from; updates: a list with one {name: tensor} per client,
    client k's update d_k = w_k - w_t (its weights after local training minus w_t: a
    difference, not the weights), with the same names and shapes as global_w; sizes: a list
    of ints, n_k = client k's number of training examples (the same order as updates).

    Return a new dict {name: tensor} holding, for every name of global_w,

        w_{t+1} = w_t + server_lr * sum_k (n_k / n) d_k,    n = sum_k n_k

    each tensor with its w_t's shape and dtype. Leave the caller's tensors as they were
    (global_w and updates unchanged: build new tensors, no in-place ops on them). Mind that
    n_k / n is a fraction of two ints."""
    raise NotImplementedError("exercises/fedavg.py: aggregate")


def product_gap(As, Bs, sizes):
    """With LoRA only the factors travel: client k sends A_k (r, in) and B_k (out, r), its
    layer's update being B_k A_k (out, in), and the server averages A and B separately (the
    weighted means of aggregate: p_k = n_k / n). Return, as a float, how far the product of
    the means is from the mean of the products, relative to the latter:

        || sum_k p_k B_k A_k - (sum_k p_k B_k)(sum_k p_k A_k) || / || sum_k p_k B_k A_k ||

    with || . || the Frobenius norm (the square root of the sum of squares), and 0.0 when
    the denominator is 0. As, Bs: lists of tensors, one per client; sizes: a list of ints."""
    raise NotImplementedError("exercises/fedavg.py: product_gap")
