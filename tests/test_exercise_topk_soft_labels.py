"""The top-k soft-label exercise: its grader passes distill.kd_loss_topk with the bucket,
reads the stub as not started, and names the usual mistakes (the bucket dropped and the k
renormalised, the student's bucket as log(1 - sum) in probability space, T^2 missing)."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from distill import kd_loss_topk
from exercises.__main__ import grade
from exercises.graders import topk_soft_labels as grader


def failing_hints(fn):
    return [(case, h) for case, ok, _, _, h in grader.cases(SimpleNamespace(kd_loss_topk_bucket=fn)) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("topk_soft_labels", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("topk_soft_labels")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def loss(s, tv, ti, tail, T, naive_bucket=False, t_squared=True):
    log_q_full = F.log_softmax(s.float() / T, -1)
    log_q = log_q_full.gather(-1, ti)
    if naive_bucket:
        bucket = torch.log(1 - log_q.exp().sum(-1, keepdim=True))
    else:
        bucket = torch.logsumexp(log_q_full.scatter(-1, ti, float("-inf")), -1, keepdim=True)
    log_q = torch.cat([log_q, bucket], -1)
    log_p = F.log_softmax(torch.cat([tv.float() / T, tail.float().unsqueeze(-1)], -1), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * (T * T if t_squared else 1)


def test_a_correct_implementation_passes():
    assert failing_hints(loss) == []


def test_the_bucket_dropped_gets_its_hint():
    got = failing_hints(lambda s, tv, ti, tail, T: kd_loss_topk(s, tv, ti, temperature=T))
    assert got and all("without the bucket" in h for _, h in got), got


def test_the_bucket_in_probability_space_gets_its_hint():
    got = failing_hints(lambda s, tv, ti, tail, T: loss(s, tv, ti, tail, T, naive_bucket=True))
    assert [c for c, _ in got] == ["a confident student (bucket mass ~1e-17)"], got
    assert "log space" in got[0][1]


def test_t_squared_missing_gets_its_hint():
    got = failing_hints(lambda s, tv, ti, tail, T: loss(s, tv, ti, tail, T, t_squared=False))
    assert any("T=2" in c and "T^2 factor is missing" in h for c, h in got), got
    assert any(c.startswith("k = V - 1") and "T^2" in h for c, h in got), got
