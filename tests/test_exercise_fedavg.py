"""The fedavg exercise: its grader passes federated.aggregate and federated.lora_product_gap,
finds the untouched stub not started, and names each planted mistake in its hints."""

import math
from types import SimpleNamespace

import torch

from exercises.__main__ import grade
from exercises.graders import fedavg as grader


def hints(**overrides):
    impl = SimpleNamespace(**{**written_out(), **overrides})
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def written_out(unweighted=False, unnormalised=False, plain_sum=False, floor=False, no_base=False, minus_w=False,
                no_lr=False, in_place=False, scale_deltas=False, drop_1d=False, float64=False, gap_unweighted=False,
                gap_mixed=False, gap_denominator=False, gap_absolute=False, gap_squared=False):
    """The two functions written out, with a knob for each mistake."""
    def aggregate(global_w, updates, sizes, server_lr=1.0):
        n, K = sum(sizes), len(sizes)
        if unweighted:
            p = [1 / K] * K
        elif unnormalised:
            p = list(sizes)
        elif plain_sum:
            p = [1] * K
        elif floor:
            p = [s // n for s in sizes]
        else:
            p = [s / n for s in sizes]
        lr = 1.0 if no_lr else server_lr
        new = {}
        for name, w in global_w.items():
            if drop_1d and w.dim() == 1:
                continue
            avg = torch.zeros(w.shape, dtype=torch.float64 if float64 else w.dtype)
            for c, d in zip(p, updates):
                avg += d[name].mul_(c) if scale_deltas else c * d[name]
            if in_place:
                new[name] = w.add_(lr * avg)
            elif no_base:
                new[name] = lr * avg
            elif minus_w:
                new[name] = w + lr * (avg - w)
            else:
                new[name] = w + lr * avg
        return new

    def product_gap(As, Bs, sizes):
        n, K = sum(sizes), len(sizes)
        p = [1 / K] * K if gap_unweighted else [s / n for s in sizes]
        q = [1 / K] * K if gap_mixed else p
        prod = sum(c * (B @ A) for c, A, B in zip(p, As, Bs))
        means = sum(c * B for c, B in zip(q, Bs)) @ sum(c * A for c, A in zip(q, As))
        num = (prod - means).pow(2).sum().item()
        den = 1.0 if gap_absolute else (means if gap_denominator else prod).pow(2).sum().item()
        if den == 0:
            return 0.0
        return num / den if gap_squared else math.sqrt(num / den)

    return dict(aggregate=aggregate, product_gap=product_gap)


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("fedavg", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) == len(grader.ROUNDS) + 1 + 4, ref
    stub = grade("fedavg")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_functions_pass():
    assert hints() == []


def test_each_mistake_gets_its_hint():
    for knobs, words in [
        (dict(unweighted=True), "plain mean over the clients"),  # 1/K: right only when the sizes are equal
        (dict(unnormalised=True), "divided by n = sum_k n_k"),
        (dict(plain_sum=True), "a plain sum of the updates"),
        (dict(floor=True), "true division"),  # n_k // n = 0: the server never moves
        (dict(no_base=True), "differences d_k = w_k - w_t, not weights"),  # the weighted mean of the deltas alone
        (dict(minus_w=True), "differences d_k = w_k - w_t, not weights"),  # the deltas taken for weights w_k
        (dict(no_lr=True), "server_lr is missing"),
        (dict(in_place=True), "a new dict of new tensors"),  # right values, the caller's global_w changed
        (dict(scale_deltas=True), "a new dict of new tensors"),  # right values, the caller's updates scaled
        (dict(drop_1d=True), "must be in the result"),  # a bias left out
        (dict(float64=True), "dtype"),
        (dict(gap_unweighted=True), "not 1/K each"),
        (dict(gap_mixed=True), "the same weights n_k / n in all three means"),
        (dict(gap_denominator=True), "not of the product of the means"),
        (dict(gap_absolute=True), "relative"),
        (dict(gap_squared=True), "square root"),
    ]:
        got = hints(**written_out(**knobs))
        assert got and all(words in h for h in got), (knobs, got)


def test_the_deltas_taken_for_weights_is_named_where_server_lr_tells_them_apart():
    # at server_lr = 1, w + (mean - w) = mean: the same as forgetting w; at 0.5 and 2 it is not
    got = hints(**written_out(minus_w=True))
    assert any("do not subtract w_t" in h for h in got) and any("add their weighted mean" in h for h in got), got
