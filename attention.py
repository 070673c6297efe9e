"""
Causal attention patterns, and the key-value cache generation reads them from: which
earlier positions each query sees, computed so that the pairs a pattern skips cost nothing.

    from attention import attend, allowed, scored_pairs, KVCache
    y = attend(q, k, v, "sliding", window=128)          # q, k, v: (B, heads, T, head size)
    allowed(8, "blocksparse", block=4, summary=1)        # the (T, T) bool mask it computes
    print(describe(8, "sliding", window=3))              # that mask as the pictures below

Kinds (GPTConfig.attention; model.py's CausalSelfAttention calls attend):

    full         every earlier position and itself: T(T+1)/2 pairs, quadratic in T.
    sliding      the last `window` positions, itself included (local attention: Longformer,
                 Beltagy et al. 2020; Mistral 7B, Jiang et al. 2023): T * window pairs.
    blocksparse  the Sparse Transformer's "fixed" pattern (Child et al. 2019, section 4.2):
                 the positions of its own block of `block`, and the last `summary` positions
                 of every earlier block. Those summary positions have seen their whole block,
                 so information crosses the context in two layers.

    allowed(8, "sliding", window=3)     allowed(8, "blocksparse", block=4, summary=1)
        x . . . . . . .                     x . . . . . . .
        x x . . . . . .                     x x . . . . . .
        x x x . . . . .                     x x x . . . . .
        . x x x . . . .                     x x x x . . . .
        . . x x x . . .                     . . . x x . . .
        . . . x x x . .                     . . . x x x . .
        . . . . x x x .                     . . . x x x x .
        . . . . . x x x                     . . . x x x x x

How the sparse kinds are computed: in tiles of L consecutive queries, tile i reading the
keys at index[i] through a mask ok[i] (sliding_plan, blocksparse_plan), never a T x T mask:
  sliding      tiles of C = sliding_tile(w) queries (w/2, kept within 32..64), tile c reading
               the P + C keys that end with its chunk (P = w rounded up to whole chunks;
               those before the text masked), the band "r + P - w < s <= r + P" inside.
               Scored pairs: n * C * (P + C), n = ceil(T / C): linear in T, (P + C) / w
               times the w pairs per query the pattern needs (1.5x at w = 128, C = 64).
  blocksparse  block i reads the summary keys of blocks 0..n-2 (those of earlier blocks
               allowed) and its own block (causal). Scored pairs: n * block * ((n-1) *
               summary + block): linear while n * summary stays below block, quadratic with
               a small constant after (summary 0: n causal tiles, n * block(block+1)/2).
On CPU without dropout both go through PyTorch's fused flash-attention kernel, keeping its
log-sum-exp for the backward pass. A sliding tile's keys are consecutive rows of k, and
consecutive tiles' overlap, so SlidingTiles hands the kernel one strided view of k (no
copy) and a single band mask shared by every tile; backward adds each tile's key gradients
back chunk by chunk. Block-sparse keys are scattered, so TiledAttention gathers them a few
tiles at a time. Either way peak memory stays at full fused attention's, and at T = 4096,
window 128 the forward and backward take under a fifth of full attention's time
(bench_attention.py). Elsewhere (CUDA, dropout) every tile goes through autograd at once.
scored_pairs gives each kind's count; tests/test_attention.py checks it against the kernel
calls actually made.

Dropout on the attention weights: SDPA applies it on CUDA; on CPU the tiles are computed by
hand with dropout_mask (CPU SDPA with dropout_p > 0 leaves its fused kernel; see model.py).

The KV cache (KVCache, one per layer) keeps the keys and values of the tokens generated so
far (with grouped-query attention, its n_kv_head heads only: n_head / n_kv_head times
smaller), so each new token runs alone through the model: full and blocksparse keep up to
block_size positions, sliding a ring of `window` slots (constant memory however long the
text). Attention is blind to the order of its keys (positions live in the embeddings), so a
ring needs no reordering.
"""

import functools
import math

import torch
from torch.nn import functional as F

