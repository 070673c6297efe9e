"""The sliding-window exercise: its grader passes attention.allowed and dense SDPA under it,
reads the stub as not started, and names the usual mistakes (the band one too wide, the
query not seeing itself, a chunk not reading the previous chunk)."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from exercises.__main__ import grade
from exercises.graders import sliding_window as grader


def failing_hints(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("sliding_window", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("sliding_window")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def mask_of(lo, hi):
    """t - s in [lo, hi]: lo=0, hi=window-1 is the right band."""
    def m(T, window):
        d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
        return (d >= lo) & (d <= hi(window))
    return m


def chunked(mask, previous=True):
    """sliding_attention chunk by chunk, with the given mask rule (a student's solution)."""
    def attn(q, k, v, window):
        T = q.shape[-2]
        full = mask(T, window)
        outs = []
        for start in range(0, T, window):
            end = min(start + window, T)
            lo = max(0, start - window) if previous else start
            outs.append(F.scaled_dot_product_attention(q[..., start:end, :], k[..., lo:end, :], v[..., lo:end, :],
                                                       attn_mask=full[start:end, lo:end]))
        return torch.cat(outs, dim=-2)
    return attn


def good():
    m = mask_of(0, lambda w: w - 1)
    return dict(sliding_mask=m, sliding_attention=chunked(m))


def test_a_chunked_implementation_passes():
    assert failing_hints(SimpleNamespace(**good())) == []


def test_the_band_one_too_wide_gets_its_hint():
    m = mask_of(0, lambda w: w)  # s >= t - window
    got = failing_hints(SimpleNamespace(sliding_mask=m, sliding_attention=chunked(m)))
    assert any(c.startswith("mask, T=12") and "one too wide" in h for c, h in got), got
    assert any(c.startswith("output, T=12") and "one too wide" in h for c, h in got), got


def test_the_query_not_seeing_itself_gets_its_hint():
    m = mask_of(1, lambda w: w - 1)  # s < t
    got = failing_hints(SimpleNamespace(sliding_mask=m, sliding_attention=chunked(m)))
    assert any(c.startswith("mask,") and "see itself" in h for c, h in got), got
    assert any(c.startswith("output,") and "see itself" in h for c, h in got), got


def test_the_chunk_not_seeing_the_previous_chunk_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "sliding_attention": chunked(good()["sliding_mask"], previous=False)})
    got = failing_hints(impl)
    assert got and all(c.startswith("output,") and "chunk c - 1" in h for c, h in got), got
    assert not any("window >= T" in c or "T=1," in c for c, _ in got)  # one chunk: nothing to miss
