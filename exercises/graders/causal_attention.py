"""Grader of exercises/causal_attention.py: against torch's scaled_dot_product_attention
(is_causal=True, as model.py's CausalSelfAttention calls it), and the causality property."""

import math

import torch

SHAPES = [(1, 1, 1, 4), (1, 2, 7, 8), (2, 3, 5, 16), (2, 2, 12, 32)]  # (B, n_head, T, head_size)


def reference():
    from types import SimpleNamespace

    import torch.nn.functional as F

    return SimpleNamespace(causal_attention=lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))


def inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    # scaled up so that the softmax is far from uniform and the usual mistakes differ clearly
    return [torch.randn(shape, generator=g) * 2 for _ in range(3)]


def mistakes(q, k, v):
    """[(hint, output)] for the usual wrong versions, in the order they are checked."""
    T, hs = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1)
    later = lambda d: torch.ones(T, T, dtype=torch.bool).triu(d)  # True where key s >= t + d is hidden

    def attend(s, hidden, dim=-1):
        return torch.softmax(s.masked_fill(hidden, float("-inf")), dim=dim) @ v

    none = torch.zeros(T, T, dtype=torch.bool)
    return [
        ("no causal mask: every position attends to the future too (mask scores where key > query with -inf)",
         attend(scores / math.sqrt(hs), none)),
        ("the mask hides the diagonal too: a token must see itself (keep s <= t; triu(diagonal=1), not 0)",
         attend(scores / math.sqrt(hs), later(0))),
        ("the mask is off by one: position t also sees t + 1 (hide s > t: triu(diagonal=1), not 2)",
         attend(scores / math.sqrt(hs), later(2))),
        ("scaled by 1/head_size: divide the scores by sqrt(head_size)", attend(scores / hs, later(1))),
        ("not scaled: divide the scores by sqrt(head_size)", attend(scores, later(1))),
        ("softmax over the wrong dim: normalise over the keys, the last dim (each query's row sums to 1)",
         attend(scores / math.sqrt(hs), later(1), dim=-2)),
    ]


def hint(q, k, v, got):
    if not torch.is_tensor(got) or got.shape != q.shape:
        return f"return a tensor shaped like q: {tuple(q.shape)}"
    if torch.isnan(got).any():
        if torch.isnan(got[..., 0, :]).all():
            return "position 0 is NaN: its whole row is masked. The mask hides the diagonal too: a token must see " \
                   "itself (keep s <= t; triu(diagonal=1), not 0)"
        return "NaN in the output: a row with every score -inf, or a mask applied after the softmax"
    for text, wrong in mistakes(q, k, v):
        if torch.allclose(got.float(), wrong, rtol=1e-4, atol=1e-5):
            return text
    return "compare with the docstring: q @ k^T / sqrt(hs), -inf where key > query, softmax over the keys, @ v"


def cases(impl):
    ref = reference().causal_attention
    for i, shape in enumerate(SHAPES):
        q, k, v = inputs(shape, i)
        want = ref(q, k, v)
        got = impl.causal_attention(q.clone(), k.clone(), v.clone())
        ok = torch.is_tensor(got) and got.shape == want.shape and torch.allclose(got.float(), want, rtol=1e-4,
                                                                                 atol=1e-5)
        summary = lambda x: f"{tuple(x.shape)}, out[0, 0, -1, :3] = {x[0, 0, -1, :3].tolist()}" if torch.is_tensor(
            x) and x.dim() == 4 else x
        yield f"value, (B, n_head, T, hs) = {shape}", ok, summary(want), summary(got), \
            None if ok else hint(q, k, v, got)
    # causality: changing key or value at position t leaves every output before t unchanged
    q, k, v = inputs((2, 2, 9, 8), 10)
    t = 5
    base = impl.causal_attention(q.clone(), k.clone(), v.clone())
    for name in ("v", "k"):
        k2, v2 = k.clone(), v.clone()
        (v2 if name == "v" else k2)[..., t:, :] += 3.0
        changed = impl.causal_attention(q.clone(), k2, v2)
        same_shape = torch.is_tensor(base) and torch.is_tensor(changed) and base.shape == changed.shape == q.shape
        diff = (changed[..., :t, :] - base[..., :t, :]).abs().max().item() if same_shape else None
        ok = same_shape and diff <= 1e-6
        yield f"changing {name} at positions >= {t} leaves outputs before {t} unchanged", ok, 0.0, diff, \
            None if ok else hint(q, k, v, base)