KINDS = ("full", "sliding", "blocksparse")


# ----------------------------------------------------------------------------------------
# the patterns, as masks (the reference, the docs' pictures) and as pair counts


def allowed(T, kind, window=0, block=0, summary=0, device="cpu"):
    """(T, T) bool: query i may attend to key j. The reference every kind must equal."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    causal = j <= i
    if kind == "full":
        return causal
    if kind == "sliding":
        return causal & (j > i - window)
    if kind == "blocksparse":
        own = (j // block) == (i // block)
        summary_col = (j % block) >= block - summary  # the last `summary` positions of a block
        return causal & (own | summary_col)
    raise ValueError(f"attention='{kind}': use one of {', '.join(KINDS)}")


def scored_pairs(T, kind, window=0, block=0, summary=0):
    """Query-key pairs the implementation scores for one sequence and head (a causal
    tile counts its lower triangle, as the fused causal kernel skips the rest)."""
    if kind == "full" or (kind == "sliding" and T <= window) or (kind == "blocksparse" and T <= block):
        return T * (T + 1) // 2
    if kind == "sliding":  # n tiles of C queries by P + C keys (sliding_plan)
        C = sliding_tile(window)
        return -(-T // C) * C * (-(-window // C) * C + C)
    n = -(-T // block)
    if summary == 0:  # blocks alone: one causal tile per block
        return n * block * (block + 1) // 2
    return n * block * ((n - 1) * summary + block)


def describe(T, kind, window=0, block=0, summary=0):
    """The mask as text, 'x' allowed and '.' not (the module docstring's pictures)."""
    m = allowed(T, kind, window, block, summary)
    return "\n".join(" ".join("x" if a else "." for a in row) for row in m.tolist())


# ----------------------------------------------------------------------------------------
# dropout masks (model.py's residual dropout and attention dropout use them too)


def dropout_mask(shape, p, device):
    """(bool mask, True where an element is dropped; the scale 1/(1-p) for the rest).

    F.dropout on CPU draws one float per element through bernoulli_ (~9 ns each here);
    we draw 64-bit integers instead (~4 ns per 8 bytes) and read them as int16, so one
    draw covers 4 elements. p is rounded to a multiple of 1/65536 and the scale uses the
    rounded p, so the expectation stays exact. The draws come from torch's global
    generator: torch.manual_seed and gradient checkpointing's RNG replay govern them
    exactly as they govern F.dropout."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    bits = bits.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    n_drop = min(round(p * 65536), 65535)  # how many of the 65536 values mean "drop"
    return bits < n_drop - 32768, 65536.0 / (65536 - n_drop)


# ----------------------------------------------------------------------------------------
# computing them: a plan of tiles, run by the fused kernel


def sliding_tile(window):
    """Queries per tile for a window: half the window, kept within 32..64 (the fastest on this
    CPU's fused kernel at T = 4096: bench_attention.py), and never more than the window."""
    return min(window, max(32, min(64, window // 2)))


@functools.lru_cache(maxsize=16)  # the same plan for every layer and step (treat it as read-only)
def sliding_plan(T, window, device="cpu"):
    """Chunks of C = sliding_tile(window) queries, chunk c reading the P + C consecutive keys
    that end with it (P = the window rounded up to whole chunks): (tile length C, key
    positions (n, P + C), allowed (n, C, P + C))."""
    w, C = window, sliding_tile(window)
    P = -(-w // C) * C
    n = -(-T // C)
    c = torch.arange(n, device=device)[:, None, None]
    r = torch.arange(C, device=device)[None, :, None]
    s = torch.arange(P + C, device=device)[None, None, :]
    index = (c * C - P + s)[:, 0]  # (n, P + C); the first chunks' keys start before the text
    # query c*C + r sees key c*C - P + s when r + P - w < s <= r + P: the last w positions
    ok = (s > r + P - w) & (s <= r + P) & (index >= 0)[:, None] & (index < T)[:, None]
    return C, index, ok


@functools.lru_cache(maxsize=16)
def blocksparse_plan(T, block, summary, device="cpu"):
    """Blocks of `block` queries, each reading every earlier block's summary keys (all
    blocks' but the last, masked per block) and its own block: (tile length, key positions
    (n, (n-1)*summary + block), allowed (n, block, same))."""
    b, c = block, summary
    n = -(-T // b)
    blk = torch.arange(n, device=device)
    summaries = (blk[:-1, None] * b + torch.arange(b - c, b, device=device)).flatten()  # ((n-1)*c,)
    own = blk[:, None] * b + torch.arange(b, device=device)  # (n, b)
    index = torch.cat([summaries.expand(n, -1), own], dim=1)
    earlier = (summaries // b)[None, None, :] < blk[:, None, None]  # (n, 1, (n-1)*c)
    causal = torch.ones(b, b, dtype=torch.bool, device=device).tril()
    ok = torch.cat([earlier.expand(n, b, -1), causal.expand(n, b, b)], dim=2) & (index < T)[:, None, :]
    return b, index, ok


def _flash(q, k, v, mask):
    """PyTorch's fused CPU attention on tiles, with the log-sum-exp its backward needs:
    (N, n, L, hs) x (N, n, S, hs), mask (1, n or 1, L, S) additive (_additive) -> out
    (N, n, L, hs), lse (N, n, L)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask)


def _additive(ok, dtype):
    """The kernel's mask: (1, n, L, S) of 0 where allowed and -inf elsewhere, in q's dtype."""
    return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, float("-inf")).unsqueeze(0)


class TiledAttention(torch.autograd.Function):
    """Attention over tiles of L consecutive queries, tile i reading the keys at index[i]
    (positions; the ones outside the text masked), a few tiles at a time: the gathered keys
    and values of all tiles at once would take (S / L) times the memory of k and v. Forward
    keeps the output and the log-sum-exp; backward gathers each group's keys again, asks
    the kernel for its gradients and adds the keys' back to their positions (index_add_).
    Peak memory: the output, the three gradients and one group's tiles, as fused full
    attention's (bench_attention.py). (B*H, n*L, hs) tensors in and out."""

    @staticmethod
    def forward(ctx, q, k, v, L, index, ok):
        N, TL, hs = q.shape
        n, S = index.shape
        # tiles per kernel call: one group's gathered keys and values at most an eighth of
        # k's size, or 2 MiB (a small batch would otherwise run many tiny kernel calls)
        group = max(1, TL // (8 * S), (2 << 20) // (2 * N * S * hs * q.element_size()))
        where = index.clamp(0, k.shape[1] - 1)  # masked positions read any real row
        qt = q.view(N, n, L, hs)
        out, lse = torch.empty_like(qt), None
        for g0 in range(0, n, group):
            g = slice(g0, min(g0 + group, n))
            rows = where[g].flatten()
            kg, vg = (t.index_select(1, rows).view(N, -1, S, hs) for t in (k, v))  # (N, tiles, S, hs)
            o, l = _flash(qt[:, g], kg, vg, _additive(ok[g], q.dtype))
            lse = l.new_empty(N, n, L) if lse is None else lse  # fp32 under bf16 inputs
            out[:, g], lse[:, g] = o, l
        ctx.save_for_backward(q, k, v, out, lse, where, ok)
        ctx.L, ctx.group = L, group
        return out.view(N, TL, hs)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, where, ok = ctx.saved_tensors
        N, TL, hs = q.shape
        n, S = where.shape
        qt, gt = q.view(N, n, ctx.L, hs), grad.contiguous().view(N, n, ctx.L, hs)
        dq, dk, dv = torch.empty_like(qt), torch.zeros_like(k), torch.zeros_like(v)
        for g0 in range(0, n, ctx.group):
            g = slice(g0, min(g0 + ctx.group, n))
            rows = where[g].flatten()
            kg, vg = (t.index_select(1, rows).view(N, -1, S, hs) for t in (k, v))
            a, b, c = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                gt[:, g], qt[:, g], kg, vg, out[:, g], lse[:, g], 0.0, False, attn_mask=_additive(ok[g], q.dtype))
            dq[:, g] = a
            dk.index_add_(1, rows, b.reshape(N, -1, hs))  # masked entries carry zero gradient
            dv.index_add_(1, rows, c.reshape(N, -1, hs))
        return dq.view(N, TL, hs), dk, dv, None, None, None


class SlidingTiles(torch.autograd.Function):
    """Sliding-window attention over tiles of C consecutive queries, tile i reading the S =
    P + C keys that end with its chunk (rows i*C - P .. i*C + C - 1 of k, P = the window
    rounded up to whole chunks). Those key ranges overlap, so the tiles' keys are one strided
    view of k, read in place by the fused kernel: no gather, no copy, where the rows exist
    (the head's tiles start before the text, a partial last tile ends after it: theirs are
    small zero-padded copies, masked). Tiles past the head share one band mask (1, 1, C, S).
    Backward asks the kernel for a group's key gradients (N, tiles, S, hs) and adds each
    chunk-wide slice to the rows it came from: S / C strided adds, no index_add_. A group's
    gradients take at most 4 MiB (or one tile's), so peak memory stays at fused full attention's.
    q (N, n*C, hs), k and v (N, T, hs) -> (N, n*C, hs)."""

    @staticmethod
    def forward(ctx, q, k, v, C, ok):
        N, TL, hs = q.shape
        n, S = TL // C, ok.shape[2]
        h = min(n, (S - C) // C)  # the head's tiles: their key ranges start before the text
        masks = {"head": _additive(ok[:h], q.dtype), "band": _additive(ok[h:h + 1], q.dtype),
                 "tail": _additive(ok[n - 1:], q.dtype)}  # (1, h, C, S), (1, 1, C, S), (1, 1, C, S)
        out, lse = q.new_empty(N, n, C, hs), None
        for i0, i1, where in _segments(n, h, C, S, k.shape[1], N * S * hs * q.element_size()):
            o, l = _flash(q.view(N, n, C, hs)[:, i0:i1], _windows(k, i0, i1, C, S), _windows(v, i0, i1, C, S),
                          masks[where])
            lse = l.new_empty(N, n, C) if lse is None else lse  # fp32 under bf16 inputs
            out[:, i0:i1], lse[:, i0:i1] = o, l
        ctx.save_for_backward(q, k, v, out, lse, masks["head"], masks["band"], masks["tail"])
        ctx.C = C
        return out.view(N, TL, hs)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, *masks = ctx.saved_tensors
        masks = dict(zip(("head", "band", "tail"), masks))
        N, TL, hs = q.shape
        C, S, T = ctx.C, masks["band"].shape[-1], k.shape[1]
        P, n, h = S - C, TL // C, masks["head"].shape[1]  # P: the keys before a tile's own chunk
        qt, gt = q.view(N, n, C, hs), grad.contiguous().view(N, n, C, hs)
        dq, dk, dv = torch.empty_like(qt), torch.zeros_like(k), torch.zeros_like(v)
        for i0, i1, where in _segments(n, h, C, S, T, N * S * hs * q.element_size()):
            a, b, c = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                gt[:, i0:i1], qt[:, i0:i1], _windows(k, i0, i1, C, S), _windows(v, i0, i1, C, S),
                out[:, i0:i1], lse[:, i0:i1], 0.0, False, attn_mask=masks[where])
            dq[:, i0:i1] = a
            for j in range(S // C):  # keys j*C.. of tile i are rows (i + j)*C - P.. of k
                r0 = (i0 + j) * C - P  # where the slice of tile i0 starts
                lo, hi = max(r0, 0), min(r0 + (i1 - i0) * C, T)
                if where == "band":  # every row exists: add in place, tile by tile
                    dk[:, lo:hi].view(N, i1 - i0, C, hs).add_(b[:, :, j * C:(j + 1) * C])
                    dv[:, lo:hi].view(N, i1 - i0, C, hs).add_(c[:, :, j * C:(j + 1) * C])
                elif lo < hi:  # the head's or the tail's: drop the rows outside the text
                    dk[:, lo:hi] += b[:, :, j * C:(j + 1) * C].reshape(N, -1, hs)[:, lo - r0:hi - r0]
                    dv[:, lo:hi] += c[:, :, j * C:(j + 1) * C].reshape(N, -1, hs)[:, lo - r0:hi - r0]
        return dq.view(N, TL, hs), dk, dv, None, None


def _segments(n, h, C, S, T, tile_bytes):
    """The kernel calls, as (first tile, end, mask): the head's tiles, the tiles whose keys
    all exist in groups of at most 4 MiB of key and value gradients (2 * tile_bytes each),
    and a partial last tile."""
    body_end = max(h, min(n, T // C))  # tile i's last key row is i*C + C - 1
    group = max(1, (4 << 20) // (2 * tile_bytes))
    calls = [(0, h, "head")] if h else []
    calls += [(i, min(i + group, body_end), "band") for i in range(h, body_end, group)]
    return calls + ([(body_end, n, "tail")] if body_end < n else [])


def _windows(k, i0, i1, C, S):
    """Tiles i0..i1-1's keys, (N, i1 - i0, S, hs): tile i reads rows i*C - (S - C) .. i*C + C - 1
    of k (N, T, hs). A view of k where those rows exist, else of a zero-padded copy."""
    N, T, hs = k.shape
    r0, r1 = i0 * C - (S - C), i1 * C
    if r0 < 0 or r1 > T:
        k, r0 = F.pad(k[:, max(r0, 0):min(r1, T)], (0, 0, max(-r0, 0), max(r1 - T, 0))), 0
    return k.as_strided((N, i1 - i0, S, hs), (k.stride(0), C * k.stride(1), k.stride(1), k.stride(2)),
                        k.storage_offset() + r0 * k.stride(1))


def _run_plan(q, k, v, plan, p, sliding=False):
    """q, k, v (B, H, T, hs) through a plan's tiles -> (B, H, T, hs)."""
    B, H, T, hs = q.shape
    L, index, ok = plan
    n = index.shape[0]
    if n * L > T:  # the last tile is partial: pad the queries (their outputs are dropped)
        q = F.pad(q, (0, 0, 0, n * L - T))
    if p == 0.0 and not q.is_cuda and sliding:
        y = SlidingTiles.apply(q.reshape(B * H, n * L, hs), k.reshape(B * H, T, hs), v.reshape(B * H, T, hs), L, ok)
    elif p == 0.0 and not q.is_cuda:
        y = TiledAttention.apply(q.reshape(B * H, n * L, hs), k.reshape(B * H, T, hs), v.reshape(B * H, T, hs),
                                 L, index, ok)
    else:  # CUDA, or dropout: every tile at once through autograd (fused SDPA, or by hand for CPU dropout)
        where = index.clamp(0, T - 1).flatten()
        kg, vg = (t.reshape(B * H, T, hs)[:, where].view(B * H, n, -1, hs) for t in (k, v))
        y = _tiles(q.reshape(B * H, n, L, hs), kg, vg, mask=ok, p=p)
    return y.reshape(B, H, n * L, hs)[:, :, :T]


def _tiles(q, k, v, mask=None, causal=False, p=0.0):
    """Attention over a batch of tiles, (N, n, L, hs) x (N, n, S, hs) -> (N, n, L, hs); mask
    (n, L, S) or broadcastable, True = may attend. Fused SDPA, or by hand for CPU dropout."""
    if p == 0.0 or q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (N, n, L, S)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    drop, scale = dropout_mask(att.shape, p, att.device)
    return (att.masked_fill(drop, 0.0) @ v) * scale


def attend(q, k, v, kind, window=0, block=0, summary=0, p=0.0):
    """Causal attention of the given kind; q, k, v: (B, H, T, hs) -> (B, H, T, hs)."""
    T = q.shape[2]
    if kind == "full" or (kind == "sliding" and T <= window) or (kind == "blocksparse" and T <= block):
        return _tiles(q, k, v, causal=True, p=p)  # every query sees every earlier position
    if kind == "sliding":
        return _run_plan(q, k, v, sliding_plan(T, window, q.device), p, sliding=True)
    if kind == "blocksparse" and summary == 0:  # blocks alone: one causal tile per block
        B, H, _, hs = q.shape
        n = -(-T // block)
        q, k, v = (F.pad(t, (0, 0, 0, n * block - T)).reshape(B * H, n, block, hs) for t in (q, k, v))
        return _tiles(q, k, v, causal=True, p=p).reshape(B, H, n * block, hs)[:, :, :T]
    if kind == "blocksparse":
        return _run_plan(q, k, v, blocksparse_plan(T, block, summary, q.device), p)
    raise ValueError(f"attention='{kind}': use one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------
# generation: the key-value cache


def _expand(k, heads):
    """Grouped-query attention: each of k's heads (B, n_kv, T, hs) repeated for the query
    heads it serves -> (B, heads, T, hs). The cache keeps the n_kv heads only."""
    return k if k.shape[1] == heads else k.repeat_interleave(heads // k.shape[1], dim=1)


class KVCache:
    """One layer's keys and values of the context so far. `length` is the number of
    tokens seen (the position of the next one). full, blocksparse: slots 0..capacity-1 hold
    positions 0..capacity-1; sliding: a ring of `window` slots, position t in slot t % window."""

    def __init__(self, kind, capacity, window=0, block=0, summary=0):
        self.kind, self.window, self.block, self.summary = kind, window, block, summary
        self.slots = min(window, capacity) if kind == "sliding" else capacity
        self.k = self.v = None
        self.length = 0

    def prefill(self, q, k, v, p=0.0):
        """Attention over a whole prompt from position 0 (the cache must be empty); its keys
        and values are kept. (B, H, T, hs) -> (B, H, T, hs)."""
        assert self.length == 0, "prefill starts a context: use a fresh cache"
        B, H, T, hs = k.shape
        self.k = k.new_zeros(B, H, self.slots, hs)
        self.v = v.new_zeros(B, H, self.slots, hs)
        self._write(k, v)
        H = q.shape[1]
        return attend(q, _expand(k, H), _expand(v, H), self.kind, self.window, self.block, self.summary, p)

    def step(self, q, k, v):
        """One new token: q, k, v (B, H, 1, hs) -> (B, H, 1, hs), attending to what its
        kind allows of the cached positions and itself."""
        t = self.length  # this token's position
        self._write(k, v)
        if self.kind == "sliding":
            n = min(t + 1, self.slots)  # the ring's filled slots: exactly the last window positions
            keys, values = self.k[:, :, :n], self.v[:, :, :n]
        elif self.kind == "blocksparse":
            start = t - t % self.block  # this token's block; before it, whole blocks and their last `summary`
            summaries = torch.arange(start, device=k.device).view(-1, self.block)[:, self.block - self.summary:]
            index = torch.cat([summaries.flatten(), torch.arange(start, t + 1, device=k.device)])
            keys, values = self.k[:, :, index], self.v[:, :, index]
        else:
            keys, values = self.k[:, :, : t + 1], self.v[:, :, : t + 1]
        return F.scaled_dot_product_attention(q, _expand(keys, q.shape[1]), _expand(values, q.shape[1]))

    def _write(self, k, v):
        T = k.shape[2]
        pos = torch.arange(self.length, self.length + T, device=k.device)
        if self.kind == "sliding":
            pos, k, v = pos[-self.slots:], k[:, :, -self.slots:], v[:, :, -self.slots:]  # the ring keeps the last
            pos = pos % self.slots
        if int(pos.max()) >= self.k.shape[2]:
            raise ValueError(f"the cache holds {self.k.shape[2]} positions; the context is longer")
        self.k[:, :, pos] = k
        self.v[:, :, pos] = v
        self.length += T
