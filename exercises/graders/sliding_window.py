"""Grader of exercises/sliding_window.py: the mask against attention.allowed(T, "sliding",
window), the output against dense F.scaled_dot_product_attention under that mask, for T a
multiple of the window and not, a window at least T (full causal attention) and T = 1."""

import torch
import torch.nn.functional as F
from exercises.graders import call

SIZES = ((12, 4), (10, 4), (13, 5), (6, 8), (5, 5), (1, 3), (7, 1))  # (T, window)


def reference():
    from types import SimpleNamespace

    from attention import allowed

    def sliding_mask(T, window):
        return allowed(T, "sliding", window=window)

    def sliding_attention(q, k, v, window):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed(q.shape[-2], "sliding", window=window))

    return SimpleNamespace(sliding_mask=sliding_mask, sliding_attention=sliding_attention)


def band(T, lo, hi):
    """(T, T) bool: lo <= t - s <= hi, causal when lo >= 0."""
    d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (d >= lo) & (d <= hi)


def own_chunk(T, window):
    """The band cut at chunk boundaries: each chunk of `window` queries sees only itself."""
    t = torch.arange(T)
    return band(T, 0, window - 1) & ((t[:, None] // window) == (t[None, :] // window))


WIDE = "the band is one too wide: t - window < s (strict), so a query sees `window` keys, itself included"
SELF = "a query must see itself: s <= t, not s < t (row 0 would see nothing and give NaN)"
PREVIOUS = ("chunk c must read the keys of chunk c - 1 too: the outputs differ only at the early positions "
            "of each chunk after the first, which reach back into the previous chunk")


def mask_hint(got, T, window):
    if not (torch.is_tensor(got) and got.shape == (T, T)):
        return f"return a (T, T) tensor, T = {T}: rows are queries t, columns keys s"
    got = got.bool()
    for wrong, hint in ((band(T, 0, window), WIDE), (band(T, 1, window - 1), SELF), (band(T, 1, window), SELF),
                        (band(T, -window + 1, 0), "rows are queries t and columns keys s: the mask is transposed"),
                        (band(T, 0, T), "the mask must be causal and banded: t - window < s <= t"),
                        (own_chunk(T, window), "the mask is t - window < s <= t for every t, not cut into chunks")):
        if torch.equal(got, wrong):
            return hint
    return "compare with the docstring: True where t - window < s <= t"


def qkv(T, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, T, 8, generator=g) for _ in range(3)]


def close(a, b, tol=1e-5):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


def output_hint(got, q, k, v, window):
    T = q.shape[-2]
    if not (torch.is_tensor(got) and got.shape == q.shape):
        return f"return (B, H, T, hs) = {tuple(q.shape)}: one output row per query"
    if torch.isnan(got[..., 0, :]).any() or not got[..., 0, :].abs().sum():  # query 0 saw no key (NaN or 0)
        return SELF
    dense = lambda m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    for wrong, hint in ((dense(band(T, 0, window)), WIDE), (dense(own_chunk(T, window)), PREVIOUS),
                        (dense(band(T, 1, window - 1)).nan_to_num(), SELF), (dense(band(T, 1, window)).nan_to_num(), SELF),
                        (F.scaled_dot_product_attention(q, k, v, is_causal=True),
                         "that is full causal attention: each query sees only its last `window` keys")):
        if close(got, wrong, 1e-4):
            return hint
    want = dense(band(T, 0, window - 1))
    differs = ~torch.isclose(got, want, rtol=1e-4, atol=1e-4).all(-1).all(0).all(0)  # (T,): positions that differ
    t = torch.arange(T)
    if differs.any() and not (differs & ((t < window) | (t % window == window - 1))).any():
        return PREVIOUS
    return "compare with the docstring: each chunk of `window` queries, keys of chunks c - 1 and c, the band inside"


def cases(impl):
    ref = reference()
    for T, window in SIZES:
        size = f"T={T}, window={window}" + (" (window >= T: causal)" if window >= T else
                                           "" if T % window else " (T a multiple of window)")
        want = ref.sliding_mask(T, window)
        got, err = call(impl.sliding_mask, T, window)
        ok = err is None and torch.is_tensor(got) and got.shape == want.shape and torch.equal(got.bool(), want)
        yield f"mask, {size}", ok, want.int().tolist(), err or (got.int().tolist() if torch.is_tensor(got) else got), \
            None if ok else f"return a bool (T, T) tensor: {err}" if err else mask_hint(got, T, window)

        q, k, v = qkv(T, seed=T * 10 + window)
        want = ref.sliding_attention(q, k, v, window)
        got, err = call(impl.sliding_attention, q.clone(), k.clone(), v.clone(), window)
        ok = err is None and close(got, want)
        yield f"output, {size}", ok, want, err or got, \
            None if ok else (f"q, k, v are (B, H, T, hs); the last chunk may be shorter than window: {err}"
                             if err else output_hint(got, q, k, v, window))
