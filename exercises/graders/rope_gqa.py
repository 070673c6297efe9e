"""Grader of exercises/rope_gqa.py: rope against model.rope (values, kept norms, position 0,
scores that depend only on relative position, dtype) and expand_kv against
repeat_interleave along the heads, as model.py's CausalSelfAttention expands k and v."""

import torch


def reference():
    from types import SimpleNamespace

    from model import rope as repo_rope

    def expand_kv(k, n_head):  # model.py, CausalSelfAttention.forward, grouped-query attention
        return k.repeat_interleave(n_head // k.shape[1], dim=1)

    return SimpleNamespace(rope=lambda x, start, theta: repo_rope(x, start, theta), expand_kv=expand_kv)


def _rotate(x, start, theta, exponent, interleaved=False):
    """RoPE's common mistakes, to recognise them: frequencies theta^(-exponent * i / hs)
    and the interleaved-pairs layout."""
    T, hs = x.shape[-2], x.shape[-1]
    freqs = theta ** (-exponent * torch.arange(hs // 2, dtype=torch.float32) / hs)
    ang = torch.arange(start, start + T, dtype=torch.float32)[:, None] * freqs
    cos, sin = ang.cos(), ang.sin()
    xf = x.float()
    if interleaved:
        a, b = xf[..., 0::2], xf[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    a, b = xf.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def _close(got, want, tol=1e-5):
    return torch.is_tensor(got) and got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)


def rope_hint(x, start, theta, got, tol=1e-5, otherwise=None):
    if not torch.is_tensor(got) or got.shape != x.shape:
        return f"return a tensor of x's shape {tuple(x.shape)}"
    close = lambda want: _close(got, want, tol)
    if close(_rotate(x, start, theta, 2, interleaved=True)) or close(_rotate(x, start, theta, 1, interleaved=True)):
        return "that is the interleaved-pairs layout (x[2i], x[2i+1]): model.py pairs x[i] with x[i + hs/2] (rotate-half)"
    if close(_rotate(x, start, theta, 1)):
        return "frequencies theta^(-i/hs) with i = 0 .. hs/2-1: use theta^(-2i/hs) (torch.arange(0, hs, 2) / hs)"
    if close(_rotate(x, 0, theta, 2)) and start:
        return "positions run from start to start + T - 1, not from 0"
    if close(_rotate(x, start, theta, -2)):
        return "the rotation turns the wrong way: out1 = x1 cos - x2 sin, out2 = x1 sin + x2 cos"
    return otherwise or "compare with the docstring: halves x1, x2; angle (start + t) * theta^(-2i/hs); fp32"


def cases(impl):
    ref = reference()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=g)
    for start, theta in ((0, 10000.0), (5, 10000.0), (3, 100.0)):
        want, got = ref.rope(x, start, theta), impl.rope(x.clone(), start, theta)
        ok = _close(got, want)
        yield f"rope values, start={start}, theta={theta:g}", ok, want[0, 0, -1, :4].tolist(), \
            got[0, 0, -1, :4].tolist() if torch.is_tensor(got) else got, None if ok else rope_hint(x, start, theta, got)
    got = impl.rope(x.clone(), 11, 10000.0)
    ok = torch.is_tensor(got) and torch.allclose(got.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    yield "norms kept (a rotation)", ok, round(x[0, 0, -1].norm().item(), 5), \
        round(got[0, 0, -1].norm().item(), 5) if torch.is_tensor(got) else got, \
        None if ok else "each pair is rotated, not scaled: use cos and sin of the same angle, both halves"
    got = impl.rope(x[:, :, :1].clone(), 0, 10000.0)
    ok = torch.is_tensor(got) and torch.allclose(got, x[:, :, :1], atol=1e-6)
    yield "position 0 unchanged", ok, x[0, 0, 0, :4].tolist(), got[0, 0, 0, :4].tolist() if torch.is_tensor(got) else got, \
        None if ok else "the angle is position * frequency: 0 at position 0 (positions start at `start`, here 0)"
    q, k = torch.randn(1, 2, 6, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    scores = [impl.rope(q.clone(), s, 10000.0) @ impl.rope(k.clone(), s, 10000.0).transpose(-2, -1) for s in (0, 13)]
    ok = torch.allclose(scores[0], scores[1], rtol=1e-4, atol=1e-4) and not torch.allclose(scores[0], q @ k.transpose(-2, -1), atol=1e-3)
    yield "scores q.k depend only on relative position (start 0 vs 13)", ok, \
        round(scores[0][0, 0, 5, 2].item(), 5), round(scores[1][0, 0, 5, 2].item(), 5), \
        None if ok else "rotate q and k by the same angles at the same positions (start + t), x1 with x2 of the same pair"
    xb = x.to(torch.bfloat16)
    fp32 = "compute the angles and the rotation in fp32 (x.float(); a bf16 angle at position 900 is off by radians), return .to(x.dtype)"
    want, got = ref.rope(xb, 900, 10000.0), impl.rope(xb.clone(), 900, 10000.0)
    ok = torch.is_tensor(got) and got.dtype == torch.bfloat16 and torch.allclose(got.float(), want.float(), atol=3e-2, rtol=3e-2)
    yield "bf16 in, bf16 out, angles in fp32 (positions 900..906)", ok, "bfloat16, as model.rope", \
        got.dtype if torch.is_tensor(got) else got, None if ok else fp32 if not torch.is_tensor(got) or got.dtype != xb.dtype \
        else rope_hint(xb, 900, 10000.0, got, tol=3e-2, otherwise=fp32)

    kv = torch.randn(2, 2, 5, 4, generator=g)
    for n_kv, n_head in ((2, 6), (3, 6), (1, 4), (4, 4)):
        kk = kv.repeat(1, 2, 1, 1)[:, :n_kv]  # n_kv distinct heads
        want, got = ref.expand_kv(kk, n_head), impl.expand_kv(kk.clone(), n_head)
        ok = torch.is_tensor(got) and got.shape == want.shape and torch.equal(got, want)
        if ok:
            h = None
        elif torch.is_tensor(got) and got.shape == want.shape and torch.equal(got, kk.repeat(1, n_head // n_kv, 1, 1)):
            h = "heads in the wrong groups: .repeat tiles [k0, k1, k0, k1]; query head h reads kv head h // r: repeat_interleave(r, dim=1)"
        elif torch.is_tensor(got) and got.shape != want.shape:
            h = f"the shape must be (B, n_head, T, hs) = {tuple(want.shape)}: repeat along dim 1, the heads"
        else:
            h = "each kv head serves n_head / n_kv_head consecutive query heads: repeat_interleave along dim 1"
        yield f"expand_kv, {n_kv} kv heads for {n_head} query heads", ok, \
            [round(v, 4) for v in want[0, :, 0, 0].tolist()], \
            [round(v, 4) for v in got[0, :, 0, 0].tolist()] if torch.is_tensor(got) and got.dim() == 4 else got, h
