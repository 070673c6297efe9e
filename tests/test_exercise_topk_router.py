"""The top-k router exercise: its grader passes moe.py, calls the untouched stub not started,
and names the common mistakes of planted wrong implementations."""

from types import SimpleNamespace

import torch

from exercises.__main__ import grade
from exercises.graders import topk_router as grader

REF = grader.reference()


def hints(impl):
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_grader_passes_the_reference_and_calls_the_stub_not_started():
    ref = grade("topk_router", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("topk_router")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_gates_not_renormalised_get_their_hint():
    def topk_route(logits, k):
        p, i = logits.softmax(-1).topk(k, -1)
        return p, i  # the top-k of the full softmax, not summing to 1

    got = hints(SimpleNamespace(topk_route=topk_route, balancing_loss=REF.balancing_loss))
    assert got and all("not renormalised" in h for h in got), got


def test_softmax_over_the_tokens_gets_its_hint():
    def topk_route(logits, k):
        p, i = logits.softmax(0).topk(k, -1)
        return p / p.sum(-1, keepdim=True), i

    def balancing_loss(logits, indices, E):
        f = torch.bincount(indices.reshape(-1), minlength=E).float() / indices.numel()
        return E * (f * logits.softmax(0).mean(0)).sum()

    got = hints(SimpleNamespace(topk_route=topk_route, balancing_loss=REF.balancing_loss))
    assert got and all("wrong dim" in h for h in got), got
    got = hints(SimpleNamespace(topk_route=REF.topk_route, balancing_loss=balancing_loss))
    assert got and all("wrong dim" in h for h in got), got


def test_a_loss_without_the_n_experts_factor_gets_its_hint():
    def balancing_loss(logits, indices, E):
        f = torch.bincount(indices.reshape(-1), minlength=E).float() / indices.numel()
        return (f * logits.softmax(-1).mean(0)).sum()

    results = list(grader.cases(SimpleNamespace(topk_route=REF.topk_route, balancing_loss=balancing_loss)))
    failed = {case: h for case, ok, _, _, h in results if not ok}
    assert "balanced routing gives exactly 1, k=1" in failed
    assert failed and all("n_experts factor is missing" in h for h in failed.values()), failed
    assert all(ok for case, ok, *_ in results if case.startswith("route"))  # the router itself was right


def test_top1_only_f_gets_its_hint():
    def balancing_loss(logits, indices, E):
        f = torch.bincount(indices[:, 0], minlength=E).float() / indices.shape[0]
        return E * (f * logits.softmax(-1).mean(0)).sum()

    got = hints(SimpleNamespace(topk_route=REF.topk_route, balancing_loss=balancing_loss))
    assert got and all("k assignments" in h for h in got), got
