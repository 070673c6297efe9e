"""exercises/causal_attention.py: the grader passes torch's attention, fails the stub, and
names each planted mistake."""

import math
from types import SimpleNamespace

import torch

from exercises.__main__ import grade
from exercises.graders import causal_attention as grader


def test_the_grader_passes_the_reference_and_fails_the_stub():
    ref = grade("causal_attention", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) >= 6, ref
    stub = grade("causal_attention")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def attention(diagonal=1, scale=None, dim=-1, mask=True):
    """A hand-written attention hiding keys s >= t + diagonal (1: the right causal mask)."""
    def causal_attention(q, k, v):
        T, hs = q.shape[-2], q.shape[-1]
        scores = q @ k.transpose(-2, -1) * (scale(hs) if scale else 1 / math.sqrt(hs))
        if mask:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(diagonal), float("-inf"))
        return torch.softmax(scores, dim=dim) @ v
    return SimpleNamespace(causal_attention=causal_attention)


def failing(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_a_hand_written_attention_passes():
    assert failing(attention()) == []


def test_planted_mistakes_get_their_hints():
    got = failing(attention(mask=False))
    assert got and all("no causal mask" in h for _, h in got)
    assert any(case.startswith("changing v") for case, _ in got)  # the causality property catches it too
    got = failing(attention(diagonal=0))  # -inf on the diagonal: position 0 sees nothing
    assert got and all("hides the diagonal" in h for _, h in got)
    got = failing(attention(diagonal=2))  # t also sees t + 1
    assert got and all("off by one" in h for _, h in got)
    got = failing(attention(scale=lambda hs: 1 / hs))
    assert got and all("1/head_size" in h for _, h in got)
    assert all("T, hs) = (1, 1, 1, 4)" not in case for case, _ in got)  # one position: the scale does not matter
    got = failing(attention(dim=-2))
    assert got and all("wrong dim" in h for _, h in got)


def test_a_wrong_shape_is_named():
    got = failing(SimpleNamespace(causal_attention=lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-1)))
    assert got and any("shaped like q" in h for _, h in got)
