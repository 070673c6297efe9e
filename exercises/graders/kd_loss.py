"""Grader of exercises/kd_loss.py: against distill.kd_loss, and the properties that define it."""

import torch


def reference():
    from types import SimpleNamespace

    from distill import kd_loss as repo_kd_loss

    return SimpleNamespace(kd_loss=lambda s, t, temperature: repo_kd_loss(s, t, temperature))


def hint(s, t, T, got, want):
    import torch.nn.functional as F

    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    forward = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    reverse = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    close = lambda a, b: torch.allclose(torch.as_tensor(a, dtype=torch.float64), b.double(), rtol=1e-4, atol=1e-6)
    if close(got, forward) and T != 1:
        return "the T^2 factor is missing: multiply the KL by temperature ** 2"
    if close(got, reverse * T * T):
        return "that is the reverse KL, KL(q_s || p_t): the teacher's distribution weights the sum"
    if close(got, forward * T * T * s.shape[-1]):
        return "average over positions, sum over the vocabulary (F.kl_div's 'batchmean' is per row of 2-D input)"
    return "compare with the docstring: log_softmax of both, p_t * (log p_t - log q_s), sum over V, mean, times T^2"


def cases(impl):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g) * 2, torch.randn(3, 5, 11, generator=g) * 2
    for T in (1.0, 2.0, 4.0):
        want = reference().kd_loss(s, t, T)
        got = impl.kd_loss(s.clone(), t.clone(), T)
        ok = torch.is_tensor(got) and got.shape == () and torch.allclose(got.float(), want, rtol=1e-5, atol=1e-6)
        yield f"value at T={T:g}", ok, f"{want.item():.6f}", got, None if ok else hint(s, t, T, got, want)
    got = impl.kd_loss(t.clone(), t.clone(), 2.0)
    ok = torch.is_tensor(got) and abs(got.item()) < 1e-6
    yield "student = teacher gives 0", ok, 0.0, got, None if ok else "KL(p || p) is 0: check the signs"
    # the T^2 factor keeps the gradient's size roughly independent of T (Hinton et al., section 2)
    norms = []
    for T in (2.0, 8.0):
        x = s.clone().requires_grad_(True)
        try:
            impl.kd_loss(x, t, T).backward()
        except RuntimeError:  # "element 0 of tensors does not require grad": the graph was cut
            pass
        norms.append(x.grad.norm().item() if x.grad is not None else 0.0)
    ref = []
    for T in (2.0, 8.0):
        x = s.clone().requires_grad_(True)
        reference().kd_loss(x, t, T).backward()
        ref.append(x.grad.norm().item())
    ok = all(abs(a - b) <= 1e-4 * max(1.0, b) for a, b in zip(norms, ref))
    yield "gradient size at T=2 and T=8", ok, [round(r, 5) for r in ref], [round(n, 5) for n in norms], \
        None if ok else "the gradient must flow through your loss (no .item(), no .detach()) and keep T^2"
