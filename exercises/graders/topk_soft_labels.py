"""Grader of exercises/topk_soft_labels.py: against distill.kd_loss_topk with the "other"
bucket, equal to distill.kd_loss at k = V - 1, and finite for a confident student."""

import torch


def reference():
    from types import SimpleNamespace

    from distill import kd_loss_topk

    return SimpleNamespace(kd_loss_topk_bucket=lambda s, tv, ti, tail, temperature: kd_loss_topk(
        s, tv, ti, temperature=temperature, tail_logsumexp=tail))


def teacher_topk(t, k, T):
    """(top_values, top_indices, tail_logsumexp) of full teacher logits t: what a soft-label cache stores."""
    tv, ti = t.topk(k, dim=-1)
    tail = torch.logsumexp((t / T).scatter(-1, ti, float("-inf")), dim=-1)
    return tv, ti, tail


def close(a, b, rtol=1e-4, atol=1e-6):
    return torch.is_tensor(a) and a.shape == () and bool(torch.isfinite(a)) and \
        torch.allclose(a.double(), torch.as_tensor(b).double(), rtol=rtol, atol=atol)


def hint(s, tv, ti, tail, T, got, want):
    from distill import kd_loss_topk

    if not torch.is_tensor(got) or got.shape != ():
        return "return a scalar tensor: the mean over positions"
    if not torch.isfinite(got):
        return ("not finite: the student's bucket must stay in log space (logsumexp of its log-probs off the k "
                "tokens); log(1 - sum of k probabilities) is log 0 when the student is confident")
    if T != 1 and close(got, want / (T * T)):
        return "the T^2 factor is missing: multiply the KL by temperature ** 2"
    if close(got, kd_loss_topk(s, tv, ti, temperature=T)):
        return ("that is the renormalised loss without the bucket: append tail_logsumexp to the teacher's k scaled "
                "logits and the student's off-k mass to its k log-probs, k + 1 outcomes each")
    q = torch.softmax(s.float() / T, -1).gather(-1, ti)
    naive = torch.log((1 - q.sum(-1, keepdim=True)).clamp_min(0))
    log_q = torch.cat([q.log(), naive], -1)
    log_p = torch.log_softmax(torch.cat([tv / T, tail.unsqueeze(-1)], -1), -1)
    if close(got, (log_p.exp() * (log_p - log_q)).sum(-1).mean() * T * T, rtol=1e-6, atol=0):
        return "the student's bucket as log(1 - sum of its k probabilities) loses precision: logsumexp its log-probs off the k"
    return "compare with the docstring: k + 1 outcomes for both, p * (log p - log q), sum, mean over positions, times T^2"


def cases(impl):
    from distill import kd_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 13, generator=g) * 2, torch.randn(3, 5, 13, generator=g) * 2
    for k, T in ((4, 1.0), (4, 2.0), (1, 4.0)):
        tv, ti, tail = teacher_topk(t, k, T)
        want = reference().kd_loss_topk_bucket(s, tv, ti, tail, T)
        got = impl.kd_loss_topk_bucket(s.clone(), tv.clone(), ti.clone(), tail.clone(), T)
        ok = close(got, want)
        yield f"value at k={k}, T={T:g}", ok, f"{want.item():.6f}", got, None if ok else hint(s, tv, ti, tail, T, got, want)

    T = 2.0
    tv, ti, tail = teacher_topk(t, t.shape[-1] - 1, T)
    want = kd_loss(s, t, T)
    got = impl.kd_loss_topk_bucket(s.clone(), tv, ti, tail, T)
    ok = close(got, want)
    yield "k = V - 1 equals the full kd_loss", ok, f"{want.item():.6f}", got, \
        None if ok else hint(s, tv, ti, tail, T, got, reference().kd_loss_topk_bucket(s, tv, ti, tail, T))

    # a confident student: its top-k hold all but ~e^-40 of its mass, which fp32's 1 - sum cannot see
    T, k = 1.0, 4
    tv, ti, tail = teacher_topk(t, k, T)
    sc = torch.zeros_like(s).scatter(-1, ti, 40.0)
    want = reference().kd_loss_topk_bucket(sc, tv, ti, tail, T)
    got = impl.kd_loss_topk_bucket(sc.clone(), tv, ti, tail, T)
    ok = close(got, want)
    yield "a confident student (bucket mass ~1e-17)", ok, f"{want.item():.6f}", got, \
        None if ok else hint(sc, tv, ti, tail, T, got, want)
